// Compiled (not run) by tests/test_gemm_scheduler.py with -DDX_DEBUG_HANGS: the timed-out
// mbarrier wait that DEEPSEEK_EXT_DEBUG_HANGS=1 builds into every kernel.
#include "deepseek_ext/ptx/mbarrier.cuh"

__global__ void wait_on_barrier(uint32_t bar, uint32_t parity) { dx::ptx::mbarrier_wait_parity(bar, parity, 3); }
