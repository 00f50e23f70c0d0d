// mbarrier wrappers (shared::cta barriers addressed by their 32-bit shared-window address).
// Each wrapper's DX_EMULATE branch is its host twin (csrc/emu/async_units.cpp models the ISA).
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"
#include "deepseek_ext/ptx/sys_memory.cuh"

#if defined(DX_DEBUG_HANGS)
#include <cstdio>
#endif

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

// Arrival on a barrier of another block of the cluster (`bar`: a shared::cluster address from
// cluster_map_shared), with release semantics at cluster scope.
__device__ __forceinline__ void mbarrier_arrive_cluster(uint32_t bar DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  emu::mbarrier_arrive_cluster(bar, dx_site);
#else
  asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];" ::"r"(bar) : "memory");
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

// Built with DX_DEBUG_HANGS (DEEPSEEK_EXT_DEBUG_HANGS=1), a wait that lasts kHangTimeoutNs
// prints where it hangs (`stage`: the caller's ring stage, or -1) and traps instead of hanging
// silently; the emulator reports deadlocks itself.
constexpr uint64_t kHangTimeoutNs = 10'000'000'000ull;

#if defined(DX_DEBUG_HANGS) && !defined(DX_EMULATE)
// Out of line: the timer and the printf arguments must not cost the inlined waits registers.
__device__ __noinline__ void mbarrier_wait_parity_or_trap(uint32_t bar, uint32_t parity, int stage) {
  const uint64_t start = globaltimer_ns();
  while (!ptx::mbarrier_try_wait_parity(bar, parity)) {
    if (globaltimer_ns() - start > kHangTimeoutNs) {
      printf("deepseek_ext: mbarrier wait timed out after 10 s: block (%d,%d,%d) thread %d stage %d parity %u "
             "barrier 0x%x\n",
             blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, stage, parity, bar);
      __trap();
    }
  }
}
#endif

__device__ __forceinline__ void mbarrier_wait_parity(uint32_t bar, uint32_t parity, int stage = -1 DX_SITE_PARAM) {
#if defined(DX_DEBUG_HANGS) && !defined(DX_EMULATE)
  if (!ptx::mbarrier_try_wait_parity(bar, parity)) mbarrier_wait_parity_or_trap(bar, parity, stage);
#else
  (void)stage;
  while (!ptx::mbarrier_try_wait_parity(bar, parity DX_SITE_ARG)) {
  }
#endif
}

}  // namespace dx::ptx
