// One launch call for both builds: cudaLaunchKernelEx on the GPU (its return value is this
// launch's error, never an earlier one), the fiber scheduler in the emulation build.
#pragma once
#include <cuda_runtime.h>

namespace dx {

// kernel<<<grid, block, smem, stream>>>(args...) in clusters of `cluster` blocks along x;
// `cooperative` keeps every block resident (the kernel holds grid-wide barriers).
template <typename... Params, typename... Args>
cudaError_t launch_clustered_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                    cudaStream_t stream, bool cooperative, int cluster, Args... args) {
#if defined(DX_EMULATE)
  (void)stream;  // emulated launches run to completion in order
  return emu::launch(reinterpret_cast<const void*>(kernel), grid, block, smem, cooperative, cluster,
                     [=] { kernel(args...); });
#else
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attributes[2] = {};
  attributes[0].id = cudaLaunchAttributeCooperative;
  attributes[0].val.cooperative = cooperative ? 1 : 0;
  attributes[1].id = cudaLaunchAttributeClusterDimension;
  attributes[1].val.clusterDim.x = static_cast<unsigned>(cluster);
  attributes[1].val.clusterDim.y = 1;
  attributes[1].val.clusterDim.z = 1;
  config.attrs = attributes;
  config.numAttrs = cluster > 1 ? 2 : 1;
  return cudaLaunchKernelEx(&config, kernel, args...);
#endif
}

template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          bool cooperative, Args... args) {
  return launch_clustered_kernel(kernel, grid, block, smem, stream, cooperative, 1, args...);
}

}  // namespace dx
