// CPU checks of the FP8 GEMM's index math: tile scheduler, ring phases (against a model of
// mbarrier parity waits), output staging swizzle, accumulator fragments, smem descriptors and
// layout. Built by tests/test_gemm_scheduler.py with nvcc; prints "all passed" on success.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <vector>

#include <algorithm>

#include "deepseek_ext/gemm/config.cuh"
#include "deepseek_ext/gemm/heuristic.h"
#include "deepseek_ext/gemm/fragment.cuh"
#include "deepseek_ext/gemm/pipeline.cuh"
#include "deepseek_ext/gemm/scheduler.cuh"
#include "deepseek_ext/gemm/smem_desc.cuh"
#include "deepseek_ext/gemm/staging.cuh"
#include "check.h"

using namespace dx::gemm;

// Every tile is visited exactly once over all CTAs, tiles of a group stay in its M blocks.
static void check_scheduler() {
  const int sizes[] = {1, 2, 3, 7, 8, 9, 17, 32, 33, 64};
  const int groups[] = {1, 3, 8, 16};
  const int sms[] = {1, 7, 20, 112, 132, 1000};
  for (int mb : sizes)
    for (int nb : sizes)
      for (int g : groups) {
        const TileGrid grid{mb, nb, g};
        CHECK(grid.tiles() == mb * nb);
        for (int num_sms : sms) {
          const int ctas = persistent_ctas(grid.tiles(), num_sms);
          CHECK(ctas >= 1 && ctas <= num_sms && ctas <= grid.tiles());
          std::vector<int> seen(grid.tiles(), 0);
          for (int cta = 0; cta < ctas; ++cta)
            for (int t = cta; t < grid.tiles(); t += ctas) {
              const TileCoord c = grid.coord(t);
              CHECK(c.m_block >= 0 && c.m_block < mb && c.n_block >= 0 && c.n_block < nb);
              CHECK(c.m_block / g == t / (g * nb));  // the group owns M blocks [g*i, g*i+g)
              ++seen[c.m_block * nb + c.n_block];
            }
          for (int v : seen) CHECK(v == 1);
        }
      }
  CHECK(blocks_of(1, 128) == 1 && blocks_of(128, 128) == 1 && blocks_of(129, 128) == 2);
  CHECK(blocks_of(0, 128) == 0);
}

// Model of an mbarrier: `completed` phases so far, `pending` arrivals left in the current one.
// try_wait.parity(P) succeeds when the current (incomplete) phase's parity differs from P.
struct ModelBarrier {
  int count, pending, completed = 0;
  explicit ModelBarrier(int n) : count(n), pending(n) {}
  bool try_wait(uint32_t parity) const { return static_cast<uint32_t>(completed & 1) != parity; }
  void arrive() {
    if (--pending == 0) {
      ++completed;
      pending = count;
    }
  }
};

// Producer + kConsumers run in random interleavings over the ring: no stage is refilled before
// every consumer released it, each consumer sees every fill in order, nothing deadlocks.
template <int kStages>
static void check_ring_protocol(unsigned seed) {
  constexpr int kConsumers = 2 * consumer_warpgroups(128) * 4;  // consumer warps of a 2-CTA cluster
  const int fills = 3 * kStages + 5;  // several passes: phases flip more than once
  std::vector<ModelBarrier> full(kStages, ModelBarrier(1)), empty(kStages, ModelBarrier(kConsumers));
  std::vector<int> content(kStages, -1);  // which fill a stage holds
  std::vector<int> readers(kStages, 0);   // consumers still reading the stage's current fill
  RingPosition<kStages> prod;
  std::vector<RingPosition<kStages>> cons(kConsumers);
  int produced = 0;
  std::vector<int> consumed(kConsumers, 0);
  std::mt19937 rng(seed);
  for (int steps = 0; steps < 100000; ++steps) {
    bool all_done = produced == fills;
    for (int c = 0; c < kConsumers; ++c) all_done = all_done && consumed[c] == fills;
    if (all_done) return;
    const int who = static_cast<int>(rng() % (kConsumers + 1));
    if (who == kConsumers) {
      if (produced == fills || !empty[prod.stage].try_wait(prod.phase ^ 1)) continue;
      CHECK(readers[prod.stage] == 0);  // nobody still reads what we overwrite
      content[prod.stage] = produced++;
      readers[prod.stage] = kConsumers;
      full[prod.stage].arrive();  // expect_tx arrival + the bytes landing
      prod.advance();
    } else {
      RingPosition<kStages>& r = cons[who];
      if (consumed[who] == fills || !full[r.stage].try_wait(r.phase)) continue;
      CHECK(content[r.stage] == consumed[who]);
      ++consumed[who];
      --readers[r.stage];
      empty[r.stage].arrive();
      r.advance();
    }
  }
  CHECK(!"ring protocol deadlocked");
}

