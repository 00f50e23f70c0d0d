// Fiber scheduler of the emulation build: launches, blocks, warps, barriers, warp collectives,
// shared memory, and the deadlock report. Each resident block runs on an OS thread of its own
// (its static __shared__ variables are that thread's thread_local copies), and the threads take
// turns: one runs at a time, so the emulation is deterministic.
#include "emu/scheduler.h"

#include <pthread.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

namespace dx::emu {

namespace {

constexpr size_t kStackBytes = 256 * 1024;  // reserved, not committed: pages appear when touched
constexpr uint8_t kPoison = 0xff;           // fresh shared memory: NaN as floats, -1 as integers

struct EmulationFault {
  std::string message;
};

struct Launch {
  std::function<void()>* body = nullptr;
  dim3 grid, block;
  std::vector<std::unique_ptr<Block>> blocks;  // resident blocks of the current wave
  bool progress = false, memory_progress = false;
  // The running block's own, since its last local round began: progress, flag writes, flag polls.
  bool block_progress = false, block_memory_progress = false, block_polled = false;
  bool failed = false;
  std::string failure;
  std::string recorded_fault;  // record_fault's first message
};

Launch* g_launch = nullptr;  // handed between the block threads with the turn
thread_local Fiber* t_current = nullptr;
thread_local jmp_buf t_scheduler;  // where the running fiber of this OS thread yields to
std::mutex g_launch_mutex;  // one emulated launch at a time per process

// Stacks of one wave, reserved once and reused by later launches.
struct StackPool {
  uint8_t* base = nullptr;
  size_t count = 0;
  void reserve(size_t needed) {
    if (needed > count) {
      if (base != nullptr) munmap(base, count * kStackBytes);
      void* p = mmap(nullptr, needed * kStackBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) throw EmulationFault{"cannot reserve fiber stacks"};
      base = static_cast<uint8_t*>(p);
      count = needed;
    }
  }
  uint8_t* get(size_t i) const { return base + i * kStackBytes; }
};
StackPool g_stacks;

const char* short_path(const char* file) {
  if (file == nullptr) return "?";
  const char* p = std::strstr(file, "csrc/");
  return p != nullptr ? p : file;
}

std::string where(Site site) {
  return std::string(short_path(site.file)) + ":" + std::to_string(site.line);
}

uint32_t cluster_live(const Block& b) {
  uint32_t live = 0;
  for (const Block* peer : b.cluster) live += static_cast<uint32_t>(peer->live);
  return live;
}

// Whole-block and cluster barriers count exited threads as arrived: an exit can complete one.
void release_whole_block_barriers(Block& b) {
  for (BarrierState& bar : b.barriers) {
    if (bar.arrived != 0 && bar.expected == 0 && bar.arrived == static_cast<uint32_t>(b.live)) {
      bar.arrived = 0;
      bar.generation += 1;
    }
  }
  BarrierState& cluster = b.cluster[0]->cluster_barrier;
  if (cluster.arrived != 0 && cluster.arrived == cluster_live(b)) {
    cluster.arrived = 0;
    cluster.generation += 1;
  }
}

void fiber_main() {
  Launch& l = *g_launch;
  Fiber& f = *t_current;
  try {
    (*l.body)();
  } catch (const EmulationFault& e) {
    if (!l.failed) l.failed = true, l.failure = e.message;
  } catch (const std::exception& e) {
    if (!l.failed) l.failed = true, l.failure = describe(f) + ": " + e.what();
  }
  f.done = true;
  f.block->live -= 1;
  release_whole_block_barriers(*f.block);
  l.progress = l.block_progress = true;
  _longjmp(t_scheduler, 1);
}

void run_fiber(Fiber& f) {
  t_current = &f;
  if (_setjmp(t_scheduler) == 0) {
    if (f.started) _longjmp(f.context, 1);
    f.started = true;
    ucontext_t entry;
    getcontext(&entry);
    entry.uc_stack.ss_sp = f.stack;
    entry.uc_stack.ss_size = kStackBytes;
    entry.uc_link = nullptr;
    makecontext(&entry, fiber_main, 0);
    setcontext(&entry);
  }
  t_current = nullptr;
}

// Runs block b's fibers round by round while they make progress among themselves (a round that
// only polled flags, with no flag written, waits for someone else: the turn passes on).
void run_block(Launch& l, Block& b) {
  do {
    l.block_progress = l.block_memory_progress = l.block_polled = false;
    for (auto& f : b.fibers) {
      if (f->done || (f->wake_generation != nullptr && *f->wake_generation == f->asleep_at)) continue;
      run_fiber(*f);
      if (l.failed) return;
    }
  } while (l.block_progress && b.live > 0 && (l.block_memory_progress || !l.block_polled));
}

// One OS thread per resident block slot; run(b) runs b on it and returns when b yields the turn.
class BlockThread {
 public:
  BlockThread() : thread_([this] { serve(); }) { thread_.detach(); }
  void run(Block& b) {
    std::unique_lock<std::mutex> lock(mutex_);
    block_ = &b;
    wake_.notify_one();
    wake_.wait(lock, [this] { return block_ == nullptr; });
  }

