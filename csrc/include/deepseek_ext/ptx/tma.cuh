// Tensor-memory-accelerator (cp.async.bulk.tensor) wrappers. Tensor maps live in kernel
// parameter space (__grid_constant__) and are passed by generic address. Each DX_EMULATE branch
// is the host twin (csrc/emu/async_units.cpp queues the copy for the modeled TMA unit).
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"

namespace dx::ptx {

__device__ __forceinline__ void prefetch_tensor_map(const void* tensor_map DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  emu::tma_prefetch(tensor_map, dx_site);
#else
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(tensor_map)) : "memory");
#endif
}

// Global tile at (inner, outer) -> shared memory; completes `bytes` on mbarrier `bar`.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const void* tensor_map, int32_t inner,
                                            int32_t outer, uint32_t bar DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  const int32_t coords[2] = {inner, outer};
  emu::tma_load(dst, tensor_map, coords, 2, bar, dx_site);
#else
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(inner), "r"(outer), "r"(bar)
      : "memory");
#endif
}

// tma_load_2d into the same shared offset of every cluster block in `cta_mask`, completing there on
// the barrier at `bar`'s offset.
__device__ __forceinline__ void tma_load_2d_multicast(uint32_t dst, const void* tensor_map, int32_t inner,
                                                      int32_t outer, uint32_t bar, uint16_t cta_mask DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  const int32_t coords[2] = {inner, outer};
  emu::tma_load_multicast(dst, tensor_map, coords, 2, bar, cta_mask, dx_site);
#else
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
      " [%0], [%1, {%2, %3}], [%4], %5;" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(inner), "r"(outer), "r"(bar), "h"(cta_mask)
      : "memory");
#endif
}

// Global tile at (inner, middle, outer) of a 3-D tensor map -> shared memory; completes `bytes` on
// mbarrier `bar`.
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const void* tensor_map, int32_t inner, int32_t middle,
                                            int32_t outer, uint32_t bar DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  const int32_t coords[3] = {inner, middle, outer};
  emu::tma_load(dst, tensor_map, coords, 3, bar, dx_site);
#else
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(inner), "r"(middle), "r"(outer), "r"(bar)
      : "memory");
#endif
}

// Shared-memory tile -> global at (inner, middle, outer) of a 3-D tensor map; out-of-bounds
// elements are not written.
__device__ __forceinline__ void tma_store_3d(const void* tensor_map, int32_t inner, int32_t middle,
                                             int32_t outer, uint32_t src DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  const int32_t coords[3] = {inner, middle, outer};
  emu::tma_store(tensor_map, coords, 3, src, dx_site);
#else
  asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%1, %2, %3}], [%4];" ::"l"(
                   reinterpret_cast<uint64_t>(tensor_map)),
               "r"(inner), "r"(middle), "r"(outer), "r"(src)
               : "memory");
#endif
}

__device__ __forceinline__ void bulk_commit_group(DX_SITE_PARAM_FIRST) {
#if defined(DX_EMULATE)
  emu::bulk_commit_group(dx_site);
#else
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
#endif
}

// Waits until at most N committed bulk groups still read their shared-memory source.
template <int N>
__device__ __forceinline__ void bulk_wait_group_read(DX_SITE_PARAM_FIRST) {
#if defined(DX_EMULATE)
  emu::bulk_wait_group(N, true, dx_site);
#else
  asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
#endif
}

// Waits until at most N committed bulk groups are still in flight (writes done).
template <int N>
__device__ __forceinline__ void bulk_wait_group(DX_SITE_PARAM_FIRST) {
#if defined(DX_EMULATE)
  emu::bulk_wait_group(N, false, dx_site);
#else
  asm volatile("cp.async.bulk.wait_group %0;" ::"n"(N) : "memory");
#endif
}

// Orders this thread's ordinary shared-memory writes before later async-proxy (TMA, wgmma) reads.
__device__ __forceinline__ void fence_proxy_async_shared(DX_SITE_PARAM_FIRST) {
#if defined(DX_EMULATE)
  emu::fence_proxy_async(dx_site);
#else
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

}  // namespace dx::ptx
