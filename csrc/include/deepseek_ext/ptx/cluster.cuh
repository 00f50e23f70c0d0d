// Thread-block cluster wrappers: the block's rank, shared::cluster addresses of a peer's shared
// memory, and the cluster-wide barrier. Each DX_EMULATE branch is the host twin
// (csrc/emu/scheduler.cpp keeps a launch's clusters resident together).
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"

namespace dx::ptx {

__device__ __forceinline__ uint32_t cluster_ctarank() {
#if defined(DX_EMULATE)
  return emu::cluster_ctarank();
#else
  uint32_t rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  return rank;
#endif
}

// mapa: the shared::cluster address of this block's shared address `addr` in the block of `rank`.
__device__ __forceinline__ uint32_t cluster_map_shared(uint32_t addr, uint32_t rank DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  return emu::cluster_map_shared(addr, rank, dx_site);
#else
  uint32_t mapped;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(mapped) : "r"(addr), "r"(rank));
  return mapped;
#endif
}

// Every thread of every block of the cluster arrives (release) and waits (acquire): peers' shared
// memory and barriers are initialized after it, and still alive before it at exit.
__device__ __forceinline__ void cluster_sync(DX_SITE_PARAM_FIRST) {
#if defined(DX_EMULATE)
  emu::cluster_sync(dx_site);
#else
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

}  // namespace dx::ptx
