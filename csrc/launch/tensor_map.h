// Tensor maps for the launchers: cuTensorMapEncodeTiled through the runtime's driver entry point
// (the extension does not link libcuda; the emulation build answers with its TMA model).
#pragma once
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace dx {

// A row-major tensor of `rank` (2 or 3) dims, dims[0] contiguous, strides[i] (bytes) between
// consecutive indices of dims[i + 1], copied in boxes `box` with `swizzle`: out-of-bounds elements
// load as zeros and are not stored.
inline cudaError_t encode_tensor_map(CUtensorMap* map, CUtensorMapDataType type, int rank, const void* ptr,
                                     const int64_t (&dims)[3], const int64_t (&strides)[2], const uint32_t (&box)[3],
                                     CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_NONE) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {  // resolved once
    void* entry = nullptr;
    cudaDriverEntryPointQueryResult found;
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &entry, 12000,
                                                             cudaEnableDefault, &found);
    if (err != cudaSuccess || found != cudaDriverEntryPointSuccess) return PFN_cuTensorMapEncodeTiled_v12000{};
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(entry);
  }();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint64_t global_dims[3] = {cuuint64_t(dims[0]), cuuint64_t(dims[1]), cuuint64_t(dims[2])};
  const cuuint64_t global_strides[2] = {cuuint64_t(strides[0]), cuuint64_t(strides[1])};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUresult res = encode(map, type, rank, const_cast<void*>(ptr), global_dims, global_strides, box,
                              element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return res == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

}  // namespace dx