 private:
  void serve() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      wake_.wait(lock, [this] { return block_ != nullptr; });
      try {
        run_block(*g_launch, *block_);
      } catch (const EmulationFault& e) {
        if (!g_launch->failed) g_launch->failed = true, g_launch->failure = e.message;
      }
      block_ = nullptr;
      wake_.notify_one();
    }
  }
  std::mutex mutex_;
  std::condition_variable wake_;
  Block* block_ = nullptr;
  std::thread thread_;
};

// The block threads; a forked child (gloo ranks) starts a fresh set (the parent's did not fork).
std::vector<BlockThread*>* g_block_threads = nullptr;
BlockThread& block_thread(size_t slot) {
  static const bool registered = [] {
    return pthread_atfork(nullptr, nullptr, [] { g_block_threads = nullptr; }) == 0;
  }();
  (void)registered;
  if (g_block_threads == nullptr) g_block_threads = new std::vector<BlockThread*>();
  while (g_block_threads->size() <= slot) g_block_threads->push_back(new BlockThread());
  return *(*g_block_threads)[slot];
}

std::unique_ptr<Block> make_block(Launch& l, int64_t linear, size_t dynamic_smem, size_t stack_base) {
  auto b = std::make_unique<Block>();
  b->index = uint3{static_cast<unsigned>(linear % l.grid.x), static_cast<unsigned>(linear / l.grid.x % l.grid.y),
                   static_cast<unsigned>(linear / (int64_t{l.grid.x} * l.grid.y))};
  b->threads = static_cast<int>(l.block.x * l.block.y * l.block.z);
  b->live = b->threads;
  b->warps.resize((b->threads + kWarpSize - 1) / kWarpSize);
  b->warpgroups.resize((b->threads + kWarpgroupThreads - 1) / kWarpgroupThreads);
  b->dynamic_bytes.assign(dynamic_smem, kPoison);
  b->dynamic = SharedView{b->dynamic_bytes.data(), kDynamicWindowBase, static_cast<uint32_t>(dynamic_smem)};
  for (int t = 0; t < b->threads; ++t) {
    auto f = std::make_unique<Fiber>();
    f->tid = t;
    f->thread = uint3{t % l.block.x, t / l.block.x % l.block.y, t / (l.block.x * l.block.y)};
    f->block = b.get();
    f->stack = g_stacks.get(stack_base + t);
    b->fibers.push_back(std::move(f));
  }
  return b;
}

