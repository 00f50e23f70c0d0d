// Global-memory load wrappers.
#pragma once
#include <cstdint>

namespace dx::ptx {

// 16-byte read-only load that skips L1 (streamed input read once); p must be 16-byte aligned
// and must not be written while the kernel runs.
__device__ __forceinline__ uint4 ld_nc_v4(const void* p) {
#if defined(DX_EMULATE)
  return *static_cast<const uint4*>(p);  // one address space, no L1: a plain load
#else
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
#endif
}

}  // namespace dx::ptx
