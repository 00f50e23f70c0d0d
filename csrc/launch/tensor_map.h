// Tensor maps for the launchers: cuTensorMapEncodeTiled through the runtime's driver entry point
// (the extension does not link libcuda; the emulation build answers with its TMA model).
#pragma once
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdio>
#include <cstdint>
#include <string>

#include "launch/error_detail.h"

namespace dx {

// The driver's cuTensorMapEncodeTiled; null (with the reason in the error detail) if the lookup
// fails. Only a successful lookup is kept: a later call retries.
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static std::atomic<PFN_cuTensorMapEncodeTiled_v12000> cached{nullptr};
  if (const auto encode = cached.load(std::memory_order_acquire)) return encode;
  void* entry = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  const cudaError_t err =
      cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &entry, 12000, cudaEnableDefault, &found);
  if (err != cudaSuccess || found != cudaDriverEntryPointSuccess || entry == nullptr) {
    set_error_detail("looking up the driver's cuTensorMapEncodeTiled (12.0) failed: " +
                     std::string(cudaGetErrorString(err)) + ", query result " + std::to_string(int(found)));
    return nullptr;
  }
  const auto encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(entry);
  cached.store(encode, std::memory_order_release);
  return encode;
}

// A row-major tensor of `rank` (2 or 3) dims, dims[0] contiguous, strides[i] (bytes) between
// consecutive indices of dims[i + 1], copied in boxes `box` with `swizzle`: out-of-bounds elements
// load as zeros and are not stored. A rejected map returns cudaErrorInvalidValue with the
// CUresult and every parameter in the error detail.
inline cudaError_t encode_tensor_map(CUtensorMap* map, CUtensorMapDataType type, int rank, const void* ptr,
                                     const int64_t (&dims)[3], const int64_t (&strides)[2], const uint32_t (&box)[3],
                                     CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_NONE) {
  const auto encode = tensor_map_encoder();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint64_t global_dims[3] = {cuuint64_t(dims[0]), cuuint64_t(dims[1]), cuuint64_t(dims[2])};
  const cuuint64_t global_strides[2] = {cuuint64_t(strides[0]), cuuint64_t(strides[1])};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUresult res = encode(map, type, rank, const_cast<void*>(ptr), global_dims, global_strides, box,
                              element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (res == CUDA_SUCCESS) return cudaSuccess;
  const auto list = [](const auto& v, int n) {
    std::string s = "[";
    for (int i = 0; i < n; ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s + "]";
  };
  char address[32];
  std::snprintf(address, sizeof(address), "%p", ptr);
  set_error_detail("cuTensorMapEncodeTiled returned CUresult " + std::to_string(int(res)) + " for data type " +
                   std::to_string(int(type)) + ", rank " + std::to_string(rank) + ", address " + address +
                   ", dims " + list(global_dims, rank) + ", byte strides " + list(global_strides, rank - 1) +
                   ", box " + list(box, rank) + ", swizzle " + std::to_string(int(swizzle)));
  return cudaErrorInvalidValue;
}

}  // namespace dx