// The staging offset is a bijection onto the warpgroup's boxes; with 128-byte boxes it equals the
// 128B swizzle of the plain row-major box offset (bits 4-6 of the byte address XOR bits 7-9), with
// 16-byte boxes the plain offset; and the fragment stores are bank-conflict free.
static void check_staging(int out_bytes, int block_n) {
  const int total = kWgRows * block_n * out_bytes;
  const int width = store_box_bytes(out_bytes, block_n);
  CHECK(width == 128 || width == 16);
  CHECK(boxes(out_bytes, block_n) * box_bytes_total(out_bytes, block_n) == total);
  std::vector<int> hits(total, 0);
  for (int row = 0; row < kWgRows; ++row)
    for (int col = 0; col < block_n; ++col) {
      const uint32_t off = staging_offset(row, col, out_bytes, block_n);
      const int box = col / box_cols(out_bytes, block_n);
      const uint32_t plain = row * width + (col % box_cols(out_bytes, block_n)) * out_bytes;
      const uint32_t laid_out = width == 128 ? plain ^ (((plain >> 7) & 7) << 4) : plain;
      CHECK(off == box * box_bytes_total(out_bytes, block_n) + laid_out);
      for (int b = 0; b < out_bytes; ++b) {
        CHECK(off + b < static_cast<uint32_t>(total));
        ++hits[off + b];
      }
    }
  for (int h : hits) CHECK(h == 1);
  // One store instruction: fixed (warp, j, h), 32 lanes each writing a pair. Wavefronts needed =
  // the most distinct words any bank must serve; the minimum is the warp's bytes / 128.
  const int pair_bytes = 2 * out_bytes;
  for (int warp = 0; warp < 4; ++warp)
    for (int j = 0; j < block_n / 8; ++j)
      for (int h = 0; h < 2; ++h) {
        std::vector<std::set<uint32_t>> words(32);
        for (int lane = 0; lane < 32; ++lane) {
          const uint32_t off = staging_offset(fragment_row(warp, lane, h), fragment_col(lane, j), out_bytes, block_n);
          CHECK(off % pair_bytes == 0);
          for (int w = 0; w < pair_bytes / 4; ++w) words[(off / 4 + w) % 32].insert(off / 4 + w);
        }
        size_t wavefronts = 0;
        for (const auto& bank : words) wavefronts = bank.size() > wavefronts ? bank.size() : wavefronts;
        CHECK(static_cast<int>(wavefronts) == 32 * pair_bytes / 128);
      }
}

// The 128 threads x block_n/2 registers of a warpgroup cover its 64 x block_n tile once.
static void check_fragments(int block_n) {
  std::vector<int> hits(kWgRows * block_n, 0);
  for (int warp = 0; warp < 4; ++warp)
    for (int lane = 0; lane < 32; ++lane)
      for (int j = 0; j < block_n / 8; ++j)
        for (int h = 0; h < 2; ++h)
          for (int e = 0; e < 2; ++e) {
            const int row = fragment_row(warp, lane, h), col = fragment_col(lane, j) + e;
            CHECK(row >= 0 && row < kWgRows && col >= 0 && col < block_n);
            CHECK(fragment_reg(j, h) + e < block_n / 2);
            ++hits[row * block_n + col];
          }
  for (int h : hits) CHECK(h == 1);
}

static void check_descriptors() {
  const uint64_t d = smem_desc_k_major_sw128(0x1C400);
  CHECK((d & 0x3FFF) == (0x1C400 >> 4));
  CHECK(((d >> 16) & 0x3FFF) == 1);
  CHECK(((d >> 32) & 0x3FFF) == 1024 >> 4);
  CHECK(((d >> 49) & 7) == 0);
  CHECK((d >> 62) == 1);
  CHECK(smem_desc_advance_k(d, 3) == d + 6);  // 3 slices x 32 bytes, in 16-byte units
  // The largest start address a 227 KB layout uses still fits the 14-bit field.
  CHECK(((smem_desc_k_major_sw128(kMaxSharedBytes - 16) & 0x3FFF) << 4) == kMaxSharedBytes - 16);
}

