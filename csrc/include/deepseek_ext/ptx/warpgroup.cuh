// Warpgroup-level register reallocation and named barriers. Each DX_EMULATE branch is the host
// twin (csrc/emu/scheduler.cpp checks the ISA's rules and synchronizes the fibers).
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"

namespace dx::ptx {

// Raises this warpgroup's per-thread register budget to N (all 128 threads execute it).
template <int N>
__device__ __forceinline__ void setmaxnreg_inc(DX_SITE_PARAM_FIRST) {
#if defined(DX_EMULATE)
  emu::warpgroup_setmaxnreg(true, N, dx_site);
#else
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N));
#endif
}

// Lowers this warpgroup's per-thread register budget to N, freeing registers for the others.
template <int N>
__device__ __forceinline__ void setmaxnreg_dec(DX_SITE_PARAM_FIRST) {
#if defined(DX_EMULATE)
  emu::warpgroup_setmaxnreg(false, N, dx_site);
#else
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N));
#endif
}

// Barrier `id` (1..15; 0 is __syncthreads) over `threads` threads (a multiple of 32).
__device__ __forceinline__ void named_barrier_sync(uint32_t id, uint32_t threads DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  emu::barrier_sync(id, threads, dx_site);
#else
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
#endif
}

}  // namespace dx::ptx
