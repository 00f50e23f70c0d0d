// Expert-parallel launchers (dispatch layout, dispatch, combine) and the CUDA IPC memory
// helpers the Python Buffer uses to share receive regions between processes.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

#include "deepseek_ext/ep/params.cuh"

namespace dx {

// Layout of one rank's routing on min(num_sms, R + E) blocks.
cudaError_t launch_ep_dispatch_layout(const ep::LayoutParams& p, int num_sms, cudaStream_t stream);

// Dispatch / combine on num_sms co-resident blocks (cooperative launch: the kernels hold
// grid-wide barriers).
cudaError_t launch_ep_dispatch(const ep::DispatchParams& p, int num_sms, cudaStream_t stream);
cudaError_t launch_ep_combine(const ep::CombineParams& p, int num_sms, cudaStream_t stream);

// Raw device memory for a rank's region (zeroed), and its CUDA IPC export/import.
cudaError_t ep_alloc(int64_t bytes, void** ptr);
cudaError_t ep_free(void* ptr);
cudaError_t ep_ipc_handle(void* ptr, cudaIpcMemHandle_t* handle);
cudaError_t ep_ipc_open(const cudaIpcMemHandle_t& handle, void** ptr);
cudaError_t ep_ipc_close(void* ptr);

}  // namespace dx
