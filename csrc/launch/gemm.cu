// Launcher of the FP8 GEMM: checks, TMA descriptors, tile grid, launch.
#include <cuda.h>
#include <cuda_bf16.h>

#include <string>

#include "deepseek_ext/gemm/fp8_gemm_kernel.cuh"
#include "deepseek_ext/gemm/geometry.cuh"
#include "deepseek_ext/gemm/staging.cuh"
#include "launch/gemm.h"
#include "launch/error_detail.h"
#include "launch/kernel_attributes.h"
#include "launch/launch_kernel.h"
#include "launch/tensor_map.h"

namespace dx {

namespace {

using gemm::kBlockK;

constexpr int kGroupM = 8;       // M blocks per rasterization group (L2 reuse of B)
constexpr int kDimMultiple = 16; // N, K: 16-byte e4m3 rows for TMA

// Row-major tensor of `rank` (2 or 3) dims, dims[0] innermost, strides[i] (elements) of
// dims[i + 1], read/written in boxes `box`; out-of-bounds elements read as zero and are not written.
cudaError_t encode(CUtensorMap* map, CUtensorMapDataType type, int elem_bytes, const void* ptr, int rank,
                   const int64_t (&dims)[3], const int64_t (&strides)[2], const int (&box)[3],
                   CUtensorMapSwizzle swizzle) {
  const int64_t stride_bytes[2] = {strides[0] * elem_bytes, strides[1] * elem_bytes};
  const uint32_t box_dims[3] = {uint32_t(box[0]), uint32_t(box[1]), uint32_t(box[2])};
  return encode_tensor_map(map, type, rank, ptr, {dims[0], dims[1], rank > 2 ? dims[2] : 1}, stride_bytes, box_dims,
                           swizzle);
}

// 2-D tensor [outer, inner] with row stride `ld` elements.
cudaError_t encode_2d(CUtensorMap* map, CUtensorMapDataType type, int elem_bytes, const void* ptr,
                      int64_t inner, int64_t outer, int64_t ld, int box_inner, int box_outer,
                      CUtensorMapSwizzle swizzle) {
  return encode(map, type, elem_bytes, ptr, 2, {inner, outer, 1}, {ld, 0}, {box_inner, box_outer, 1}, swizzle);
}

bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

struct Operands {
  CUtensorMap a, b, sa, sb, d;
  gemm::GemmParams params;
};

template <typename OutT, int kBlockM, int kBlockN, bool kSbPerRow>
cudaError_t launch_typed(const Operands& ops, int ctas, int cluster, cudaStream_t stream) {
  constexpr auto kernel = gemm::fp8_gemm_nt_kernel<OutT, kBlockM, kBlockN, kSbPerRow>;
  constexpr int smem_bytes = gemm::layout_for(sizeof(OutT), kBlockM, kBlockN).request_bytes();
  if (cudaError_t err = allow_dynamic_smem<kernel>(smem_bytes)) return err;
  if (cluster > 1) {  // a persistent grid of clusters must be resident all at once
    int resident = 0;
    if (cudaError_t err = resident_clusters<kernel>(gemm::kernel_threads(kBlockM), smem_bytes, cluster, resident))
      return err;
    if (ctas > resident * cluster) ctas = resident * cluster;
  }
  return launch_clustered_kernel(kernel, ctas, gemm::kernel_threads(kBlockM), smem_bytes, stream, false, cluster,
                                 ops.a, ops.b, ops.sa, ops.sb, ops.d, ops.params);
}

// The instantiated variant of width `block_n` (widths tried from kBlockN down in steps of 16).
template <typename OutT, int kBlockM, bool kSbPerRow, int kBlockN = gemm::kMaxBlockN>
cudaError_t launch_block_n(const Operands& ops, int block_n, int ctas, int cluster, cudaStream_t stream) {
  if constexpr (kBlockN < gemm::kBlockNStep) {
    return cudaErrorInvalidValue;
  } else {
    if constexpr (gemm::instantiated(sizeof(OutT), kSbPerRow, kBlockM, kBlockN)) {
      if (block_n == kBlockN) return launch_typed<OutT, kBlockM, kBlockN, kSbPerRow>(ops, ctas, cluster, stream);
    }
    return launch_block_n<OutT, kBlockM, kSbPerRow, kBlockN - gemm::kBlockNStep>(ops, block_n, ctas, cluster, stream);
  }
}

template <typename OutT, bool kSbPerRow>
cudaError_t launch_scales(const Operands& ops, const gemm::GemmConfig& c, int ctas, cudaStream_t stream) {
  const int cluster = gemm::cluster_size(c.multicast);
  return c.block_m == 64 ? launch_block_n<OutT, 64, kSbPerRow>(ops, c.block_n, ctas, cluster, stream)
                         : launch_block_n<OutT, 128, kSbPerRow>(ops, c.block_n, ctas, cluster, stream);
}

template <typename OutT>
cudaError_t launch_out(const Operands& ops, const gemm::GemmConfig& c, bool sb_per_row, int ctas,
                       cudaStream_t stream) {
  return sb_per_row ? launch_scales<OutT, true>(ops, c, ctas, stream) : launch_scales<OutT, false>(ops, c, ctas, stream);
}

// Pointers of one launch; their shapes are in a gemm::GemmGeometry.
struct GemmPointers {
  const void* a;
  const float* sa;
  const void* b;
  const float* sb;
  void* d;
  int d_dtype;
  const float* c;  // optional fp32, shaped like d
};

bool positive_int32(int64_t v) { return v > 0 && v <= INT32_MAX; }

std::string describe(const gemm::GemmConfig& c) {
  return "BLOCK_M " + std::to_string(c.block_m) + ", BLOCK_N " + std::to_string(c.block_n) + ", multicast " +
         std::to_string(static_cast<int>(c.multicast));
}

cudaError_t launch_gemm(const GemmPointers& p, const gemm::GemmGeometry& geometry, const gemm::GemmConfig* forced,
                        int num_sms, cudaStream_t stream) {
  const bool bf16_out = static_cast<DType>(p.d_dtype) == DType::kBF16;
  if (!bf16_out && static_cast<DType>(p.d_dtype) != DType::kF32) return cudaErrorInvalidValue;
  if (num_sms < 1) return cudaErrorInvalidValue;
  const int out_bytes = bf16_out ? 2 : 4;
  const gemm::GemmProblem problem = gemm::problem_of(geometry, out_bytes, num_sms);
  const gemm::GemmConfig config = forced != nullptr ? *forced : gemm::choose_config(problem);
  if (!gemm::config_applies(problem, config)) {
    set_error_detail("no compiled FP8 GEMM variant for " + describe(config) + " with this problem");
    return cudaErrorInvalidValue;
  }
  const gemm::GemmGeometry g = gemm::with_config(geometry, config, kGroupM);
  const int64_t m = g.sched.m, n = g.sched.n, k = g.sched.k;
  if (int64_t{g.sched.groups} * ceil_div(m, config.block_m) * ceil_div(n, config.block_n) > INT32_MAX) {
    return cudaErrorInvalidValue;
  }
  // A multicast operand is loaded in halves, one per CTA of the pair.
  const int a_box_rows = config.multicast == gemm::Multicast::kA ? config.block_m / 2 : config.block_m;
  const int b_box_rows = config.multicast == gemm::Multicast::kB ? config.block_n / 2 : config.block_n;
  const int d_box_cols = gemm::box_cols(out_bytes, config.block_n);
  CUtensorMap map_a, map_b, map_sa, map_sb{}, map_d;
  cudaError_t err;
  const auto e4m3 = CU_TENSOR_MAP_DATA_TYPE_UINT8;
  const auto f32 = CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
  const auto sw128 = CU_TENSOR_MAP_SWIZZLE_128B;
  const auto plain = CU_TENSOR_MAP_SWIZZLE_NONE;
  const auto d_swizzle = gemm::store_box_bytes(out_bytes, config.block_n) == gemm::kSwizzleBytes ? sw128 : plain;
  if ((err = encode_2d(&map_a, e4m3, 1, p.a, k, g.a_rows, g.lda, kBlockK, a_box_rows, sw128)) != cudaSuccess ||
      (err = encode_2d(&map_b, e4m3, 1, p.b, k, g.b_rows, g.ldb, kBlockK, b_box_rows, sw128)) != cudaSuccess ||
      (err = encode_2d(&map_sa, f32, 4, p.sa, g.sa_cols, g.sa_rows, g.ld_sa, config.block_m, 1, plain)) !=
          cudaSuccess ||
      (g.sb_per_row && (err = encode_2d(&map_sb, f32, 4, p.sb, n, ceil_div(k, kBlockK), g.ld_sb, config.block_n, 1,
                                        plain)) != cudaSuccess) ||
      (err = encode(&map_d, bf16_out ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : f32, out_bytes, p.d, 3,
                    {n, m, g.out_groups}, {n, m * n}, {d_box_cols, gemm::kWgRows, 1}, d_swizzle)) != cudaSuccess) {
    return err;
  }
  const Operands ops{map_a, map_b, map_sa, map_sb, map_d,
                     gemm::GemmParams{g.sb_per_row ? nullptr : p.sb, g.ld_sb, p.c, p.d, g.sched}};
  const int ctas = gemm::persistent_ctas(g.sched.tiles(), num_sms, gemm::cluster_size(config.multicast));
  return bf16_out ? launch_out<__nv_bfloat16>(ops, config, g.sb_per_row, ctas, stream)
                  : launch_out<float>(ops, config, g.sb_per_row, ctas, stream);
}

// Checks shared by every kind: N and K whole 16-byte e4m3 rows, 16-byte aligned tensors.
bool bad_common(const void* a, const float* sa, const void* b, const float* sb, bool sb_per_row, const void* d,
                const float* c, int64_t n, int64_t k) {
  return n % kDimMultiple != 0 || k % kDimMultiple != 0 || !positive_int32(n) || !positive_int32(k) ||
         !aligned(a, 16) || !aligned(b, 16) || !aligned(sa, 16) || !aligned(sb, sb_per_row ? 16 : 4) ||
         !aligned(d, 16) || !aligned(c, 16);
}

}  // namespace

cudaError_t launch_fp8_gemm_nt(const void* a, int64_t lda, const float* sa, int64_t ld_sa,
                               const void* b, int64_t ldb, const float* sb, int64_t ld_sb,
                               bool sb_per_row, void* d, int d_dtype, const float* c, int64_t m,
                               int64_t n, int64_t k, const gemm::GemmConfig* config, int num_sms, cudaStream_t stream) {
  if (m < 0 || n < 0 || k < 0) return cudaErrorInvalidValue;
  if (m == 0 || n == 0) return cudaSuccess;
  const int64_t k_blocks = ceil_div(k, kBlockK);
  const bool bad_strides = lda < k || lda % 16 != 0 || ldb < k || ldb % 16 != 0 || ld_sa < m ||
                           ld_sa % kScaleRowAlign != 0 ||
                           (sb_per_row ? ld_sb < n || ld_sb % kScaleRowAlign != 0 : ld_sb < k_blocks);
  if (!positive_int32(m) || bad_strides || bad_common(a, sa, b, sb, sb_per_row, d, c, n, k)) {
    return cudaErrorInvalidValue;
  }
  return launch_gemm({a, sa, b, sb, d, d_dtype, c},
                     gemm::dense_geometry(m, n, k, lda, ld_sa, ldb, ld_sb, sb_per_row), config, num_sms, stream);
}

cudaError_t launch_m_grouped_fp8_gemm_nt_contiguous(const void* a, const float* sa, int64_t ld_sa,
                                                    const void* b, const float* sb, const int* m_indices,
                                                    void* d, int d_dtype, int64_t m, int64_t n, int64_t k,
                                                    int64_t groups, const gemm::GemmConfig* config, int num_sms,
                                                    cudaStream_t stream) {
  if (m < 0 || n < 0 || k < 0 || groups < 0) return cudaErrorInvalidValue;
  if (m == 0 || n == 0) return cudaSuccess;
  const bool bad = !positive_int32(m) || m % gemm::kContiguousBlockRows != 0 || !positive_int32(groups) ||
                   !positive_int32(groups * n) || ld_sa < m || ld_sa % kScaleRowAlign != 0 ||
                   m_indices == nullptr || bad_common(a, sa, b, sb, false, d, nullptr, n, k);
  if (bad) return cudaErrorInvalidValue;
  return launch_gemm({a, sa, b, sb, d, d_dtype, nullptr},
                     gemm::m_contiguous_geometry(m, n, k, groups, ld_sa, m_indices), config, num_sms, stream);
}

cudaError_t launch_m_grouped_fp8_gemm_nt_masked(const void* a, const float* sa, int64_t ld_sa, const void* b,
                                                const float* sb, const int* masked_m, void* d, int d_dtype,
                                                int64_t groups, int64_t m_max, int64_t n, int64_t k,
                                                int64_t expected_m, const gemm::GemmConfig* config, int num_sms,
                                                cudaStream_t stream) {
  if (groups < 0 || m_max < 0 || n < 0 || k < 0 || expected_m < 1) return cudaErrorInvalidValue;
  if (groups == 0 || m_max == 0 || n == 0) return cudaSuccess;
  const int64_t k_blocks = ceil_div(k, kBlockK);
  const bool bad = !positive_int32(groups * m_max) || !positive_int32(groups * n) ||
                   !positive_int32(groups * k_blocks) || ld_sa < m_max || ld_sa % kScaleRowAlign != 0 ||
                   masked_m == nullptr || bad_common(a, sa, b, sb, false, d, nullptr, n, k);
  if (bad) return cudaErrorInvalidValue;
  return launch_gemm({a, sa, b, sb, d, d_dtype, nullptr},
                     gemm::m_masked_geometry(groups, m_max, n, k, ld_sa, expected_m, masked_m), config, num_sms, stream);
}

cudaError_t launch_k_grouped_fp8_gemm_tn_contiguous(const void* a, const float* sa, int64_t ld_sa,
                                                    const void* b, const float* sb, int64_t ld_sb,
                                                    const int* k_offsets, float* d, const float* c,
                                                    int64_t groups, int64_t m, int64_t n, int64_t k,
                                                    const gemm::GemmConfig* config, int num_sms, cudaStream_t stream) {
  if (groups < 0 || m < 0 || n < 0 || k < 0) return cudaErrorInvalidValue;
  if (groups == 0 || m == 0 || n == 0) return cudaSuccess;
  const bool bad = !positive_int32(m) || k % kBlockK != 0 || !positive_int32(groups) || ld_sa < m ||
                   ld_sa % kScaleRowAlign != 0 || ld_sb < n || ld_sb % kScaleRowAlign != 0 ||
                   k_offsets == nullptr || bad_common(a, sa, b, sb, true, d, c, n, k);
  if (bad) return cudaErrorInvalidValue;
  return launch_gemm({a, sa, b, sb, d, static_cast<int>(DType::kF32), c},
                     gemm::k_grouped_geometry(groups, m, n, k, ld_sa, ld_sb, k_offsets), config, num_sms, stream);
}

}  // namespace dx
