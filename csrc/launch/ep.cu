// Expert-parallel launchers: shapes of the launches, nothing allocated behind the caller.
#include "launch/ep.h"

#include <algorithm>
#include <cstring>

#include "deepseek_ext/ep/combine.cuh"
#include "deepseek_ext/ep/dispatch.cuh"
#include "deepseek_ext/ep/layout.cuh"
#include "deepseek_ext/ep/notify.cuh"
#include "launch/launch_kernel.h"

namespace dx {

namespace {

// Dynamic shared memory of a kernel that holds `tables` receive tables (raising the limit past 48 KB).
template <typename Kernel>
cudaError_t tables_smem(Kernel kernel, const ep::DispatchParams& p, int tables, size_t* bytes) {
  *bytes = sizeof(int) * tables * ep::recv_tables_ints(p.num_ranks, p.local_experts);
  if (*bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(*bytes));
}

}  // namespace

cudaError_t launch_ep_dispatch_layout(const ep::LayoutParams& p, int num_sms, cudaStream_t stream) {
  const int blocks = std::max(1, std::min(num_sms, p.num_ranks + p.num_experts));
  return launch_kernel(ep::layout_kernel, blocks, ep::kThreads, 0, stream, false, p);
}

cudaError_t launch_ep_notify(const ep::DispatchParams& p, cudaStream_t stream) {
  size_t smem = 0;
  const cudaError_t err = tables_smem(ep::notify_kernel, p, 1, &smem);
  return err != cudaSuccess ? err : launch_kernel(ep::notify_kernel, 1, ep::kThreads, smem, stream, false, p);
}

// Cooperative: the senders and receivers of a channel wait for each other, so all blocks are resident.
cudaError_t launch_ep_dispatch(const ep::DispatchParams& p, cudaStream_t stream) {
  size_t smem = 0;
  const cudaError_t err = tables_smem(ep::dispatch_kernel, p, p.num_rx, &smem);
  const int blocks = static_cast<int>(2 * p.layout.channels);
  return err != cudaSuccess ? err : launch_kernel(ep::dispatch_kernel, blocks, ep::kThreads, smem, stream, true, p);
}

cudaError_t launch_ep_combine(const ep::CombineParams& p, cudaStream_t stream) {
  const int blocks = static_cast<int>(2 * p.layout.channels);
  return launch_kernel(ep::combine_kernel, blocks, ep::kThreads, 0, stream, true, p);
}

cudaError_t ep_alloc(int64_t bytes, void** ptr) {
  cudaError_t err = cudaMalloc(ptr, static_cast<size_t>(bytes));
  if (err == cudaSuccess) err = cudaMemset(*ptr, 0, static_cast<size_t>(bytes));
  return err == cudaSuccess ? cudaDeviceSynchronize() : err;
}

cudaError_t ep_free(void* ptr) { return cudaFree(ptr); }

cudaError_t ep_host_alloc(int64_t bytes, void** host, void** device) {
  cudaError_t err = cudaHostAlloc(host, static_cast<size_t>(bytes), cudaHostAllocMapped);
  if (err == cudaSuccess) err = cudaHostGetDevicePointer(device, *host, 0);
  if (err == cudaSuccess) std::memset(*host, 0, static_cast<size_t>(bytes));
  return err;
}

cudaError_t ep_host_free(void* host) { return cudaFreeHost(host); }

cudaError_t ep_ipc_handle(void* ptr, cudaIpcMemHandle_t* handle) { return cudaIpcGetMemHandle(handle, ptr); }

cudaError_t ep_ipc_open(const cudaIpcMemHandle_t& handle, void** ptr) {
  return cudaIpcOpenMemHandle(ptr, handle, cudaIpcMemLazyEnablePeerAccess);
}

cudaError_t ep_ipc_close(void* ptr) { return cudaIpcCloseMemHandle(ptr); }

}  // namespace dx
