// CPU emulation of the persistent FP8 GEMM's data flow for every GemmKind: the tile schedule
// (TileSchedule::work, row_computed) over the shapes the launcher encodes (gemm/geometry.cuh),
// with TMA semantics (boxes read zeros outside a map, stores clipped to D's dims), against each
// launcher's contract (csrc/launch/gemm.h) computed directly. Values are small integers and
// powers of two, so every sum is exact and results must match exactly. Built by
// tests/test_gemm_scheduler.py with nvcc; prints "all passed" on success.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "deepseek_ext/gemm/geometry.cuh"
#include "check.h"

using namespace dx::gemm;

static std::mt19937 rng(11);
static std::vector<double> random_values(size_t count, int spread) {
  std::vector<double> v(count);
  for (double& x : v) x = static_cast<int>(rng() % (2 * spread + 1)) - spread;
  return v;
}
static std::vector<double> random_scales(size_t count) {
  std::vector<double> v(count);
  for (double& x : v) x = std::ldexp(1.0, static_cast<int>(rng() % 5) - 2);
  return v;
}

// A 2-D TMA map view: element (inner, outer) of a row-major tensor with row stride ld, zero
// outside [0, inner_dim) x [0, outer_dim).
struct Map {
  const std::vector<double>* data;
  int64_t inner_dim, outer_dim, ld;
  double at(int64_t inner, int64_t outer) const {
    return inner < inner_dim && outer < outer_dim ? (*data)[outer * ld + inner] : 0.0;
  }
};

struct Tensors {
  std::vector<double> a, sa, b, sb, c;
};

// D [out_groups, m, n] as the kernel would write it; NaN where nothing was written.
static std::vector<double> emulate(const GemmGeometry& g, const Tensors& t) {
  const TileSchedule& s = g.sched;
  const int64_t k_blocks = (s.k + kBlockK - 1) / kBlockK;
  const Map a{&t.a, s.k, g.a_rows, g.lda}, b{&t.b, s.k, g.b_rows, g.ldb};
  const Map sa{&t.sa, g.sa_cols, g.sa_rows, g.ld_sa}, sb_rows{&t.sb, s.n, k_blocks, g.ld_sb};
  std::vector<double> d(static_cast<size_t>(g.out_groups) * s.m * s.n, NAN);
  std::vector<double> acc(static_cast<size_t>(kBlockM) * s.block_n);
  for (int tile = 0; tile < s.tiles(); ++tile) {
    const TileWork w = s.work(tile);
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int kb = w.kb_begin; kb < w.kb_end; ++kb) {
      for (int r = 0; r < kBlockM; ++r)
        for (int col = 0; col < s.block_n; ++col) {
          double partial = 0;
          for (int kk = 0; kk < kBlockK; ++kk) {
            partial += a.at(kb * kBlockK + kk, w.a_row + r) * b.at(kb * kBlockK + kk, w.b_row + col);
          }
          const double scale_b = g.sb_per_row ? sb_rows.at(w.n0 + col, kb) : t.sb[w.sb_block_row * g.ld_sb + kb];
          acc[r * s.block_n + col] += partial * sa.at(w.m0 + r, w.sa_row + kb) * scale_b;
        }
    }
    for (int r = 0; r < kBlockM; ++r)
      for (int col = 0; col < s.block_n; ++col) {
        const int64_t row = w.m0 + r, column = w.n0 + col;
        if (row >= s.m || column >= s.n) continue;  // the TMA store clips
        const int64_t at = (static_cast<int64_t>(w.out_group) * s.m + row) * s.n + column;
        const double value = s.row_computed(w, r) ? acc[r * s.block_n + col] : 0.0;
        CHECK(std::isnan(d[at]));  // each element stored once
        d[at] = value + (t.c.empty() ? 0.0 : t.c[at]);
      }
  }
  return d;
}

static void check_equal(const std::vector<double>& got, const std::vector<double>& want) {
  CHECK(got.size() == want.size());
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    if (!(got[i] == want[i])) {
      std::printf("element %zu: got %g want %g\n", i, got[i], want[i]);
      CHECK(got[i] == want[i]);
      return;
    }
  }
}

