// Expert-parallel launchers (dispatch layout, notify, dispatch, combine), the CUDA IPC memory
// helpers the Python Buffer uses to share its regions between processes, and the host-mapped
// memory the notify writes its summary to.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

#include "deepseek_ext/ep/params.cuh"

namespace dx {

// Layout of one rank's routing on min(num_sms, R + E) blocks.
cudaError_t launch_ep_dispatch_layout(const ep::LayoutParams& p, int num_sms, cudaStream_t stream);

// Notify on one block; dispatch and combine on 2 * channels co-resident blocks (cooperative
// launch: senders and receivers wait for each other; combine also holds grid-wide barriers).
cudaError_t launch_ep_notify(const ep::DispatchParams& p, cudaStream_t stream);
cudaError_t launch_ep_dispatch(const ep::DispatchParams& p, cudaStream_t stream);
cudaError_t launch_ep_combine(const ep::CombineParams& p, cudaStream_t stream);

// Raw device memory for a rank's region (zeroed), and its CUDA IPC export/import.
cudaError_t ep_alloc(int64_t bytes, void** ptr);
cudaError_t ep_free(void* ptr);
cudaError_t ep_ipc_handle(void* ptr, cudaIpcMemHandle_t* handle);
cudaError_t ep_ipc_open(const cudaIpcMemHandle_t& handle, void** ptr);
cudaError_t ep_ipc_close(void* ptr);

// Zeroed pinned host memory mapped into the device's address space (its device address too).
cudaError_t ep_host_alloc(int64_t bytes, void** host, void** device);
cudaError_t ep_host_free(void* host);

}  // namespace dx