std::string describe_wait(const Fiber& f) {
  const uint64_t a = f.wait_args[0];
  switch (f.wait) {
    case Fiber::Wait::kBarrier: return "barrier " + std::to_string(a);
    case Fiber::Wait::kWarpCollective: return "warp collective";
    case Fiber::Wait::kWarpgroup: return "warpgroup instruction (wgmma/setmaxnreg)";
    case Fiber::Wait::kMbarrier:
      return describe_mbarrier_wait(*f.block, static_cast<uint32_t>(a), static_cast<uint32_t>(f.wait_args[1]));
    case Fiber::Wait::kFlag: return "flag 0x" + SharedView::hex(a) + " (ld.acquire.gpu)";
    case Fiber::Wait::kSysFlag: return "flag 0x" + SharedView::hex(a) + " (ld.acquire.sys)";
    case Fiber::Wait::kBulkGroup: return "cp.async.bulk.wait_group " + std::to_string(a);
    case Fiber::Wait::kCluster: return "barrier.cluster (cluster of " + std::to_string(f.block->cluster.size()) + ")";
    default: return "nothing (runnable)";
  }
}

// One line per warp and wait site: which lanes wait where, on what.
std::string deadlock_report(const Launch& l) {
  std::ostringstream out;
  out << "deadlock: no thread of the launch can make progress";
  int lines = 0;
  for (const auto& b : l.blocks) {
    for (size_t w = 0; w < b->warps.size(); ++w) {
      std::map<std::string, uint32_t> lanes_at;
      for (int lane = 0; lane < kWarpSize; ++lane) {
        const size_t t = w * kWarpSize + lane;
        if (t >= b->fibers.size() || b->fibers[t]->done) continue;
        const Fiber& f = *b->fibers[t];
        lanes_at[where(f.site) + " waiting on " + describe_wait(f)] |= 1u << lane;
      }
      for (const auto& [what, mask] : lanes_at) {
        if (++lines > 48) {
          out << "\n  ...";
          return out.str();
        }
        char lanes[16];
        std::snprintf(lanes, sizeof(lanes), "%08x", mask);
        out << "\n  block (" << b->index.x << "," << b->index.y << "," << b->index.z << ") warp " << w
            << " lanes " << lanes << ": " << what;
      }
    }
  }
  return out.str();
}

bool any_external_wait(const Launch& l) {  // a poll another process may satisfy
  for (const auto& b : l.blocks)
    for (const auto& f : b->fibers)
      if (!f->done && f->external_wait) return true;
  return false;
}

// Gives the resident blocks turns until they finish, fail or deadlock; the TMA works between turns.
void run_wave(Launch& l) {
  int backoff_us = 0;  // while only other processes can move this launch on, poll ever more slowly
  while (true) {
    bool live = false;
    l.progress = l.memory_progress = false;
    for (size_t i = 0; i < l.blocks.size(); ++i) {
      if (l.blocks[i]->live == 0) continue;
      live = true;
      block_thread(i).run(*l.blocks[i]);
      if (l.failed) return;
    }
    if (!live) return;
    try {
      run_async_units();
    } catch (const EmulationFault& e) {
      l.failed = true, l.failure = e.message;
      return;
    }
    if (any_external_wait(l)) {  // another process may still write what these threads poll
      backoff_us = l.memory_progress ? 0 : std::min(2 * backoff_us + 10, 1000);
      std::this_thread::sleep_for(std::chrono::microseconds(backoff_us));
      continue;
    }
    if (l.progress) continue;
    l.failed = true;
    l.failure = deadlock_report(l);
    return;
  }
}

std::map<const void*, uint32_t>& smem_limits() {
  static std::map<const void*, uint32_t> limits;
  return limits;
}

thread_local std::string g_last_error;

}  // namespace

Fiber& current() {
  if (t_current == nullptr) throw std::logic_error("device code outside a launch");
  return *t_current;
}

void yield(bool progress) {
  if (progress) g_launch->progress = g_launch->block_progress = true;
  Fiber& f = *t_current;
  if (_setjmp(f.context) == 0) _longjmp(t_scheduler, 1);
}

void note_wait(Site site, Fiber::Wait what, uint64_t arg0, uint64_t arg1) {
  Fiber& f = current();
  f.site = site;
  f.wait = what;
  f.wait_args[0] = arg0;
  f.wait_args[1] = arg1;
}

