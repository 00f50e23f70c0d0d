// mbarrier wrappers (shared::cta barriers addressed by their 32-bit shared-window address).
// Each wrapper's DX_EMULATE branch is its host twin (csrc/emu/async_units.cpp models the ISA).
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"

namespace dx::ptx {

__device__ __forceinline__ void mbarrier_init(uint32_t bar, uint32_t arrivals DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  emu::mbarrier_init(bar, arrivals, dx_site);
#else
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(arrivals) : "memory");
#endif
}

// Makes initialized barriers visible to the other threads and to the async (TMA) proxy.
__device__ __forceinline__ void fence_mbarrier_init() {
#if !defined(DX_EMULATE)  // the emulated barriers live in one address space: nothing to publish
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}

// One arrival that also announces `bytes` of transactions (TMA) the phase must wait for.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t bytes DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  emu::mbarrier_arrive(bar, bytes, dx_site);
#else
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
#endif
}

// Plain arrival (release semantics at CTA scope).
__device__ __forceinline__ void mbarrier_arrive(uint32_t bar DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  emu::mbarrier_arrive(bar, 0, dx_site);
#else
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
#endif
}

// True once the phase with parity `parity` has completed (acquire semantics at CTA scope).
__device__ __forceinline__ bool mbarrier_try_wait_parity(uint32_t bar, uint32_t parity DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  return emu::mbarrier_try_wait_parity(bar, parity, dx_site);
#else
  uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
#endif
}

__device__ __forceinline__ void mbarrier_wait_parity(uint32_t bar, uint32_t parity DX_SITE_PARAM) {
  while (!ptx::mbarrier_try_wait_parity(bar, parity DX_SITE_ARG)) {
  }
}

}  // namespace dx::ptx
