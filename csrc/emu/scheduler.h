// The emulator's execution model: every CUDA thread of a launch is a fiber on its block's OS
// thread (one block runs at a time), switched cooperatively at blocking points (barriers, warp
// collectives, mbarrier and flag polls, wgmma and bulk-copy waits). State shared by
// scheduler.cpp and async_units.cpp.
#pragma once
#include <csetjmp>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "emu/runtime.h"
#include "emu/shared_view.h"

namespace dx::emu {

constexpr int kWarpSize = 32;
constexpr int kWarpgroupThreads = 128;
constexpr int kNamedBarriers = 16;
constexpr int kSmCount = 132;                    // H200: blocks of one wave, cooperative limit
constexpr uint32_t kDefaultSharedBytes = 48 * 1024;  // dynamic smem without the opt-in attribute
constexpr uint32_t kMaxSharedBytes = 232448;     // sm_90 opt-in limit per block
constexpr uint32_t kDynamicWindowBase = 16;      // the runtime guarantees only 16-byte alignment
constexpr int kMaxClusterSize = 8;               // the portable cluster size limit
constexpr int kClusterRankShift = 24;            // shared::cluster addresses: (rank + 1) << 24 | offset

struct Block;

struct Fiber {
  jmp_buf context;
  void* stack = nullptr;
  uint3 thread{};
  int tid = 0;  // linear index in the block
  Block* block = nullptr;
  bool started = false, done = false;
  // Where it waits and why (for deadlock reports), and whether that wait is on another process.
  Site site{nullptr, 0};
  // What it waits for, formatted only for a deadlock report (polls run often).
  enum class Wait { kNone, kBarrier, kWarpCollective, kWarpgroup, kMbarrier, kFlag, kSysFlag, kBulkGroup, kCluster };
  Wait wait = Wait::kNone;
  uint64_t wait_args[2] = {};
  bool external_wait = false;
  // Waits that only a generation change can end: the scheduler skips the fiber until it changes.
  const uint64_t* wake_generation = nullptr;
  uint64_t asleep_at = 0;
  bool fenced = false;  // a fence since its last flag write: its next relaxed flag write releases
  // cp.async.bulk groups this thread committed (ids of store batches still reading or writing).
  std::deque<uint64_t> bulk_groups;
  std::vector<uint64_t> bulk_uncommitted;
};

struct BarrierState {
  uint32_t arrived = 0, expected = 0;
  uint64_t generation = 0;
};

struct WarpState {
  uint32_t arrived = 0, mask = 0;
  int kind = -1;
  Site site{nullptr, 0};
  uint64_t generation = 0;
  uint64_t values[kWarpSize] = {};
  int args[kWarpSize] = {};
  int widths[kWarpSize] = {};
  uint64_t results[kWarpSize] = {};
};

// One wgmma.mma_async of a warpgroup: operands, each thread's accumulator registers and inputs.
struct WgmmaOp {
  int n = 0;
  uint64_t desc_a = 0, desc_b = 0;
  bool accumulate = false;
  int chained_from = -1;           // index (in ops) of the pending op whose output is its input
  float* registers[kWarpgroupThreads] = {};
  std::vector<float> input;        // 64 x n, row-major (accumulate and not chained)
  std::vector<float> output;       // 64 x n once computed
  bool written_back = false;       // its result reached the registers
};

struct WarpgroupState {
  // The current collective instruction (every wgmma/setmaxnreg is .sync.aligned over 128 threads).
  uint32_t arrived = 0;
  uint64_t generation = 0;
  int kind = -1;
  Site site{nullptr, 0};
  int value = 0;
  WgmmaOp building;
  // Issued ops: uncommitted ones at the back, committed groups as index ranges.
  std::vector<WgmmaOp> ops;
  std::deque<int> group_ends;  // ops[..end) belong to committed groups, oldest first
  int retired = 0;             // ops[..retired) are done
  bool fenced = false;         // wgmma.fence since the last wait (accumulators may be read)
  int registers = 0;           // setmaxnreg value (0: as launched)
};

struct Block {
  uint3 index{};
  int threads = 0, live = 0;
  std::vector<std::unique_ptr<Fiber>> fibers;
  std::vector<WarpState> warps;
  std::vector<WarpgroupState> warpgroups;
  BarrierState barriers[kNamedBarriers];
  std::vector<uint8_t> dynamic_bytes;  // the dynamic shared memory
  SharedView dynamic;                  // ... as the async units address it
  std::vector<uint8_t> async_bytes;    // what the async proxy sees (set up on first use)
  SharedView async_view;
  std::vector<Block*> cluster;         // the blocks of its cluster by rank (itself included)
  int cluster_rank = 0;
  BarrierState cluster_barrier;        // barrier.cluster (used on the rank-0 block)
};

// The fiber running now (never null inside device code).
Fiber& current();

// Yields to the other fibers until the next round. `progress` says that the fiber moved on
// (false for an unsatisfied poll, which counts toward deadlock detection).
void yield(bool progress);
// Marks the current fiber as waiting (for the deadlock report) before it yields.
void note_wait(Site site, Fiber::Wait what, uint64_t arg0 = 0, uint64_t arg1 = 0);
// Blocks until `ready()`.
template <typename Ready>
void wait_until(Ready ready, Site site, Fiber::Wait what, uint64_t arg0 = 0) {
  while (!ready()) {
    note_wait(site, what, arg0);
    yield(false);
  }
  current().wait = Fiber::Wait::kNone;
}
// Blocks until `generation` moves past its current value (barriers, collectives).
void wait_generation(const uint64_t& generation, Site site, Fiber::Wait what, uint64_t arg0 = 0);
// The deadlock report's text for an mbarrier wait (async_units.cpp).
std::string describe_mbarrier_wait(Block& b, uint32_t bar, uint32_t parity);
// The block a shared::cluster address names (the current block for a shared::cta address), with
// the address made local to it.
Block& cluster_block(uint32_t& addr, Site site);
// Something other fibers may be waiting for changed.
void note_progress();
// A flag poll: what it waits for may come from another block or process.
void note_poll();
// Aborts the launch: reported as the launch's error with the current fiber's position.
[[noreturn]] void fault(const std::string& message, Site site);
// The block's shared memory as the async proxy sees it: TMA writes land in both views, generic
// writes reach it only through fence.proxy.async.
const SharedView& async_shared(Block& b);
// Runs once per scheduler round after every fiber had its turn: queued TMA copies complete.
void run_async_units();
// Drops what a finished (or failed) launch left queued.
void reset_async_units();
// The detailed text of the last failed launch on this thread (cudaGetErrorString returns it).
const std::string& last_launch_error();
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes).
void set_max_dynamic_shared_memory(const void* kernel, uint32_t bytes);
std::string describe(const Fiber& f);

}  // namespace dx::emu
