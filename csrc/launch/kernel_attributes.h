// Kernel attributes a launcher sets or asks once per kernel and device (the answers differ by
// device, and a launch inside a CUDA-graph capture should make no attribute call). One cache per
// kernel: the kernel's address is a template argument, so instantiations never share one.
#pragma once
#include <cuda_runtime.h>

#include <atomic>

namespace dx {

constexpr int kMaxCachedDevices = 64;  // devices beyond are asked on every launch

// `value` = query's answer for kKernel on the current device; a positive answer is kept
// (kSlot tells apart the attributes of one kernel).
template <auto kKernel, int kSlot, typename Query>
cudaError_t once_per_device(int& value, Query query) {
  static std::atomic<int> answers[kMaxCachedDevices];
  int device = 0;
  if (cudaError_t err = cudaGetDevice(&device)) return err;
  const bool cached = device < kMaxCachedDevices;
  if (cached && (value = answers[device].load(std::memory_order_acquire)) > 0) return cudaSuccess;
  if (cudaError_t err = query(value)) return err;
  if (cached && value > 0) answers[device].store(value, std::memory_order_release);
  return cudaSuccess;
}

// Raises kKernel's dynamic shared-memory limit to `bytes` (above the 48 KB a CTA gets without
// opting in); `bytes` must be the same on every call for one kernel.
template <auto kKernel>
cudaError_t allow_dynamic_smem(int bytes) {
  int done = 0;
  return once_per_device<kKernel, 0>(done, [bytes](int& set) {
    set = 1;
    return cudaFuncSetAttribute(reinterpret_cast<const void*>(kKernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                bytes);
  });
}

// How many clusters of `cluster` CTAs of kKernel can be resident at once (fewer than
// SMs / cluster where the SMs' grouping into GPCs leaves some unpaired).
template <auto kKernel>
cudaError_t resident_clusters(int threads, int smem_bytes, int cluster, int& count) {
  return once_per_device<kKernel, 1>(count, [=](int& answer) {
    cudaLaunchAttribute attribute = {};
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = static_cast<unsigned>(cluster);
    attribute.val.clusterDim.y = attribute.val.clusterDim.z = 1;
    // Positional: grid, block, dynamic shared memory, stream, attributes (the emulation build's
    // runtime.h defines gridDim and blockDim as macros).
    const cudaLaunchConfig_t config = {dim3(cluster), dim3(threads), static_cast<size_t>(smem_bytes), nullptr,
                                       &attribute, 1};
    const cudaError_t err = cudaOccupancyMaxActiveClusters(&answer, reinterpret_cast<const void*>(kKernel), &config);
    if (err != cudaSuccess) return err;
    return answer < 1 ? cudaErrorInvalidConfiguration : cudaSuccess;  // not even one cluster fits
  });
}

}  // namespace dx
