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

// d[64 x N] (+)= A[64x32] * B[Nx32]^T, e4m3 inputs from shared-memory descriptors, fp32
// accumulators (N / 2 per thread); accumulate=false overwrites d. Both operands are K-major.
// One asm per N (a multiple of 16 up to 192): the descriptors and the scale-d flag are operands
// %0-%2, so accumulator k is always %(3 + k) and the register list is whole groups of 8.
#define DX_WGMMA_REGS_0 "%3, %4, %5, %6, %7, %8, %9, %10"
#define DX_WGMMA_REGS_1 ", %11, %12, %13, %14, %15, %16, %17, %18"
#define DX_WGMMA_REGS_2 ", %19, %20, %21, %22, %23, %24, %25, %26"
#define DX_WGMMA_REGS_3 ", %27, %28, %29, %30, %31, %32, %33, %34"
#define DX_WGMMA_REGS_4 ", %35, %36, %37, %38, %39, %40, %41, %42"
#define DX_WGMMA_REGS_5 ", %43, %44, %45, %46, %47, %48, %49, %50"
#define DX_WGMMA_REGS_6 ", %51, %52, %53, %54, %55, %56, %57, %58"
#define DX_WGMMA_REGS_7 ", %59, %60, %61, %62, %63, %64, %65, %66"
#define DX_WGMMA_REGS_8 ", %67, %68, %69, %70, %71, %72, %73, %74"
#define DX_WGMMA_REGS_9 ", %75, %76, %77, %78, %79, %80, %81, %82"
#define DX_WGMMA_REGS_10 ", %83, %84, %85, %86, %87, %88, %89, %90"
#define DX_WGMMA_REGS_11 ", %91, %92, %93, %94, %95, %96, %97, %98"
#define DX_WGMMA_ACC8(b)                                                                          \
  "+f"(d[b]), "+f"(d[b + 1]), "+f"(d[b + 2]), "+f"(d[b + 3]), "+f"(d[b + 4]), "+f"(d[b + 5]), \
      "+f"(d[b + 6]), "+f"(d[b + 7])
#define DX_WGMMA_ASM(N, REGS, ...)                                                          \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %2, 0;\n"                                 \
               "wgmma.mma_async.sync.aligned.m64n" #N "k32.f32.e4m3.e4m3 {" REGS "}, %0, %1, p, 1, 1;\n}" \
               : "+l"(a), "+l"(b), "+r"(scale_d), __VA_ARGS__)

