// Barriers with timeouts: across the blocks of one launch (a counter in local memory) and
// across ranks (arrival counters in every rank's region). A wait that passes its deadline
// records the phase and the missing party in the error word and gives up; nothing hangs.
#pragma once
#include <cstdint>

#include "deepseek_ext/ep/params.cuh"
#include "deepseek_ext/ptx/sys_memory.cuh"

namespace dx::ep {

struct Ctrl {
  uint64_t* arrivals;
  uint64_t* barrier_epoch;
  uint64_t* grid_base;
  uint64_t* grid_arrivals;
  int64_t* error;
};

__device__ __forceinline__ Ctrl ctrl_of(uint8_t* local, const RegionLayout& l) {
  return {reinterpret_cast<uint64_t*>(local + l.arrivals), reinterpret_cast<uint64_t*>(local + l.barrier_epoch),
          reinterpret_cast<uint64_t*>(local + l.grid_base), reinterpret_cast<uint64_t*>(local + l.grid_arrivals),
          reinterpret_cast<int64_t*>(local + l.error)};
}

__device__ __forceinline__ void record_error(int64_t* error, int64_t code) {
  atomicCAS(reinterpret_cast<unsigned long long*>(error), 0ull, static_cast<unsigned long long>(code));
}

__device__ __forceinline__ bool has_failed(const int64_t* error) {
  return *reinterpret_cast<const volatile int64_t*>(error) != 0;
}

// Counts the grid barriers of one launch: the k-th waits for base + k * gridDim.x arrivals.
struct GridClock {
  uint64_t base;
  uint64_t syncs = 0;
};

__device__ __forceinline__ GridClock start_grid_clock(const Ctrl& c) {
  return {*reinterpret_cast<const volatile uint64_t*>(c.grid_base)};
}

// Every thread of every block calls it; returns when all blocks arrived (or on timeout).
__device__ __forceinline__ void grid_sync(const Ctrl& c, GridClock& clock, int rank, int64_t timeout_ns) {
  clock.syncs += 1;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence_system();  // this block's writes (local and to peers) before its arrival
    ptx::red_add_release_gpu(c.grid_arrivals, 1);
    const uint64_t target = clock.base + clock.syncs * gridDim.x;
    // twice the rank-barrier timeout: blocks waiting here for block 0 outlast its own wait, so
    // the error names the rank that did not arrive rather than this grid barrier
    const uint64_t deadline = ptx::globaltimer_ns() + 2 * timeout_ns;
    while (ptx::ld_acquire_gpu(c.grid_arrivals) < target) {
      if (ptx::globaltimer_ns() > deadline) {
        record_error(c.error, encode_error(Phase::kGridSync, rank + 1));
        break;
      }
    }
  }
  __syncthreads();
}

// Block 0 records the grid barriers of this launch for the next one (after the last sync).
__device__ __forceinline__ void finish_grid_clock(const Ctrl& c, const GridClock& clock) {
  if (blockIdx.x == 0 && threadIdx.x == 0) *c.grid_base = clock.base + clock.syncs * gridDim.x;
}

// Header slot of `rank` in a region's headers area for the barrier of `epoch` (parity: a rank
// writes the next barrier's headers only after every rank left this one).
__device__ __forceinline__ int64_t* header_slot(uint8_t* region, const RegionLayout& l, uint64_t epoch, int rank,
                                                int num_ranks) {
  return reinterpret_cast<int64_t*>(region + l.headers) + ((epoch % 2) * num_ranks + rank) * kHeaderWords;
}

// After the barrier: the first rank whose header differs from ours (-1: none). Loopback peers
// (whose signal region is ours) send none.
__device__ __forceinline__ int first_diverged(const Peers& peers, const RegionLayout& l, uint8_t* local, uint64_t epoch,
                                              int rank, int num_ranks, const int64_t* header, int lane) {
  bool differs = false;
  if (lane < num_ranks && (lane == rank || peers.signal[lane] != peers.signal[rank])) {
    const int64_t* got = header_slot(local, l, epoch, lane, num_ranks);
    for (int w = 0; w < kHeaderWords; ++w) differs |= got[w] != header[w];
  }
  const unsigned ballot = __ballot_sync(0xffffffffu, differs);
  return ballot ? __ffs(ballot) - 1 : -1;
}

// Barrier across ranks: every block's writes so far (to peers included) are visible to every
// rank when any rank leaves it. Rank r adds 1 to slot r of every peer's arrivals and waits until
// its own slots sum to R per barrier (loopback peers alias our own slots: the sum still holds).
// With a header, each rank also pushes it to every peer before arriving and compares them all
// after: a difference is recorded as Phase::kDiverged before any block leaves.
__device__ __forceinline__ void rank_barrier(const Ctrl& c, const Peers& peers, const RegionLayout& l, int rank,
                                             int num_ranks, Phase phase, GridClock& clock, int64_t timeout_ns,
                                             const int64_t* header = nullptr, uint8_t* local = nullptr) {
  grid_sync(c, clock, rank, timeout_ns);
  if (blockIdx.x == 0 && threadIdx.x < 32 && !__shfl_sync(0xffffffffu, has_failed(c.error), 0)) {
    const int lane = threadIdx.x;
    const uint64_t epoch = *reinterpret_cast<const volatile uint64_t*>(c.barrier_epoch) + 1;
    __syncwarp();
    if (lane < num_ranks) {  // each arriving lane fences: what block 0 acquired is released with it
      auto* peer = reinterpret_cast<uint8_t*>(peers.signal[lane]);
      if (header != nullptr) {
        int64_t* slot = header_slot(peer, l, epoch, rank, num_ranks);
        for (int w = 0; w < kHeaderWords; ++w) slot[w] = header[w];
      }
      ptx::fence_acq_rel_sys();
      ptx::red_add_release_sys(reinterpret_cast<uint64_t*>(peer + l.arrivals) + rank, 1);
    }
    const uint64_t deadline = ptx::globaltimer_ns() + timeout_ns;
    while (true) {
      const uint64_t mine = lane < num_ranks ? ptx::ld_acquire_sys(c.arrivals + lane) : 0;
      uint64_t sum = mine;
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
      if (sum >= epoch * num_ranks) break;
      if (__shfl_sync(0xffffffffu, ptx::globaltimer_ns() > deadline, 0)) {  // warp-uniform decision
        const unsigned late = __ballot_sync(0xffffffffu, lane < num_ranks && mine < epoch);
        if (lane == 0) record_error(c.error, encode_error(phase, late ? __ffs(late) : 0));
        break;
      }
    }
    if (header != nullptr && !__shfl_sync(0xffffffffu, has_failed(c.error), 0)) {
      const int diverged = first_diverged(peers, l, local, epoch, rank, num_ranks, header, lane);
      if (lane == 0 && diverged >= 0) record_error(c.error, encode_error(Phase::kDiverged, diverged + 1));
    }
    if (lane == 0) *c.barrier_epoch = epoch;
  }
  grid_sync(c, clock, rank, timeout_ns);
}

}  // namespace dx::ep
