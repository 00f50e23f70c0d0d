// Constants and integer helpers shared by host and device code (no torch, no pybind).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define DX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DX_HOST_DEVICE inline
#endif

// The emulation build (csrc/emu/runtime.h) gives the ptx/ wrappers a defaulted caller-site
// parameter (_FIRST: the only one; DX_SITE_ARG passes it on) for its deadlock reports; on the GPU
// all three are nothing.
#ifndef DX_SITE_PARAM
#define DX_SITE_PARAM
#define DX_SITE_PARAM_FIRST
#define DX_SITE_ARG
#endif

namespace dx {

constexpr int kQuantGroup = 128;       // elements sharing one FP8 scale along the quantized dim
constexpr float kFp8E4m3Max = 448.0f;  // largest finite float8_e4m3fn
constexpr float kAmaxFloor = 1e-4f;    // keeps all-zero groups from producing a zero scale
constexpr int kScaleRowAlign = 4;      // M-major scale columns are padded to 4 rows (16-byte TMA rows)

// Element-type codes passed through the bindings (must match deepseek_ext/ops/_launch.py).
enum class DType : int { kBF16 = 0, kF32 = 1, kE4M3 = 2 };

DX_HOST_DEVICE constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
DX_HOST_DEVICE constexpr int64_t align_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

}  // namespace dx
