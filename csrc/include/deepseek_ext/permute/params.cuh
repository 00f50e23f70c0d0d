// Geometry of the grouped-layout kernels that the host needs: the caller allocates their per-chunk
// counts (one int32 per chunk and expert) and falls back to the reference beyond the largest
// expert count they take.
#pragma once

namespace dx::permute {

constexpr int kLayoutThreads = 256;
constexpr int kLayoutWarps = kLayoutThreads / 32;
constexpr int kLayoutChunkPairs = 1024;  // (token, slot) pairs per CTA: 128 per warp, 4 per lane
constexpr int kLayoutMaxSharedBytes = 232448;  // sm_90's opt-in shared memory per CTA
// The scatter keeps one int32 counter per (warp, expert) in shared memory.
constexpr int kLayoutMaxExperts = kLayoutMaxSharedBytes / (kLayoutWarps * 4);

}  // namespace dx::permute