// Regions are disjoint, in order, aligned for TMA (1024 for swizzled tiles and their multicast
// halves, 128 for boxes) and mbarriers (8), and the request fits the opt-in limit.
static void check_layout(int out_bytes, int block_m, int block_n) {
  const SmemLayout l = layout_for(out_bytes, block_m, block_n);
  const int wgs = consumer_warpgroups(block_m);
  CHECK(l.out_bytes == out_bytes && l.block_m == block_m && l.block_n == block_n);
  for (int s = 0; s < l.stages; ++s) {
    CHECK(l.a(s) % kSwizzleAtomBytes == 0 && l.b(s) % kSwizzleAtomBytes == 0);
    CHECK((l.a(s) + l.tile_a_bytes() / 2) % kSwizzleAtomBytes == 0);
    CHECK((l.b(s) + l.tile_b_bytes() / 2) % kSwizzleAtomBytes == 0);
    CHECK(l.scale_a(s) % 128 == 0 && l.scale_b(s) % 128 == 0);
    CHECK(l.full_barrier(s) % 8 == 0 && l.empty_barrier(s) % 8 == 0);
  }
  for (int wg = 0; wg < wgs; ++wg) CHECK(l.staging(wg) % kSwizzleAtomBytes == 0 && l.scale_b_blocks(wg) % 16 == 0);
  CHECK(l.a(l.stages - 1) + l.tile_a_bytes() <= l.b(0));
  CHECK(l.b(l.stages - 1) + l.tile_b_bytes() <= l.staging(0));
  CHECK(l.staging(wgs - 1) + kWgRows * block_n * out_bytes <= l.scale_b_blocks(0));
  CHECK(l.scale_b_blocks(wgs - 1) + kScaleBRows * kScaleBChunk * 4 <= l.scale_a(0));
  CHECK(l.scale_a(l.stages - 1) + l.scale_a_bytes() <= l.scale_b(0));
  CHECK(l.scale_b(l.stages - 1) + block_n * 4 <= l.full_barrier(0));
  CHECK(l.empty_barrier(l.stages - 1) + 8 == l.bytes());
  CHECK(l.request_bytes() <= kMaxSharedBytes);
  CHECK(l.stages <= kMaxStages);
  // One more stage would not fit (the ring is as deep as the budget allows, up to kMaxStages).
  const SmemLayout deeper{l.stages + 1, out_bytes, block_m, block_n};
  CHECK(l.stages == kMaxStages || deeper.request_bytes() > kMaxSharedBytes);
}

// The heuristic always returns a config that applies to the problem.
static void check_config_choice() {
  const int ms[] = {1, 64, 100, 128, 1000, 4096, 16384};
  const int ns[] = {16, 112, 128, 144, 2112, 7168, 32768};
  const int sms[] = {1, 20, 112, 132};
  for (int kind = 0; kind < 4; ++kind)
    for (int m : ms)
      for (int n : ns)
        for (int s : sms)
          for (bool sb_per_row : {false, true})
            for (int out_bytes : {2, 4}) {
              const GemmProblem p{static_cast<GemmKind>(kind), m, n, 7168, 3, out_bytes, sb_per_row, s};
              const GemmConfig c = choose_config(p);
              CHECK(config_applies(p, c));
              CHECK(c.multicast == Multicast::kNone || (kind == 0 && s >= 2));
            }
}