void wait_generation(const uint64_t& generation, Site site, Fiber::Wait what, uint64_t arg0) {
  Fiber& f = current();
  f.wake_generation = &generation;
  f.asleep_at = generation;
  note_wait(site, what, arg0);
  while (generation == f.asleep_at) yield(false);
  f.wake_generation = nullptr;
  f.wait = Fiber::Wait::kNone;
}

void note_progress() {
  g_launch->progress = g_launch->block_progress = true;
  g_launch->memory_progress = g_launch->block_memory_progress = true;
}

void note_poll() { g_launch->block_polled = true; }

std::string describe(const Fiber& f) {
  std::ostringstream out;
  out << "block (" << f.block->index.x << "," << f.block->index.y << "," << f.block->index.z << ") thread "
      << f.tid << " (warp " << f.tid / kWarpSize << ", lane " << f.tid % kWarpSize << ")";
  return out.str();
}

void fault(const std::string& message, Site site) {
  std::string text = message;
  if (t_current != nullptr) text = describe(*t_current) + ": " + text;
  if (site.file != nullptr) text += " (at " + where(site) + ")";
  throw EmulationFault{text};
}

void record_fault(const char* message) {
  if (g_launch->recorded_fault.empty()) g_launch->recorded_fault = message;
}

void trap_on_recorded_fault(Site site) {
  if (!g_launch->recorded_fault.empty()) fault(g_launch->recorded_fault, site);
}

const uint3& thread_idx() { return current().thread; }
const uint3& block_idx() { return current().block->index; }
const dim3& block_dim() { return g_launch->block; }
const dim3& grid_dim() { return g_launch->grid; }

const std::string& last_launch_error() { return g_last_error; }

void set_max_dynamic_shared_memory(const void* kernel, uint32_t bytes) { smem_limits()[kernel] = bytes; }

cudaError_t launch(const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem, bool cooperative, int cluster,
                   std::function<void()> body) {
  const std::lock_guard<std::mutex> guard(g_launch_mutex);
  const int64_t blocks = int64_t{grid.x} * grid.y * grid.z;
  const int64_t threads = int64_t{block.x} * block.y * block.z;
  if (blocks == 0 || threads == 0 || threads > 1024) return cudaErrorInvalidConfiguration;
  const auto limit = smem_limits().find(kernel);
  const uint32_t allowed = limit == smem_limits().end() ? kDefaultSharedBytes : limit->second;
  if (dynamic_smem > std::min(allowed, kMaxSharedBytes)) return cudaErrorInvalidValue;
  if (cooperative && blocks > kSmCount) return cudaErrorCooperativeLaunchTooLarge;
  if (cluster < 1 || cluster > kMaxClusterSize || grid.x % cluster != 0) return cudaErrorInvalidClusterSize;
  Launch l;
  l.body = &body;
  l.grid = grid;
  l.block = block;
  g_launch = &l;
  try {
    for (int64_t first = 0; first < blocks && !l.failed;) {
      // A wave holds whole clusters (clusters never straddle a row of the grid: grid.x % cluster == 0).
      const int64_t wave = cooperative ? blocks : std::min<int64_t>(blocks - first, kSmCount / cluster * cluster);
      l.blocks.clear();
      g_stacks.reserve(static_cast<size_t>(wave * threads));
      for (int64_t i = 0; i < wave; ++i)
        l.blocks.push_back(make_block(l, first + i, dynamic_smem, static_cast<size_t>(i * threads)));
      for (int64_t i = 0; i < wave; ++i) {
        Block& b = *l.blocks[i];
        b.cluster_rank = static_cast<int>(b.index.x % cluster);
        for (int r = 0; r < cluster; ++r) b.cluster.push_back(l.blocks[i - b.cluster_rank + r].get());
      }
      run_wave(l);
      first += wave;
    }
  } catch (const EmulationFault& e) {
    l.failed = true, l.failure = e.message;
  }
  g_launch = nullptr;
  reset_async_units();
  if (!l.failed) return cudaSuccess;
  g_last_error = "emulated kernel failed: " + l.failure;
  return l.failure.rfind("deadlock", 0) == 0 ? cudaErrorLaunchTimeout : cudaErrorLaunchFailure;
}

