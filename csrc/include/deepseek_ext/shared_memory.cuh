// The block's dynamic shared memory (sized at launch). One accessor so the emulation build can
// hand each emulated block its own buffer.
#pragma once
#include <cstdint>

namespace dx {

template <typename T>
__device__ __forceinline__ T* dynamic_shared_memory() {
#if defined(DX_EMULATE)
  return reinterpret_cast<T*>(emu::dynamic_shared_memory());
#else
  extern __shared__ __align__(16) uint8_t dx_dynamic_smem[];
  return reinterpret_cast<T*>(dx_dynamic_smem);
#endif
}

}  // namespace dx
