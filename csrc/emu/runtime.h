// The host runtime of the emulation build: included first in every translation unit that
// compiles device code for the host (DX_EMULATE). CUDA's keywords, built-in variables and
// intrinsics become calls into the fiber scheduler (scheduler.cpp); everything else in the
// device code compiles unchanged.
#pragma once
#define DX_EMULATE 1

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

// Kernels are plain functions; every fiber of a launch calls the kernel with its own copy of the
// parameters, as every GPU thread reads them from constant memory.
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __host__
#define __host__
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __grid_constant__
#define __grid_constant__
// Static shared memory: each resident block runs on an OS thread of its own (scheduler.cpp).
#undef __shared__
#define __shared__ static thread_local

namespace dx::emu {

// Where a fiber waits (file:line of the device code) and on what, for deadlock reports.
struct Site {
  const char* file;
  int line;
  // As a default argument, the builtins take the location of the call that omits it.
  static Site here(const char* file = __builtin_FILE(), int line = __builtin_LINE()) { return Site{file, line}; }
};
#define DX_HERE ::dx::emu::Site::here()

// --- the executing fiber ------------------------------------------------------------------
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

// --- launches -----------------------------------------------------------------------------
// Runs `body` as every thread of grid x block; cooperative launches keep every block resident.
// Blocks come in clusters of `cluster` consecutive blockIdx.x, resident together.
cudaError_t launch(const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem, bool cooperative, int cluster,
                   std::function<void()> body);

// --- block and warp synchronization ---------------------------------------------------------
void barrier_sync(uint32_t id, uint32_t threads, Site site);  // threads == 0: the whole block
uint64_t warp_shuffle(int kind, uint32_t mask, uint64_t value, int arg, int width, Site site);
void warpgroup_setmaxnreg(bool increase, int registers, Site site);
enum ShuffleKind { kShflIdx = 0, kShflXor = 1, kShflUp = 2, kShflDown = 3, kBallot = 4, kSyncWarp = 5 };

// --- shared memory --------------------------------------------------------------------------
uint8_t* dynamic_shared_memory();
uint32_t shared_window_address(const void* p);

// --- thread-block clusters -----------------------------------------------------------------
uint32_t cluster_ctarank();
// mapa: the shared::cluster address of `addr` (a shared::cta address) in the block of rank `rank`.
uint32_t cluster_map_shared(uint32_t addr, uint32_t rank, Site site);
void cluster_sync(Site site);  // barrier.cluster.arrive.release + barrier.cluster.wait.acquire

// --- global memory ordering and atomics -----------------------------------------------------
uint64_t ld_acquire(const uint64_t* p, bool system, Site site);
void red_add_release(uint64_t* p, uint64_t v, bool system, Site site);
void st_release(uint64_t* p, uint64_t v, Site site);
void fence(Site site);
uint64_t atomic_add_relaxed(void* p, uint64_t v, int bytes, Site site);
uint64_t atomic_cas_relaxed(uint64_t* p, uint64_t expected, uint64_t desired, Site site);
uint64_t globaltimer_ns();
// A kernel's record of bad input (ptx/trap.cuh): the first message of the launch is kept, and the
// launch fails with it when a thread reaches trap_on_recorded_fault, as the GPU traps there.
void record_fault(const char* message);
void trap_on_recorded_fault(Site site = DX_HERE);

// --- mbarrier, TMA and wgmma (the async units) --------------------------------------------
void mbarrier_init(uint32_t bar, uint32_t count, Site site);
void mbarrier_arrive(uint32_t bar, uint32_t tx_bytes, Site site);
void mbarrier_arrive_cluster(uint32_t bar, Site site);  // bar: a shared::cluster address
bool mbarrier_try_wait_parity(uint32_t bar, uint32_t parity, Site site);
void tma_prefetch(const void* tensor_map, Site site);
void tma_load(uint32_t dst, const void* tensor_map, const int32_t* coords, int rank, uint32_t bar, Site site);
// Multicast: the box lands at `dst` and completes on `bar` in every block of the cluster in `cta_mask`.
void tma_load_multicast(uint32_t dst, const void* tensor_map, const int32_t* coords, int rank, uint32_t bar,
                        uint16_t cta_mask, Site site);
void tma_store(const void* tensor_map, const int32_t* coords, int rank, uint32_t src, Site site);
void bulk_commit_group(Site site);
void bulk_wait_group(int pending, bool read_only, Site site);
void fence_proxy_async(Site site);
void wgmma_fence(Site site);
void wgmma_commit_group(Site site);
void wgmma_wait_group(int pending, Site site);
void wgmma_mma_async_e4m3(int n, float* d, uint64_t desc_a, uint64_t desc_b, bool accumulate, Site site);

// --- fp8 conversions ------------------------------------------------------------------------
uint16_t cvt_e4m3x2(float lo, float hi);
uint32_t cvt_e4m3x2_to_f16x2(uint16_t pair);

}  // namespace dx::emu