// Reference of what tile (g, m_block, n_block) of a schedule must compute, written from the
// launcher contracts (csrc/launch/gemm.h) rather than from TileSchedule::work.
struct ExpectedTile {
  bool visited, computes;
  int group, a_row, b_row, sa_row, sb_block_row, kb_begin, kb_end, rows;
};
static ExpectedTile expected_tile(const TileSchedule& s, int g, int mb, int nb) {
  const int bm = s.block_m, m0 = mb * bm, n0 = nb * s.block_n;
  const int kbs = (s.k + kBlockK - 1) / kBlockK, nbs = (s.n + 127) / 128;
  switch (s.kind) {
    case GemmKind::kDense:
      return {true, true, 0, m0, n0, 0, n0 / 128, 0, kbs, bm};
    case GemmKind::kMContiguous: {
      const int group = s.group_info[m0];
      if (group < 0) return {true, false, -1, m0, n0, 0, n0 / 128, 0, 0, bm};
      return {true, true, group, m0, group * s.n + n0, 0, group * nbs + n0 / 128, 0, kbs, bm};
    }
    case GemmKind::kMMasked: {
      const int rows = std::min(s.group_info[g], s.m) - m0;  // only tiles holding rows are visited
      return {rows > 0, rows > 0, g, g * s.m + m0, g * s.n + n0, g * kbs, g * nbs + n0 / 128, 0, kbs,
              std::min(rows, bm)};
    }
    case GemmKind::kKGrouped:
      return {true, true, g, m0, n0, 0, g * nbs + n0 / 128, s.group_info[g] / kBlockK, s.group_info[g + 1] / kBlockK,
              bm};
  }
  return {};
}

// Every (group, m block, n block) the contract computes is scheduled exactly once over all CTAs
// (kMMasked: no other), each tile's coordinates, K range and rows match the contract, and the two
// CTAs of a multicast cluster walk the same number of tiles, sharing their A or B rows.
static void check_schedule(const TileSchedule& s, int num_sms) {
  const int mbs = s.m_blocks(), nbs = s.n_blocks(), cluster = cluster_size(s.multicast);
  std::vector<int> seen(s.tiles(), 0);
  const int ctas = persistent_ctas(s.tiles(), num_sms, cluster);
  CHECK(ctas >= cluster && ctas % cluster == 0);
  for (int cta = 0; cta < ctas; ++cta) {
    TileCursor cursor, peer_cursor;
    TileWork w, peer;
    for (int t = cta; s.next(t, cursor, w); t += ctas) {
      CHECK(w.out_group >= 0 && w.out_group < s.groups);
      CHECK(w.m0 % s.block_m == 0 && w.m0 < s.m && w.n0 % s.block_n == 0 && w.n0 < s.n);
      const int mb = w.m0 / s.block_m, nb = w.n0 / s.block_n;
      ++seen[(w.out_group * mbs + mb) * nbs + nb];
      const ExpectedTile e = expected_tile(s, w.out_group, mb, nb);
      CHECK(e.visited);
      const bool computes = w.kb_end > w.kb_begin || (s.kind == GemmKind::kKGrouped);
      CHECK(computes == e.computes);
      CHECK(w.kb_begin == e.kb_begin && w.kb_end == e.kb_end);
      CHECK(w.a_row == e.a_row && w.rows == e.rows);
      if (e.computes) {
        CHECK(w.group == e.group && w.b_row == e.b_row && w.sa_row == e.sa_row);
        CHECK(w.sb_block_row == e.sb_block_row);
        const int last_col = std::min(w.n0 + s.block_n, s.n) - 1;
        CHECK(w.sb_block_rows == last_col / 128 - w.n0 / 128 + 1 && w.sb_block_rows <= kScaleBRows);
      }
      for (int r = 0; r < s.block_m; ++r) {
        bool want = r < e.rows;
        if (s.kind == GemmKind::kMContiguous) want = s.group_info[w.m0 + r] == w.group;
        CHECK(s.row_computed(w, r) == want);
      }
      if (cluster == 2) {  // the peer CTA (cta ^ 1) has the same tile index but for the last bit
        CHECK(s.next(t ^ 1, peer_cursor, peer));
        CHECK(s.multicast == Multicast::kA ? peer.m0 == w.m0 && peer.n0 != w.n0 : peer.n0 == w.n0 && peer.m0 != w.m0);
      }
    }
  }
  for (int g = 0; g < s.groups; ++g)
    for (int mb = 0; mb < mbs; ++mb)
      for (int nb = 0; nb < nbs; ++nb)
        CHECK(seen[(g * mbs + mb) * nbs + nb] == (expected_tile(s, g, mb, nb).visited ? 1 : 0));
}

