// Helpers for the binding glue: addresses arrive as Python ints, errors leave as strings.
#pragma once
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "launch/error_detail.h"

namespace dx::bind {

// The launch error's text with the launcher's detail (a driver CUresult, rejected parameters).
inline std::string error_string(cudaError_t err) {
  const std::string detail = take_error_detail();
  if (err == cudaSuccess) return std::string();
  return std::string(cudaGetErrorString(err)) + (detail.empty() ? "" : ": " + detail);
}

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

inline cudaStream_t stream_of(uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

// Every launcher binding releases the GIL: launches may block on a full launch queue.
inline auto release_gil() { return pybind11::call_guard<pybind11::gil_scoped_release>(); }

}  // namespace dx::bind