#define threadIdx (::dx::emu::thread_idx())
#define blockIdx (::dx::emu::block_idx())
#define blockDim (::dx::emu::block_dim())
#define gridDim (::dx::emu::grid_dim())

// --- CUDA intrinsics the device code uses -------------------------------------------------------

inline void __syncthreads(dx::emu::Site site = DX_HERE) { dx::emu::barrier_sync(0, 0, site); }
inline void __syncwarp(unsigned mask = 0xffffffffu, dx::emu::Site site = DX_HERE) {
  dx::emu::warp_shuffle(dx::emu::kSyncWarp, mask, 0, 0, 32, site);
}

template <typename T>
inline uint64_t dx_emu_bits(T v) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 64 bits");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
inline T dx_emu_from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, dx::emu::Site site = DX_HERE) {
  return dx_emu_from_bits<T>(dx::emu::warp_shuffle(dx::emu::kShflIdx, mask, dx_emu_bits(v), src, width, site));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, dx::emu::Site site = DX_HERE) {
  return dx_emu_from_bits<T>(dx::emu::warp_shuffle(dx::emu::kShflXor, mask, dx_emu_bits(v), lane_mask, width, site));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, dx::emu::Site site = DX_HERE) {
  return dx_emu_from_bits<T>(dx::emu::warp_shuffle(dx::emu::kShflUp, mask, dx_emu_bits(v), static_cast<int>(delta),
                                                   width, site));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, dx::emu::Site site = DX_HERE) {
  return dx_emu_from_bits<T>(dx::emu::warp_shuffle(dx::emu::kShflDown, mask, dx_emu_bits(v),
                                                   static_cast<int>(delta), width, site));
}
inline unsigned __ballot_sync(unsigned mask, int predicate, dx::emu::Site site = DX_HERE) {
  return static_cast<unsigned>(dx::emu::warp_shuffle(dx::emu::kBallot, mask, predicate != 0, 0, 32, site));
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned selector) {
  const uint64_t bytes = (static_cast<uint64_t>(y) << 32) | x;
  unsigned out = 0;
  for (int i = 0; i < 4; ++i) out |= static_cast<unsigned>((bytes >> (8 * ((selector >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return out;
}
inline float __uint_as_float(unsigned x) { return dx_emu_from_bits<float>(x); }
inline float __int_as_float(int x) { return dx_emu_from_bits<float>(static_cast<uint32_t>(x)); }
inline int __float_as_int(float x) { return static_cast<int>(static_cast<uint32_t>(dx_emu_bits(x))); }
inline unsigned __float_as_uint(float x) { return static_cast<unsigned>(dx_emu_bits(x)); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }

template <typename T>
inline T __ldg(const T* p) { return *p; }
inline size_t __cvta_generic_to_shared(const void* p) { return dx::emu::shared_window_address(p); }

inline void __threadfence_system(dx::emu::Site site = DX_HERE) { dx::emu::fence(site); }
inline void __threadfence(dx::emu::Site site = DX_HERE) { dx::emu::fence(site); }
inline int atomicAdd(int* p, int v, dx::emu::Site site = DX_HERE) {
  return static_cast<int>(dx::emu::atomic_add_relaxed(p, static_cast<uint32_t>(v), 4, site));
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v, dx::emu::Site site = DX_HERE) {
  return dx::emu::atomic_add_relaxed(p, v, 8, site);
}
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long expected, unsigned long long desired,
                                    dx::emu::Site site = DX_HERE) {
  return dx::emu::atomic_cas_relaxed(reinterpret_cast<uint64_t*>(p), expected, desired, site);
}

// Parameters of the ptx/ wrappers that report their caller's line in deadlock reports.
#define DX_SITE_PARAM , ::dx::emu::Site dx_site = DX_HERE
#define DX_SITE_PARAM_FIRST ::dx::emu::Site dx_site = DX_HERE
#define DX_SITE_ARG , dx_site
