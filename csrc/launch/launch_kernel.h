// One launch call for both builds: cudaLaunchKernelEx on the GPU (its return value is this
// launch's error, never an earlier one), the fiber scheduler in the emulation build.
#pragma once
#include <cuda_runtime.h>

namespace dx {

// kernel<<<grid, block, smem, stream>>>(args...); `cooperative` keeps every block resident
// (the kernel holds grid-wide barriers).
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          bool cooperative, Args... args) {
#if defined(DX_EMULATE)
  (void)stream;  // emulated launches run to completion in order
  return emu::launch(reinterpret_cast<const void*>(kernel), grid, block, smem, cooperative,
                     [=] { kernel(args...); });
#else
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeCooperative;
  attribute.val.cooperative = cooperative ? 1 : 0;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, args...);
#endif
}

}  // namespace dx
