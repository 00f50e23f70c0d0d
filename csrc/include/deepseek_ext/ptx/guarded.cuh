// Guarded global loads and stores: one instruction under a predicate. Written in C++ as
// `if (ok) ...`, nvcc branches around each access and recomputes its address inside the branch;
// here the address is computed once and the access is a single predicated instruction. The
// DX_EMULATE branches are the host twins.
#pragma once
#include <cstdint>

namespace dx::ptx {

// ld_nc_v4(p) when ok, else zeros (p is not read then). p 16-byte aligned, read-only while the kernel runs.
__device__ __forceinline__ uint4 ld_nc_v4_if(bool ok, const void* p) {
#if defined(DX_EMULATE)
  return ok ? *static_cast<const uint4*>(p) : uint4{0u, 0u, 0u, 0u};
#else
  uint4 v;
  asm("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %4, 0;\n\tmov.b32 %0, 0;\n\tmov.b32 %1, 0;\n\tmov.b32 %2, 0;\n\t"
      "mov.b32 %3, 0;\n\t@p ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%5];\n\t}"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "r"(static_cast<int>(ok)), "l"(p));
  return v;
#endif
}

// *p = v (4 bytes, 4-byte aligned) when ok.
__device__ __forceinline__ void st_global_if(bool ok, void* p, uint32_t v) {
#if defined(DX_EMULATE)
  if (ok) *static_cast<uint32_t*>(p) = v;
#else
  asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %0, 0;\n\t@p st.global.b32 [%1], %2;\n\t}"
               :
               : "r"(static_cast<int>(ok)), "l"(p), "r"(v)
               : "memory");
#endif
}

// *p = v (8 bytes, 8-byte aligned) when ok.
__device__ __forceinline__ void st_global_if(bool ok, void* p, uint2 v) {
#if defined(DX_EMULATE)
  if (ok) *static_cast<uint2*>(p) = v;
#else
  asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %0, 0;\n\t@p st.global.v2.b32 [%1], {%2, %3};\n\t}"
               :
               : "r"(static_cast<int>(ok)), "l"(p), "r"(v.x), "r"(v.y)
               : "memory");
#endif
}

}  // namespace dx::ptx
