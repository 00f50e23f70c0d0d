// Hopper's asynchronous units in the emulation build, modeled from the PTX ISA: mbarrier objects
// ("Parallel Synchronization and Communication Instructions: mbarrier"), the TMA
// ("cp.async.bulk.tensor", bulk async-groups), the async proxy ("Proxies", fence.proxy.async) and
// warpgroup MMA ("Asynchronous Warpgroup Level Matrix Multiply-Accumulate").
#include <cmath>
#include <limits>
#include <unordered_map>

#include "emu/fp8.h"
#include "emu/scheduler.h"
#include "emu/tensor_map.h"
#include "emu/wgmma.h"

namespace dx::emu {

namespace {

// --- mbarrier --------------------------------------------------------------------------------------
// The 64-bit object keeps its state in shared memory, so a kernel that overwrites it breaks it as
// on the GPU: pending arrivals (20 bits), expected arrivals (20), tx-count (21, signed), phase
// parity (1), and a 2-bit tag that tells an initialized barrier from stray bytes.
constexpr uint64_t kMbarTag = 2;
constexpr int64_t kMaxCount = (1 << 20) - 1;

struct Mbarrier {
  int64_t pending, expected, tx;
  uint32_t phase;
};

uint64_t* mbarrier_word(Block& b, uint32_t bar, Site site) {
  if (bar % 8 != 0) fault("mbarrier address 0x" + SharedView::hex(bar) + " is not 8-byte aligned", site);
  try {
    return reinterpret_cast<uint64_t*>(b.dynamic.at(bar, 8, "mbarrier"));
  } catch (const std::out_of_range& e) {
    fault(e.what(), site);
  }
}

uint64_t* mbarrier_word(uint32_t bar, Site site) {
  if (bar >> kClusterRankShift != 0) fault("a shared::cta mbarrier instruction given a shared::cluster address", site);
  return mbarrier_word(*current().block, bar, site);
}

Mbarrier load(const uint64_t* word, uint32_t bar, Site site) {
  const uint64_t w = *word;
  if (w >> 62 != kMbarTag) fault("mbarrier at 0x" + SharedView::hex(bar) + " is used before mbarrier.init (or was overwritten)", site);
  const int64_t tx_raw = static_cast<int64_t>((w >> 40) & 0x1fffff);
  return {static_cast<int64_t>(w & 0xfffff), static_cast<int64_t>((w >> 20) & 0xfffff),
          tx_raw >= (1 << 20) ? tx_raw - (1 << 21) : tx_raw, static_cast<uint32_t>((w >> 61) & 1)};
}

void store(uint64_t* word, const Mbarrier& m) {
  *word = static_cast<uint64_t>(m.pending) | static_cast<uint64_t>(m.expected) << 20 |
          (static_cast<uint64_t>(m.tx) & 0x1fffff) << 40 | uint64_t{m.phase} << 61 | kMbarTag << 62;
}

// The current phase completes when every expected arrival came and no transaction is pending.
void settle(Mbarrier& m) {
  if (m.pending == 0 && m.tx == 0) {
    m.phase ^= 1u;
    m.pending = m.expected;
  }
}

void complete_tx(Block& b, uint32_t bar, uint32_t bytes, Site site) {
  uint64_t* word;
  try {
    word = reinterpret_cast<uint64_t*>(b.dynamic.at(bar, 8, "mbarrier of a TMA load"));
  } catch (const std::out_of_range& e) {
    fault(e.what(), site);
  }
  Mbarrier m = load(word, bar, site);
  m.tx -= bytes;
  if (m.tx < -kMaxCount) fault("mbarrier tx-count below its range: more bytes arrived than announced", site);
  settle(m);
  store(word, m);
  note_progress();
}

}  // namespace

std::string describe_mbarrier_wait(Block& b, uint32_t bar, uint32_t parity) {
  const Mbarrier m = load(reinterpret_cast<const uint64_t*>(b.dynamic.at(bar, 8, "mbarrier")), bar, Site{nullptr, 0});
  return "mbarrier 0x" + SharedView::hex(bar) + " parity " + std::to_string(parity) + " (phase parity " +
         std::to_string(m.phase) + ", arrivals pending " + std::to_string(m.pending) + "/" +
         std::to_string(m.expected) + ", tx-count " + std::to_string(m.tx) + ")";
}

namespace {

// --- TMA -----------------------------------------------------------------------------------------
struct TmaOp {
  bool load;
  Block* block;
  TensorMap map;
  int32_t coords[kMaxTensorRank];
  uint32_t smem, bar;
  uint16_t cta_mask;  // a multicast load: the cluster ranks it writes to (0: the issuing block only)
  uint64_t id;
  Site site;
  std::vector<uint8_t> source;  // a store: the shared bytes it read, which must stay until it completes
};

std::vector<TmaOp>& tma_queue() {
  static std::vector<TmaOp> queue;
  return queue;
}
uint64_t g_next_op = 1;
std::unordered_map<uint64_t, int> g_group_ops;  // bulk async-group id -> its stores still in flight
std::unordered_map<uint64_t, uint64_t> g_op_group;  // committed store in flight -> its group

const TensorMap& checked_map(const void* map, Site site) {
  try {
    return decode_tensor_map(map);
  } catch (const std::exception& e) {
    fault(e.what(), site);
  }
}

TmaOp make_op(bool is_load, const void* map, const int32_t* coords, int rank, uint32_t smem, uint32_t bar, Site site) {
  TmaOp op{is_load, current().block, checked_map(map, site), {}, smem, bar, 0, g_next_op++, site};
  if (op.map.rank != rank)
    fault("a " + std::to_string(rank) + "-D TMA instruction with a " + std::to_string(op.map.rank) + "-D tensor map", site);
  for (int i = 0; i < rank; ++i) op.coords[i] = coords[i];
  return op;
}

// --- wgmma ---------------------------------------------------------------------------------------
enum WarpgroupOp { kWgFence = 0, kWgMma = 1, kWgCommit = 2, kWgWait = 3 };

WarpgroupState& warpgroup_of(Fiber& f, Site site) {
  if (f.block->threads % kWarpgroupThreads != 0) fault("wgmma in a block that is not whole warpgroups", site);
  return f.block->warpgroups[f.tid / kWarpgroupThreads];
}

// Joins the warpgroup's current .sync.aligned instruction; `join` runs for every thread and the
// last thread to arrive runs `complete`; everyone returns after it.
template <typename Join, typename Complete>
void warpgroup_collective(int kind, Site site, const char* name, Join join, Complete complete) {
  Fiber& f = current();
  WarpgroupState& wg = warpgroup_of(f, site);
  if (wg.arrived == 0) {
    wg.kind = kind, wg.site = site;
  } else if (wg.kind != kind) {
    fault(std::string(name) + " while other threads of the warpgroup wait at " + std::string(wg.site.file) + ":" +
              std::to_string(wg.site.line) + " (.sync.aligned instructions must be reached by the whole warpgroup)",
          site);
  }
  join(wg, f.tid % kWarpgroupThreads);
  if (++wg.arrived == kWarpgroupThreads) {
    complete(wg);
    wg.arrived = 0;
    wg.generation += 1;
    note_progress();
    return;
  }
  wait_generation(wg.generation, site, Fiber::Wait::kWarpgroup);
}

bool pending_output(const WarpgroupState& wg, const float* registers, int thread, int& op) {
  for (int i = static_cast<int>(wg.ops.size()) - 1; i >= wg.retired; --i) {
    if (wg.ops[i].registers[thread] == registers) {
      op = i;
      return true;
    }
  }
  return false;
}

void retire(Block& b, WarpgroupState& wg, int end, Site site) {
  for (; wg.retired < end; ++wg.retired) {
    WgmmaOp& op = wg.ops[wg.retired];
    const float* input = nullptr;
    if (op.accumulate) input = op.chained_from >= 0 ? wg.ops[op.chained_from].output.data() : op.input.data();
    op.output.assign(64 * op.n, 0.0f);
    try {
      wgmma_m64nNk32_e4m3(op.n, op.desc_a, op.desc_b, async_shared(b), input, op.output.data());
    } catch (const std::exception& e) {
      fault(std::string("wgmma.mma_async: ") + e.what(), site);
    }
  }
  // Registers receive an op's result unless a later op already chains it (still in flight).
  for (int i = 0; i < end; ++i) {
    bool chained = false;
    for (size_t j = i + 1; j < wg.ops.size(); ++j) chained = chained || wg.ops[j].chained_from == i;
    WgmmaOp& op = wg.ops[i];
    if (chained || op.output.empty() || op.written_back) continue;
    op.written_back = true;
    for (int t = 0; t < kWarpgroupThreads; ++t) {
      for (int r = 0; r < op.n / 2; ++r) {
        int row, col;
        wgmma_accumulator_position(op.n, t, r, row, col);
        op.registers[t][r] = op.output[row * op.n + col];
      }
    }
  }
  if (wg.group_ends.empty() && wg.retired == static_cast<int>(wg.ops.size())) {
    wg.ops.clear();
    wg.retired = 0;
  }
}

// A TMA store reads through the async proxy: its source must hold what the threads wrote, i.e.
// they fenced (fence.proxy.async) after writing it.
uint32_t box_bytes(const TensorMap& m) {
  uint32_t bytes = m.elem_bytes;
  for (int i = 0; i < m.rank; ++i) bytes *= m.box[i];
  return bytes;
}

void check_published(Block& b, const TmaOp& op) {
  const uint32_t bytes = box_bytes(op.map);
  const uint8_t* generic = b.dynamic.at(op.smem, bytes, "TMA store source");
  const uint8_t* seen = async_shared(b).at(op.smem, bytes, "TMA store source");
  if (std::memcmp(generic, seen, bytes) != 0)
    fault("TMA store of shared memory 0x" + SharedView::hex(op.smem) + " (+" + std::to_string(bytes) +
              " bytes) written after the last fence.proxy.async: the async proxy does not see those writes",
          op.site);
}

}  // namespace

// --- mbarrier ------------------------------------------------------------------------------------

void mbarrier_init(uint32_t bar, uint32_t count, Site site) {
  if (count < 1 || count > kMaxCount) fault("mbarrier.init count " + std::to_string(count) + " is not in [1, 2^20 - 1]", site);
  store(mbarrier_word(bar, site), Mbarrier{count, count, 0, 0});
  note_progress();
}

void mbarrier_arrive_cluster(uint32_t bar, Site site) {
  Block& target = cluster_block(bar, site);
  uint64_t* word = mbarrier_word(target, bar, site);
  Mbarrier m = load(word, bar, site);
  m.pending -= 1;
  settle(m);
  store(word, m);
  note_progress();
}

void mbarrier_arrive(uint32_t bar, uint32_t tx_bytes, Site site) {
  uint64_t* word = mbarrier_word(bar, site);
  Mbarrier m = load(word, bar, site);
  m.tx += tx_bytes;
  if (m.tx > kMaxCount) fault("mbarrier.expect_tx beyond the tx-count range (2^20 - 1 bytes pending)", site);
  m.pending -= 1;
  settle(m);
  store(word, m);
  note_progress();
}

bool mbarrier_try_wait_parity(uint32_t bar, uint32_t parity, Site site) {
  const uint64_t* word = mbarrier_word(bar, site);
  // The phase with parity `parity` has completed once the current phase's parity differs.
  if (load(word, bar, site).phase != (parity & 1u)) return true;
  note_wait(site, Fiber::Wait::kMbarrier, bar, parity & 1u);
  yield(false);
  current().wait = Fiber::Wait::kNone;
  return load(word, bar, site).phase != (parity & 1u);
}

// --- TMA -----------------------------------------------------------------------------------------

void tma_prefetch(const void* tensor_map, Site site) { checked_map(tensor_map, site); }

void tma_load(uint32_t dst, const void* tensor_map, const int32_t* coords, int rank, uint32_t bar, Site site) {
  mbarrier_word(bar, site);
  tma_queue().push_back(make_op(true, tensor_map, coords, rank, dst, bar, site));
}

void tma_load_multicast(uint32_t dst, const void* tensor_map, const int32_t* coords, int rank, uint32_t bar,
                        uint16_t cta_mask, Site site) {
  const Block& b = *current().block;
  if (cta_mask == 0 || cta_mask >> b.cluster.size() != 0)
    fault("TMA multicast mask 0x" + SharedView::hex(cta_mask) + " names no block or one outside the cluster of " +
              std::to_string(b.cluster.size()),
          site);
  for (size_t r = 0; r < b.cluster.size(); ++r)
    if (cta_mask >> r & 1) mbarrier_word(*b.cluster[r], bar, site);
  TmaOp op = make_op(true, tensor_map, coords, rank, dst, bar, site);
  op.cta_mask = cta_mask;
  tma_queue().push_back(std::move(op));
}

// The store reads shared memory at once (the earliest the hardware may: a missing barrier before
// it shows as stale data) and completes at the end of the round; its source must not change in
// between (the latest the hardware may read: a missing wait_group.read before reuse is reported).
void tma_store(const void* tensor_map, const int32_t* coords, int rank, uint32_t src, Site site) {
  TmaOp op = make_op(false, tensor_map, coords, rank, src, 0, site);
  Block& b = *op.block;
  try {
    check_published(b, op);
    tma_store_box(op.map, op.coords, async_shared(b), op.smem);
    const uint8_t* read = async_shared(b).at(op.smem, box_bytes(op.map), "TMA store source");
    op.source.assign(read, read + box_bytes(op.map));
  } catch (const std::exception& e) {
    fault(std::string("TMA store: ") + e.what(), site);
  }
  current().bulk_uncommitted.push_back(op.id);
  tma_queue().push_back(std::move(op));
}

void bulk_commit_group(Site) {
  Fiber& f = current();
  const uint64_t group = g_next_op++;
  int in_flight = 0;
  for (const uint64_t id : f.bulk_uncommitted) {
    for (const TmaOp& op : tma_queue()) {
      if (op.id != id) continue;
      g_op_group[id] = group;
      in_flight += 1;
    }
  }
  f.bulk_uncommitted.clear();
  g_group_ops[group] = in_flight;
  f.bulk_groups.push_back(group);
}

void bulk_wait_group(int pending, bool, Site site) {
  Fiber& f = current();
  const auto done = [&] {
    while (!f.bulk_groups.empty() && g_group_ops[f.bulk_groups.front()] == 0) {
      g_group_ops.erase(f.bulk_groups.front());
      f.bulk_groups.pop_front();
    }
    return static_cast<int>(f.bulk_groups.size()) <= pending;
  };
  wait_until(done, site, Fiber::Wait::kBulkGroup, static_cast<uint64_t>(pending));
}

// The generic writes made so far become visible to the async proxy (this thread's, and, as the
// model does not track writers, everyone's: a missing fence shows where no thread fenced).
void fence_proxy_async(Site) {
  Block& b = *current().block;
  async_shared(b);
  std::memcpy(b.async_bytes.data(), b.dynamic_bytes.data(), b.dynamic_bytes.size());
}

void reset_async_units() {
  tma_queue().clear();
  g_group_ops.clear();
  g_op_group.clear();
}

void run_async_units() {
  std::vector<TmaOp> queue;
  queue.swap(tma_queue());
  for (TmaOp& op : queue) {
    Block& b = *op.block;
    try {
      if (op.load) {
        for (size_t r = 0; r < b.cluster.size(); ++r) {
          if (op.cta_mask == 0 ? &b != b.cluster[r] : (op.cta_mask >> r & 1) == 0) continue;
          Block& to = *b.cluster[r];
          const SharedView& async = async_shared(to);  // the TMA writes through the async proxy ...
          const uint32_t bytes = tma_load_box(op.map, op.coords, to.dynamic, op.smem);
          tma_load_box(op.map, op.coords, async, op.smem);  // ... which generic reads see after the mbarrier
          complete_tx(to, op.bar, bytes, op.site);
        }
      } else if (std::memcmp(b.dynamic.at(op.smem, box_bytes(op.map), "TMA store source"), op.source.data(),
                             op.source.size()) != 0) {
        fault("shared memory 0x" + SharedView::hex(op.smem) + " was rewritten while a TMA store still read it " +
                  "(no cp.async.bulk.wait_group.read before the reuse)",
              op.site);
      }
    } catch (const std::exception& e) {
      fault(std::string(op.load ? "TMA load: " : "TMA store: ") + e.what(), op.site);
    }
    if (const auto it = g_op_group.find(op.id); it != g_op_group.end()) {
      g_group_ops[it->second] -= 1;
      g_op_group.erase(it);
    }
    note_progress();
  }
}

// --- wgmma ---------------------------------------------------------------------------------------

void wgmma_fence(Site site) {
  warpgroup_collective(kWgFence, site, "wgmma.fence", [](WarpgroupState&, int) {}, [](WarpgroupState& wg) {
    wg.fenced = true;
  });
}

void wgmma_mma_async_e4m3(int n, float* d, uint64_t desc_a, uint64_t desc_b, bool accumulate, Site site) {
  warpgroup_collective(
      kWgMma, site, "wgmma.mma_async",
      [&](WarpgroupState& wg, int t) {
        WgmmaOp& op = wg.building;
        if (wg.arrived == 0) {
          op = WgmmaOp{};
          op.n = n, op.desc_a = desc_a, op.desc_b = desc_b, op.accumulate = accumulate;
          op.input.assign(64 * n, std::numeric_limits<float>::quiet_NaN());
          op.chained_from = -2;  // not yet known
        } else if (op.n != n || op.desc_a != desc_a || op.desc_b != desc_b || op.accumulate != accumulate) {
          fault("wgmma.mma_async operands differ inside the warpgroup", site);
        }
        int chained = -1;
        pending_output(wg, d, t, chained);
        if (op.chained_from != -2 && op.chained_from != chained)
          fault("wgmma.mma_async: threads chain their accumulators from different in-flight operations", site);
        op.chained_from = chained;
        op.registers[t] = d;
        for (int r = 0; r < n / 2; ++r) {
          int row, col;
          wgmma_accumulator_position(n, t, r, row, col);
          if (chained < 0) op.input[row * n + col] = d[r];
          d[r] = std::numeric_limits<float>::quiet_NaN();  // in flight until wgmma.wait_group
        }
      },
      [&](WarpgroupState& wg) {
        if (wg.building.chained_from < 0 && !wg.fenced)
          fault("wgmma.mma_async uses accumulator registers without a wgmma.fence since they were last accessed", site);
        wg.ops.push_back(std::move(wg.building));
      });
}

void wgmma_commit_group(Site site) {
  warpgroup_collective(kWgCommit, site, "wgmma.commit_group", [](WarpgroupState&, int) {}, [](WarpgroupState& wg) {
    wg.group_ends.push_back(static_cast<int>(wg.ops.size()));
  });
}

void wgmma_wait_group(int pending, Site site) {
  Block& b = *current().block;
  warpgroup_collective(kWgWait, site, "wgmma.wait_group", [](WarpgroupState&, int) {}, [&](WarpgroupState& wg) {
    while (static_cast<int>(wg.group_ends.size()) > pending) {
      const int end = wg.group_ends.front();
      wg.group_ends.pop_front();
      retire(b, wg, end, site);
    }
    wg.fenced = false;  // the accumulators are now ordinary registers again
  });
}

// --- fp8 conversions ------------------------------------------------------------------------------

uint16_t cvt_e4m3x2(float lo, float hi) {
  return static_cast<uint16_t>(f32_to_e4m3_satfinite_rn(lo) | f32_to_e4m3_satfinite_rn(hi) << 8);
}

uint32_t cvt_e4m3x2_to_f16x2(uint16_t pair) {
  return e4m3_to_f16_bits(static_cast<uint8_t>(pair & 0xff)) |
         static_cast<uint32_t>(e4m3_to_f16_bits(static_cast<uint8_t>(pair >> 8))) << 16;
}

}  // namespace dx::emu