template <int N>
__device__ __forceinline__ void wgmma_m64nNk32_f32_e4m3(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                                        bool accumulate DX_SITE_PARAM) {
  static_assert(N % 16 == 0 && N >= 16 && N <= 192, "wgmma N: a multiple of 16 up to 192");
#if defined(DX_EMULATE)
  emu::wgmma_mma_async_e4m3(N, d, desc_a, desc_b, accumulate, dx_site);
#else
  uint64_t a = desc_a, b = desc_b;  // read-write operands only to number them first
  uint32_t scale_d = accumulate ? 1u : 0u;
  if constexpr (N == 16) {
    DX_WGMMA_ASM(16, DX_WGMMA_REGS_0, DX_WGMMA_ACC8(0));
  } else if constexpr (N == 32) {
    DX_WGMMA_ASM(32, DX_WGMMA_REGS_0 DX_WGMMA_REGS_1, DX_WGMMA_ACC8(0), DX_WGMMA_ACC8(8));
  } else if constexpr (N == 48) {
    DX_WGMMA_ASM(48, DX_WGMMA_REGS_0 DX_WGMMA_REGS_1 DX_WGMMA_REGS_2, DX_WGMMA_ACC8(0), DX_WGMMA_ACC8(8),
                 DX_WGMMA_ACC8(16));
  } else if constexpr (N == 64) {
    DX_WGMMA_ASM(64, DX_WGMMA_REGS_0 DX_WGMMA_REGS_1 DX_WGMMA_REGS_2 DX_WGMMA_REGS_3, DX_WGMMA_ACC8(0),
                 DX_WGMMA_ACC8(8), DX_WGMMA_ACC8(16), DX_WGMMA_ACC8(24));
  } else if constexpr (N == 80) {
    DX_WGMMA_ASM(80, DX_WGMMA_REGS_0 DX_WGMMA_REGS_1 DX_WGMMA_REGS_2 DX_WGMMA_REGS_3 DX_WGMMA_REGS_4,
                 DX_WGMMA_ACC8(0), DX_WGMMA_ACC8(8), DX_WGMMA_ACC8(16), DX_WGMMA_ACC8(24), DX_WGMMA_ACC8(32));
  } else if constexpr (N == 96) {
    DX_WGMMA_ASM(96, DX_WGMMA_REGS_0 DX_WGMMA_REGS_1 DX_WGMMA_REGS_2 DX_WGMMA_REGS_3 DX_WGMMA_REGS_4 DX_WGMMA_REGS_5,
                 DX_WGMMA_ACC8(0), DX_WGMMA_ACC8(8), DX_WGMMA_ACC8(16), DX_WGMMA_ACC8(24), DX_WGMMA_ACC8(32),
                 DX_WGMMA_ACC8(40));
  } else if constexpr (N == 112) {
    DX_WGMMA_ASM(112,
                 DX_WGMMA_REGS_0 DX_WGMMA_REGS_1 DX_WGMMA_REGS_2 DX_WGMMA_REGS_3 DX_WGMMA_REGS_4 DX_WGMMA_REGS_5
                     DX_WGMMA_REGS_6,
                 DX_WGMMA_ACC8(0), DX_WGMMA_ACC8(8), DX_WGMMA_ACC8(16), DX_WGMMA_ACC8(24), DX_WGMMA_ACC8(32),
                 DX_WGMMA_ACC8(40), DX_WGMMA_ACC8(48));
  } else if constexpr (N == 128) {
    DX_WGMMA_ASM(128,
                 DX_WGMMA_REGS_0 DX_WGMMA_REGS_1 DX_WGMMA_REGS_2 DX_WGMMA_REGS_3 DX_WGMMA_REGS_4 DX_WGMMA_REGS_5
                     DX_WGMMA_REGS_6 DX_WGMMA_REGS_7,
                 DX_WGMMA_ACC8(0), DX_WGMMA_ACC8(8), DX_WGMMA_ACC8(16), DX_WGMMA_ACC8(24), DX_WGMMA_ACC8(32),
                 DX_WGMMA_ACC8(40), DX_WGMMA_ACC8(48), DX_WGMMA_ACC8(56));
  } else if constexpr (N == 144) {
    DX_WGMMA_ASM(144,
                 DX_WGMMA_REGS_0 DX_WGMMA_REGS_1 DX_WGMMA_REGS_2 DX_WGMMA_REGS_3 DX_WGMMA_REGS_4 DX_WGMMA_REGS_5
                     DX_WGMMA_REGS_6 DX_WGMMA_REGS_7 DX_WGMMA_REGS_8,
                 DX_WGMMA_ACC8(0), DX_WGMMA_ACC8(8), DX_WGMMA_ACC8(16), DX_WGMMA_ACC8(24), DX_WGMMA_ACC8(32),
                 DX_WGMMA_ACC8(40), DX_WGMMA_ACC8(48), DX_WGMMA_ACC8(56), DX_WGMMA_ACC8(64));
  } else if constexpr (N == 160) {
    DX_WGMMA_ASM(160,
                 DX_WGMMA_REGS_0 DX_WGMMA_REGS_1 DX_WGMMA_REGS_2 DX_WGMMA_REGS_3 DX_WGMMA_REGS_4 DX_WGMMA_REGS_5
                     DX_WGMMA_REGS_6 DX_WGMMA_REGS_7 DX_WGMMA_REGS_8 DX_WGMMA_REGS_9,
                 DX_WGMMA_ACC8(0), DX_WGMMA_ACC8(8), DX_WGMMA_ACC8(16), DX_WGMMA_ACC8(24), DX_WGMMA_ACC8(32),
                 DX_WGMMA_ACC8(40), DX_WGMMA_ACC8(48), DX_WGMMA_ACC8(56), DX_WGMMA_ACC8(64), DX_WGMMA_ACC8(72));
  } else if constexpr (N == 176) {
    DX_WGMMA_ASM(176,
                 DX_WGMMA_REGS_0 DX_WGMMA_REGS_1 DX_WGMMA_REGS_2 DX_WGMMA_REGS_3 DX_WGMMA_REGS_4 DX_WGMMA_REGS_5
                     DX_WGMMA_REGS_6 DX_WGMMA_REGS_7 DX_WGMMA_REGS_8 DX_WGMMA_REGS_9 DX_WGMMA_REGS_10,
                 DX_WGMMA_ACC8(0), DX_WGMMA_ACC8(8), DX_WGMMA_ACC8(16), DX_WGMMA_ACC8(24), DX_WGMMA_ACC8(32),
                 DX_WGMMA_ACC8(40), DX_WGMMA_ACC8(48), DX_WGMMA_ACC8(56), DX_WGMMA_ACC8(64), DX_WGMMA_ACC8(72),
                 DX_WGMMA_ACC8(80));
  } else {
    DX_WGMMA_ASM(192,
                 DX_WGMMA_REGS_0 DX_WGMMA_REGS_1 DX_WGMMA_REGS_2 DX_WGMMA_REGS_3 DX_WGMMA_REGS_4 DX_WGMMA_REGS_5
                     DX_WGMMA_REGS_6 DX_WGMMA_REGS_7 DX_WGMMA_REGS_8 DX_WGMMA_REGS_9 DX_WGMMA_REGS_10
                         DX_WGMMA_REGS_11,
                 DX_WGMMA_ACC8(0), DX_WGMMA_ACC8(8), DX_WGMMA_ACC8(16), DX_WGMMA_ACC8(24), DX_WGMMA_ACC8(32),
                 DX_WGMMA_ACC8(40), DX_WGMMA_ACC8(48), DX_WGMMA_ACC8(56), DX_WGMMA_ACC8(64), DX_WGMMA_ACC8(72),
                 DX_WGMMA_ACC8(80), DX_WGMMA_ACC8(88));
  }
#endif
}

}  // namespace dx::ptx