static TileSchedule make_schedule(GemmKind kind, int m, int n, int k, int groups, int block_m, int block_n,
                                  const std::vector<int>& info, Multicast multicast = Multicast::kNone,
                                  int b_groups = 0) {
  return TileSchedule{kind, m, n, k, groups, block_m, block_n, 8, multicast, info.empty() ? nullptr : info.data(),
                      b_groups};
}

// Random grouped layouts: group sizes including empty groups, groups of one row, one group
// holding every row; padding blocks; masked counts 0, partial, full and beyond one block.
static void check_grouped_schedules() {
  std::mt19937 rng(7);
  const int sms[] = {1, 20, 132};
  for (int trial = 0; trial < 60; ++trial) {
    const int groups = 1 + static_cast<int>(rng() % 9);
    const int block_m = trial % 3 ? 128 : 64;
    const int block_n = 16 * (1 + static_cast<int>(rng() % 12));
    const int n = 16 * (1 + static_cast<int>(rng() % 40));
    const int k = 16 * (1 + static_cast<int>(rng() % 40));
    // Contiguous: each group's rows padded to 128, a few whole padding blocks between groups.
    std::vector<int> m_indices;
    for (int g = 0; g < groups; ++g) {
      const int kind = static_cast<int>(rng() % 4);
      const int size = kind == 0 ? 0 : kind == 1 ? 1 : static_cast<int>(rng() % 400);
      const int padded = (size + 127) / 128 * 128 + (rng() % 5 == 0 ? 128 : 0);
      for (int r = 0; r < padded; ++r) m_indices.push_back(r < size ? g : -1);
    }
    if (m_indices.empty()) m_indices.assign(128, -1);
    for (int s : sms) {
      check_schedule(make_schedule(GemmKind::kMContiguous, static_cast<int>(m_indices.size()), n, k, 1, block_m,
                                   block_n, m_indices, Multicast::kNone, groups), s);
    }
    // Masked.
    const int m_max = 1 + static_cast<int>(rng() % 600);
    std::vector<int> masked(groups);
    for (int g = 0; g < groups; ++g) {
      const int kind = static_cast<int>(rng() % 4);
      masked[g] = kind == 0 ? 0 : kind == 1 ? m_max : static_cast<int>(rng() % (m_max + 1));
    }
    for (int s : sms) check_schedule(make_schedule(GemmKind::kMMasked, m_max, n, k, groups, block_m, block_n, masked), s);
    // K-grouped: offsets of group sizes that are multiples of 128 (some empty).
    std::vector<int> offsets{0};
    for (int g = 0; g < groups; ++g) offsets.push_back(offsets.back() + 128 * static_cast<int>(rng() % 4));
    if (offsets.back() == 0) offsets.back() = 128;
    const int m = 16 * (1 + static_cast<int>(rng() % 30));
    for (int s : sms) {
      check_schedule(make_schedule(GemmKind::kKGrouped, m, n, offsets.back(), groups, block_m, block_n, offsets), s);
    }
  }
  // Dense, plain and with each multicast where the shared dimension has an even block count.
  for (int block_m : {64, 128})
    for (int m : {1, 200, 1000})
      for (int n : {16, 272, 1040})
        for (Multicast mc : {Multicast::kNone, Multicast::kA, Multicast::kB}) {
          const TileSchedule d = make_schedule(GemmKind::kDense, m, n, 300, 1, block_m, 48, {}, mc);
          const int shared = mc == Multicast::kA ? d.n_blocks() : d.m_blocks();
          if (mc != Multicast::kNone && shared % 2 != 0) continue;
          for (int s : {2, 20, 132}) check_schedule(d, s);
        }
}

int main() {
  check_scheduler();
  check_grouped_schedules();
  for (unsigned seed = 0; seed < 200; ++seed) {
    check_ring_protocol<4>(seed);
    check_ring_protocol<5>(seed);
  }
  for (int block_n = 16; block_n <= kMaxBlockN; block_n += 16) {
    check_staging(2, block_n);
    check_staging(4, block_n);
    check_fragments(block_n);
    for (int block_m : {64, 128})
      for (int out_bytes : {2, 4})
        for (bool sb_per_row : {false, true})
          if (instantiated(out_bytes, sb_per_row, block_m, block_n)) check_layout(out_bytes, block_m, block_n);
  }
  check_descriptors();
  check_config_choice();
  return report_checks();
}
