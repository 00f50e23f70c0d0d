// Rings: a bounded buffer per (channel, source, destination) in the destination's region, with
// two counters. The sender publishes its tail in the receiver's region after the slots it wrote
// (release); the receiver publishes its head in the sender's region after the slots it read.
// A counter word is tag << 32 | closed << 31 | count: the tag is the operation's sequence + 1,
// so a word left by an earlier operation reads as 0 and no counter is ever reset between
// operations (every operation starts after a rank barrier, when every ring is drained).
#pragma once
#include <cstdint>

#include "deepseek_ext/ep/barrier.cuh"
#include "deepseek_ext/ep/params.cuh"
#include "deepseek_ext/ptx/sys_memory.cuh"

namespace dx::ep {

enum class RingKind : int { kDispatch = 0, kCombine = 1 };
enum class RingWord : int { kTail = 0, kHead = 1 };

DX_HOST_DEVICE uint64_t ring_word(uint32_t tag, int64_t count, bool closed) {
  return (static_cast<uint64_t>(tag) << 32) | (closed ? 1ull << 31 : 0ull) | static_cast<uint32_t>(count);
}
DX_HOST_DEVICE int64_t ring_count(uint64_t word, uint32_t tag) {
  return (word >> 32) == tag ? static_cast<int64_t>(word & 0x7fffffffull) : 0;
}
DX_HOST_DEVICE bool ring_closed(uint64_t word, uint32_t tag) { return (word >> 32) == tag && (word >> 31 & 1); }

// First token of channel c of num_tokens split into C contiguous ranges.
DX_HOST_DEVICE int64_t channel_begin(int64_t num_tokens, int64_t channels, int64_t c) {
  return num_tokens * c / channels;
}

// Counter `which` of ring (c, peer) in `region` (tails: peer = the source; heads: the destination).
__device__ __forceinline__ uint64_t* ring_counter(uint8_t* region, const RegionLayout& l, RingKind kind,
                                                  RingWord which, int c, int peer, int num_ranks) {
  const int64_t index = ((static_cast<int64_t>(kind) * 2 + static_cast<int>(which)) * l.channels + c) * num_ranks + peer;
  return reinterpret_cast<uint64_t*>(region + l.ring_words) + index;
}

// Slots of ring (c, src) in the receiver's `region`.
__device__ __forceinline__ uint8_t* ring_slots(uint8_t* region, const RegionLayout& l, RingKind kind, int c, int src,
                                               int num_ranks) {
  return region + l.rings + ((static_cast<int64_t>(kind) * l.channels + c) * num_ranks + src) * l.ring_bytes;
}

// One end of a ring, held by a whole warp.
struct RingEnd {
  uint64_t* publish;     // the counter this end writes (sender: tail there; receiver: head there)
  const uint64_t* poll;  // the counter the other end writes (here)
  uint8_t* slots;
  int64_t slot_bytes, num_slots;
  uint32_t tag;
  int64_t done = 0;  // slots written (sender) or read (receiver) in this operation
  int64_t seen = 0;  // slots the other end freed (sender) or filled (receiver)
  bool closed = false;

  __device__ __forceinline__ uint8_t* slot(int64_t i) const { return slots + (i % num_slots) * slot_bytes; }

  // Makes the warp's slot writes (sender) or reads (receiver) so far visible with `done`.
  __device__ __forceinline__ void post(int lane, bool close = false) {
    __syncwarp();
    if (lane == 0) ptx::st_release_sys(publish, ring_word(tag, done, close));
  }

  // Polls until ready(); false (recording `code` unless an error came first) when the error word
  // is set or the wait outlasts timeout_ns.
  template <typename Ready>
  __device__ __forceinline__ bool wait(Ready ready, int64_t* error, int64_t code, int64_t timeout_ns, int lane) {
    if (ready()) return true;
    const uint64_t deadline = ptx::globaltimer_ns() + timeout_ns;
    while (true) {
      const uint64_t word = __shfl_sync(0xffffffffu, lane == 0 ? ptx::ld_acquire_sys(poll) : 0ull, 0);
      seen = ring_count(word, tag);
      closed = ring_closed(word, tag);
      if (ready()) return true;
      const bool failed = has_failed(error);
      if (__shfl_sync(0xffffffffu, failed || ptx::globaltimer_ns() > deadline, 0)) {
        if (lane == 0 && !failed) record_error(error, code);
        return false;
      }
    }
  }

  // Sender: waits for a free slot (publishing what it wrote first, so the receiver can free one).
  __device__ __forceinline__ bool reserve(int64_t* error, int64_t code, int64_t timeout_ns, int lane) {
    if (done - seen < num_slots) return true;
    post(lane);
    return wait([&] { return done - seen < num_slots; }, error, code, timeout_ns, lane);
  }

  // Receiver: waits for a filled slot or the close; false also when closed and drained.
  __device__ __forceinline__ bool next(int64_t* error, int64_t code, int64_t timeout_ns, int lane) {
    return wait([&] { return seen > done || closed; }, error, code, timeout_ns, lane) && seen > done;
  }
};

}  // namespace dx::ep
