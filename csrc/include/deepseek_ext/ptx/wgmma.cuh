// Warpgroup matrix-multiply-accumulate (wgmma) wrappers, sm_90a only. Each DX_EMULATE branch is
// the host twin (csrc/emu/async_units.cpp: a warpgroup-collective model of the ISA's wgmma).
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"

namespace dx::ptx {

// Orders prior register accesses of the accumulators before the next wgmma reads them.
__device__ __forceinline__ void wgmma_fence(DX_SITE_PARAM_FIRST) {
#if defined(DX_EMULATE)
  emu::wgmma_fence(dx_site);
#else
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit_group(DX_SITE_PARAM_FIRST) {
#if defined(DX_EMULATE)
  emu::wgmma_commit_group(dx_site);
#else
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}

// Waits until at most N committed wgmma groups of this warpgroup are pending.
template <int N>
__device__ __forceinline__ void wgmma_wait_group(DX_SITE_PARAM_FIRST) {
#if defined(DX_EMULATE)
  emu::wgmma_wait_group(N, dx_site);
#else
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
#endif
}

// Keeps the compiler from moving accesses of an accumulator register across wgmma waits.
__device__ __forceinline__ void fence_operand(float& r) {
#if !defined(DX_EMULATE)  // the host compiler already reloads what escaped into the wgmma model
  asm volatile("" : "+f"(r)::"memory");
#endif
}

// d[64x128] (+)= A[64x32] * B[128x32]^T, e4m3 inputs from shared-memory descriptors, fp32
// accumulators; accumulate=false overwrites d. Both operands are K-major.
__device__ __forceinline__ void wgmma_m64n128k32_f32_e4m3(float (&d)[64], uint64_t desc_a,
                                                          uint64_t desc_b, bool accumulate DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  emu::wgmma_mma_async_e4m3(128, d, desc_a, desc_b, accumulate, dx_site);
#else
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3\n"
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,\n"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,\n"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,\n"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63},\n"
      "%64, %65, p, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<uint32_t>(accumulate)));
#endif
}

// d[64x64] (+)= A[64x32] * B[64x32]^T: as above with an N=64 tile.
__device__ __forceinline__ void wgmma_m64n64k32_f32_e4m3(float (&d)[32], uint64_t desc_a,
                                                         uint64_t desc_b, bool accumulate DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  emu::wgmma_mma_async_e4m3(64, d, desc_a, desc_b, accumulate, dx_site);
#else
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3\n"
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,\n"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31},\n"
      "%32, %33, p, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<uint32_t>(accumulate)));
#endif
}

}  // namespace dx::ptx