// --- shared memory -------------------------------------------------------------------------------

uint8_t* dynamic_shared_memory() { return current().block->dynamic_bytes.data(); }

uint32_t shared_window_address(const void* p) {
  Block& b = *current().block;
  const auto* byte = static_cast<const uint8_t*>(p);
  if (byte >= b.dynamic_bytes.data() && byte < b.dynamic_bytes.data() + b.dynamic_bytes.size())
    return kDynamicWindowBase + static_cast<uint32_t>(byte - b.dynamic_bytes.data());
  fault("__cvta_generic_to_shared of an address outside the block's dynamic shared memory (static __shared__ "
        "variables have no shared-window address in the emulator)",
        Site{nullptr, 0});
}

const SharedView& async_shared(Block& b) {
  if (b.async_bytes.empty()) {  // first async access: the proxy has seen no generic write yet
    b.async_bytes.assign(b.dynamic_bytes.size(), kPoison);
    b.async_view = SharedView{b.async_bytes.data(), kDynamicWindowBase, b.dynamic.size};
  }
  return b.async_view;
}

// --- clusters ---------------------------------------------------------------------------------------

uint32_t cluster_ctarank() { return static_cast<uint32_t>(current().block->cluster_rank); }

uint32_t cluster_map_shared(uint32_t addr, uint32_t rank, Site site) {
  const Block& b = *current().block;
  if (addr >> kClusterRankShift != 0) fault("mapa of an address that is already a shared::cluster address", site);
  if (rank >= b.cluster.size())
    fault("mapa to rank " + std::to_string(rank) + " in a cluster of " + std::to_string(b.cluster.size()), site);
  return (rank + 1) << kClusterRankShift | addr;
}

Block& cluster_block(uint32_t& addr, Site site) {
  Block& b = *current().block;
  const uint32_t tag = addr >> kClusterRankShift;
  if (tag == 0) return b;
  if (tag > b.cluster.size()) fault("shared::cluster address 0x" + SharedView::hex(addr) + " names no block of the cluster", site);
  addr &= (1u << kClusterRankShift) - 1;
  return *b.cluster[tag - 1];
}

void cluster_sync(Site site) {
  Block& b = *current().block;
  BarrierState& bar = b.cluster[0]->cluster_barrier;
  bar.arrived += 1;
  if (bar.arrived == cluster_live(b)) {
    bar.arrived = 0;
    bar.generation += 1;
    note_progress();
    return;
  }
  wait_generation(bar.generation, site, Fiber::Wait::kCluster);
}

// --- block barriers and warp collectives ------------------------------------------------------------

void barrier_sync(uint32_t id, uint32_t threads, Site site) {
  Fiber& f = current();
  Block& b = *f.block;
  if (id >= kNamedBarriers) fault("bar.sync barrier id " + std::to_string(id) + " is not in [0, 16)", site);
  if (threads % kWarpSize != 0 || threads > static_cast<uint32_t>(b.threads))
    fault("bar.sync thread count " + std::to_string(threads) + " must be a multiple of 32 within the block", site);
  BarrierState& bar = b.barriers[id];
  if (bar.arrived == 0) bar.expected = threads;  // 0: every thread that has not exited
  if (bar.expected != threads)
    fault("bar.sync " + std::to_string(id) + " with " + std::to_string(threads) + " threads while others wait for " +
              std::to_string(bar.expected),
          site);
  bar.arrived += 1;
  if (bar.arrived == (bar.expected == 0 ? static_cast<uint32_t>(b.live) : bar.expected)) {
    bar.arrived = 0;
    bar.generation += 1;
    g_launch->progress = g_launch->block_progress = true;
    return;
  }
  wait_generation(bar.generation, site, Fiber::Wait::kBarrier, id);
}