// sum over K of a[row_a, :] * b[row_b, :] with one scale per (row, 128-wide K block) on each side.
static double dot(const std::vector<double>& a, int64_t row_a, const std::vector<double>& b, int64_t row_b,
                  int64_t ld, int64_t k_begin, int64_t k_end, double (*scale_a)(int64_t, int64_t, const void*),
                  const void* ctx_a, double (*scale_b)(int64_t, int64_t, const void*), const void* ctx_b) {
  double sum = 0;
  for (int64_t kk = k_begin; kk < k_end; ++kk) {
    sum += a[row_a * ld + kk] * b[row_b * ld + kk] * scale_a(row_a, kk / kBlockK, ctx_a) *
           scale_b(row_b, kk / kBlockK, ctx_b);
  }
  return sum;
}

struct MMajor {  // element (row, kb) at s[kb * ld + row]
  const std::vector<double>* s;
  int64_t ld;
};
static double m_major(int64_t row, int64_t kb, const void* ctx) {
  const MMajor* m = static_cast<const MMajor*>(ctx);
  return (*m->s)[kb * m->ld + row];
}
struct Blocks {  // 128x128 scales of B [rows of all groups]: (row, kb) at s[(g * nbs + row_in_g / 128) * ld + kb]
  const std::vector<double>* s;
  int64_t n, ld;
};
static double blocks(int64_t row, int64_t kb, const void* ctx) {
  const Blocks* b = static_cast<const Blocks*>(ctx);
  const int64_t nbs = (b->n + 127) / 128;
  return (*b->s)[((row / b->n) * nbs + (row % b->n) / 128) * b->ld + kb];
}

static void check_dense(int m, int n, int k, bool sb_per_row, bool with_c, int block_n) {
  const int64_t kbs = (k + 127) / 128, ld_sa = (m + 3) / 4 * 4 + 4, ld_sb = sb_per_row ? (n + 3) / 4 * 4 : kbs + 1;
  Tensors t{random_values(int64_t{m} * k, 8), random_scales(kbs * ld_sa), random_values(int64_t{n} * k, 8),
            random_scales(sb_per_row ? kbs * ld_sb : (n + 127) / 128 * ld_sb),
            with_c ? random_values(int64_t{m} * n, 100) : std::vector<double>{}};
  const GemmGeometry g = with_tiles(dense_geometry(m, n, k, k, ld_sa, k, ld_sb, sb_per_row), block_n, 8);
  const MMajor sa{&t.sa, ld_sa}, sb{&t.sb, ld_sb};
  const Blocks sbb{&t.sb, n, ld_sb};
  std::vector<double> want(int64_t{m} * n);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      want[i * n + j] = dot(t.a, i, t.b, j, k, 0, k, m_major, &sa, sb_per_row ? m_major : blocks,
                            sb_per_row ? static_cast<const void*>(&sb) : &sbb) +
                        (with_c ? t.c[i * n + j] : 0.0);
  check_equal(emulate(g, t), want);
}

// Groups of the given sizes, each padded to 128 rows (plus a whole padding block after group 1).
static void check_contiguous(const std::vector<int>& sizes, int n, int k, int block_n) {
  std::vector<int> m_indices;
  for (size_t g = 0; g < sizes.size(); ++g) {
    const int padded = (sizes[g] + 127) / 128 * 128 + (g == 1 ? 128 : 0);
    for (int r = 0; r < padded; ++r) m_indices.push_back(r < sizes[g] ? static_cast<int>(g) : -1);
  }
  const int m = static_cast<int>(m_indices.size()), groups = static_cast<int>(sizes.size());
  const int64_t kbs = (k + 127) / 128, ld_sa = m, nbs = (n + 127) / 128;
  Tensors t{random_values(int64_t{m} * k, 8), random_scales(kbs * ld_sa), random_values(int64_t{groups} * n * k, 8),
            random_scales(groups * nbs * kbs), {}};
  const GemmGeometry g = with_tiles(m_contiguous_geometry(m, n, k, groups, ld_sa, m_indices.data()), block_n, 8);
  const MMajor sa{&t.sa, ld_sa};
  const Blocks sb{&t.sb, n, kbs};
  std::vector<double> want(int64_t{m} * n, 0.0);
  for (int i = 0; i < m; ++i)
    for (int j = 0; m_indices[i] >= 0 && j < n; ++j)
      want[i * n + j] = dot(t.a, i, t.b, int64_t{m_indices[i]} * n + j, k, 0, k, m_major, &sa, blocks, &sb);
  check_equal(emulate(g, t), want);
}

