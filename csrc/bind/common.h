// Helpers for the binding glue: addresses arrive as Python ints, errors leave as strings.
#pragma once
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

namespace dx::bind {

inline std::string error_string(cudaError_t err) {
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

inline cudaStream_t stream_of(uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

// Every launcher binding releases the GIL: launches may block on a full launch queue.
inline auto release_gil() { return pybind11::call_guard<pybind11::gil_scoped_release>(); }

}  // namespace dx::bind
