// Expert-parallel launchers: shapes of the launches, nothing allocated behind the caller.
#include "launch/ep.h"

#include <algorithm>

#include "deepseek_ext/ep/combine.cuh"
#include "deepseek_ext/ep/dispatch.cuh"
#include "deepseek_ext/ep/layout.cuh"

namespace dx {

namespace {

cudaError_t launch_cooperative(const void* kernel_fn, void* args, int num_blocks, size_t smem, cudaStream_t stream) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(num_blocks);
  config.blockDim = dim3(ep::kThreads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeCooperative;  // all blocks resident: grid barriers cannot deadlock
  attribute.val.cooperative = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  void* kernel_args[] = {args};
  return cudaLaunchKernelExC(&config, kernel_fn, kernel_args);
}

}  // namespace

cudaError_t launch_ep_dispatch_layout(const ep::LayoutParams& p, int num_sms, cudaStream_t stream) {
  const int blocks = std::max(1, std::min(num_sms, p.num_ranks + p.num_experts));
  ep::layout_kernel<<<blocks, ep::kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_ep_dispatch(const ep::DispatchParams& p, int num_sms, cudaStream_t stream) {
  const size_t smem = sizeof(int) * ep::recv_tables_ints(p.num_ranks, p.local_experts);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(ep::dispatch_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  ep::DispatchParams params = p;
  return launch_cooperative(reinterpret_cast<const void*>(ep::dispatch_kernel), &params, num_sms, smem, stream);
}

cudaError_t launch_ep_combine(const ep::CombineParams& p, int num_sms, cudaStream_t stream) {
  ep::CombineParams params = p;
  return launch_cooperative(reinterpret_cast<const void*>(ep::combine_kernel), &params, num_sms, 0, stream);
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