static void check_masked(const std::vector<int>& masked, int m_max, int n, int k, int expected_m, int block_n) {
  const int groups = static_cast<int>(masked.size());
  const int64_t kbs = (k + 127) / 128, ld_sa = (m_max + 3) / 4 * 4, nbs = (n + 127) / 128;
  Tensors t{random_values(int64_t{groups} * m_max * k, 8), random_scales(groups * kbs * ld_sa),
            random_values(int64_t{groups} * n * k, 8), random_scales(groups * nbs * kbs), {}};
  const GemmGeometry g =
      with_tiles(m_masked_geometry(groups, m_max, n, k, ld_sa, expected_m, masked.data()), block_n, 8);
  const Blocks sb{&t.sb, n, kbs};
  std::vector<double> want(int64_t{groups} * m_max * n, 0.0);
  for (int gr = 0; gr < groups; ++gr) {
    const std::vector<double> sa_g(t.sa.begin() + gr * kbs * ld_sa, t.sa.begin() + (gr + 1) * kbs * ld_sa);
    const MMajor sa{&sa_g, ld_sa};
    const std::vector<double> a_g(t.a.begin() + int64_t{gr} * m_max * k, t.a.begin() + int64_t{gr + 1} * m_max * k);
    for (int i = 0; i < masked[gr]; ++i)
      for (int j = 0; j < n; ++j)
        want[(int64_t{gr} * m_max + i) * n + j] = dot(a_g, i, t.b, int64_t{gr} * n + j, k, 0, k, m_major, &sa, blocks, &sb);
  }
  check_equal(emulate(g, t), want);
}

static void check_k_grouped(const std::vector<int>& sizes, int m, int n, bool with_c, int block_n) {
  std::vector<int> offsets{0};
  for (int size : sizes) offsets.push_back(offsets.back() + size);
  const int k = offsets.back(), groups = static_cast<int>(sizes.size());
  const int64_t kbs = k / 128, ld_sa = (m + 3) / 4 * 4, ld_sb = (n + 3) / 4 * 4 + 4;
  Tensors t{random_values(int64_t{m} * k, 8), random_scales(kbs * ld_sa), random_values(int64_t{n} * k, 8),
            random_scales(kbs * ld_sb), with_c ? random_values(int64_t{groups} * m * n, 100) : std::vector<double>{}};
  const GemmGeometry g = with_tiles(k_grouped_geometry(groups, m, n, k, ld_sa, ld_sb, offsets.data()), block_n, 8);
  const MMajor sa{&t.sa, ld_sa}, sb{&t.sb, ld_sb};
  std::vector<double> want(int64_t{groups} * m * n);
  for (int gr = 0; gr < groups; ++gr)
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        const int64_t at = (int64_t{gr} * m + i) * n + j;
        want[at] = dot(t.a, i, t.b, j, k, offsets[gr], offsets[gr + 1], m_major, &sa, m_major, &sb) +
                   (with_c ? t.c[at] : 0.0);
      }
  check_equal(emulate(g, t), want);
}

int main() {
  for (int block_n : {64, 128}) {
    check_dense(200, 144, 272, false, true, block_n);
    check_dense(7, 80, 128, true, false, block_n);
    check_contiguous({0, 1, 130, 57}, 144, 272, block_n);
    check_contiguous({300}, 208, 160, block_n);
    check_contiguous({1, 0, 1}, 16, 16, block_n);
    check_masked({0, 200, 1, 130}, 200, 144, 272, 64, block_n);
    check_masked({40, 0, 7}, 40, 80, 160, 200, block_n);
    check_masked({5, 300, 0}, 300, 48, 128, 1, block_n);
    check_k_grouped({128, 0, 256, 128}, 48, 80, true, block_n);
    check_k_grouped({0, 384}, 144, 16, false, block_n);
  }
  return report_checks();
}
