// Expert-parallel launchers: shapes of the launches, nothing allocated behind the caller.
#include "launch/ep.h"

#include <algorithm>

#include "deepseek_ext/ep/combine.cuh"
#include "deepseek_ext/ep/dispatch.cuh"
#include "deepseek_ext/ep/layout.cuh"
#include "launch/launch_kernel.h"

namespace dx {

cudaError_t launch_ep_dispatch_layout(const ep::LayoutParams& p, int num_sms, cudaStream_t stream) {
  const int blocks = std::max(1, std::min(num_sms, p.num_ranks + p.num_experts));
  return launch_kernel(ep::layout_kernel, blocks, ep::kThreads, 0, stream, false, p);
}

cudaError_t launch_ep_dispatch(const ep::DispatchParams& p, int num_sms, cudaStream_t stream) {
  const size_t smem = sizeof(int) * ep::recv_tables_ints(p.num_ranks, p.local_experts);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(reinterpret_cast<const void*>(ep::dispatch_kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  // Cooperative: all blocks resident, so the grid barriers cannot deadlock.
  return launch_kernel(ep::dispatch_kernel, num_sms, ep::kThreads, smem, stream, true, p);
}

cudaError_t launch_ep_combine(const ep::CombineParams& p, int num_sms, cudaStream_t stream) {
  return launch_kernel(ep::combine_kernel, num_sms, ep::kThreads, 0, stream, true, p);
}

cudaError_t ep_alloc(int64_t bytes, void** ptr) {
  cudaError_t err = cudaMalloc(ptr, static_cast<size_t>(bytes));
  if (err == cudaSuccess) err = cudaMemset(*ptr, 0, static_cast<size_t>(bytes));
  return err == cudaSuccess ? cudaDeviceSynchronize() : err;
}

cudaError_t ep_free(void* ptr) { return cudaFree(ptr); }

cudaError_t ep_ipc_handle(void* ptr, cudaIpcMemHandle_t* handle) { return cudaIpcGetMemHandle(handle, ptr); }

cudaError_t ep_ipc_open(const cudaIpcMemHandle_t& handle, void** ptr) {
  return cudaIpcOpenMemHandle(ptr, handle, cudaIpcMemLazyEnablePeerAccess);
}

cudaError_t ep_ipc_close(void* ptr) { return cudaIpcCloseMemHandle(ptr); }

}  // namespace dx