uint64_t warp_shuffle(int kind, uint32_t mask, uint64_t value, int arg, int width, Site site) {
  Fiber& f = current();
  Block& b = *f.block;
  WarpState& w = b.warps[f.tid / kWarpSize];
  const int lane = f.tid % kWarpSize;
  if ((mask >> lane & 1u) == 0) fault("warp collective called by a lane outside its mask", site);
  if (width < 1 || width > kWarpSize || (width & (width - 1)) != 0) fault("shuffle width must be a power of 2 <= 32", site);
  if (w.arrived == 0) {
    w.mask = mask, w.kind = kind, w.site = site;
  } else if (w.mask != mask || w.kind != kind) {
    fault("divergent warp collective: this lane arrives with mask " + std::to_string(mask) + " while lanes " +
              std::to_string(w.arrived) + " wait at " + where(w.site) + " with mask " + std::to_string(w.mask),
          site);
  }
  w.values[lane] = value, w.args[lane] = arg, w.widths[lane] = width;
  w.arrived |= 1u << lane;
  if (w.arrived == w.mask) {
    uint64_t ballot = 0;
    for (int i = 0; i < kWarpSize; ++i)
      if ((w.mask >> i & 1u) && w.values[i] != 0) ballot |= 1ull << i;
    for (int i = 0; i < kWarpSize; ++i) {
      if ((w.mask >> i & 1u) == 0) continue;
      const int segment = i & ~(w.widths[i] - 1), in_segment = i - segment;
      int src = i;
      switch (w.kind) {
        case kShflIdx: src = segment + (w.args[i] & (w.widths[i] - 1)); break;
        case kShflXor: src = in_segment ^ w.args[i]; src = src < w.widths[i] ? segment + src : i; break;
        case kShflUp: src = in_segment >= w.args[i] ? i - w.args[i] : i; break;
        case kShflDown: src = in_segment + w.args[i] < w.widths[i] ? i + w.args[i] : i; break;
        default: break;
      }
      if ((w.mask >> src & 1u) == 0) src = i;  // the ISA leaves a source outside the mask undefined
      w.results[i] = w.kind == kBallot ? ballot : w.values[src];
    }
    w.arrived = 0;
    w.generation += 1;
    g_launch->progress = g_launch->block_progress = true;
  } else {
    wait_generation(w.generation, site, Fiber::Wait::kWarpCollective);
  }
  return w.results[lane];
}

void warpgroup_setmaxnreg(bool increase, int registers, Site site) {
  Fiber& f = current();
  Block& b = *f.block;
  if (b.threads % kWarpgroupThreads != 0) fault("setmaxnreg in a block that is not whole warpgroups", site);
  if (registers < 24 || registers > 256 || registers % 8 != 0)
    fault("setmaxnreg count " + std::to_string(registers) + " must be a multiple of 8 in [24, 256]", site);
  WarpgroupState& wg = b.warpgroups[f.tid / kWarpgroupThreads];
  const int value = increase ? registers : -registers;
  if (wg.arrived == 0) wg.value = value, wg.site = site;
  if (wg.value != value)
    fault("setmaxnreg differs inside the warpgroup (" + std::to_string(value) + " vs " + std::to_string(wg.value) +
              " at " + where(wg.site) + ")",
          site);
  if (++wg.arrived < kWarpgroupThreads) {
    wait_generation(wg.generation, site, Fiber::Wait::kWarpgroup);
    return;
  }
  if (wg.registers != 0 && (increase ? registers < wg.registers : registers > wg.registers))
    fault("setmaxnreg." + std::string(increase ? "inc" : "dec") + " from " + std::to_string(wg.registers) + " to " +
              std::to_string(registers),
          site);
  wg.registers = registers;
  int64_t total = 0;
  bool all_set = true;
  for (const WarpgroupState& other : b.warpgroups) {
    total += int64_t{other.registers} * kWarpgroupThreads;
    all_set = all_set && other.registers != 0;
  }
  if (all_set && total > 65536)
    fault("setmaxnreg budgets need " + std::to_string(total) + " registers; an SM has 65536", site);
  wg.arrived = 0;
  wg.generation += 1;
  g_launch->progress = g_launch->block_progress = true;
}

}  // namespace dx::emu
