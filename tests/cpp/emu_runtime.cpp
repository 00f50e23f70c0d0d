// The emulator's execution model checked with small device programs written for these tests (not
// our kernels): warp collectives and barriers as the CUDA programming guide defines them, mbarrier
// phases and transaction counts, TMA completion through the mbarrier, the async proxy, wgmma's
// fence/commit/wait rules, setmaxnreg's rules, shared-memory scoping, the release/acquire monitor,
// thread-block clusters (mapa, remote arrivals, multicast, barrier.cluster), the launchers' error
// details, and the deadlock report.
#include "emu/runtime.h"

#include <cstdio>
#include <string>
#include <vector>

#include "check.h"
#include "deepseek_ext/ptx/cluster.cuh"
#include "deepseek_ext/ptx/mbarrier.cuh"
#include "deepseek_ext/ptx/sys_memory.cuh"
#include "deepseek_ext/ptx/tma.cuh"
#include "deepseek_ext/ptx/warpgroup.cuh"
#include "deepseek_ext/ptx/wgmma.cuh"
#include "deepseek_ext/shared_memory.cuh"
#include "emu/tensor_map.h"
#include "launch/launch_kernel.h"
#include "launch/tensor_map.h"

namespace {

std::string launch_error(cudaError_t err) { return err == cudaSuccess ? "" : cudaGetErrorString(err); }
bool contains(const std::string& text, const char* what) { return text.find(what) != std::string::npos; }

// --- warp collectives -----------------------------------------------------------------------------
__global__ void shuffles(int* out) {
  const int lane = threadIdx.x % 32;
  const int v = 100 + static_cast<int>(threadIdx.x);
  int* row = out + threadIdx.x * 6;
  row[0] = __shfl_sync(0xffffffffu, v, 5);
  row[1] = __shfl_xor_sync(0xffffffffu, v, 3);
  row[2] = __shfl_up_sync(0xffffffffu, v, 2);
  row[3] = __shfl_down_sync(0xffffffffu, v, 4, 8);  // segments of 8 lanes
  row[4] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
  row[5] = __shfl_sync(0xffffffffu, v, lane + 1, 16);  // wraps inside 16-lane segments
}

void test_shuffles() {
  std::vector<int> out(64 * 6);
  CHECK(dx::launch_kernel(shuffles, 1, 64, 0, nullptr, false, out.data()) == cudaSuccess);
  unsigned ballot = 0;
  for (int l = 0; l < 32; l += 3) ballot |= 1u << l;
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32, base = 100 + t - lane;
    CHECK(out[t * 6 + 0] == base + 5);
    CHECK(out[t * 6 + 1] == base + (lane ^ 3));
    CHECK(out[t * 6 + 2] == (lane >= 2 ? 100 + t - 2 : 100 + t));
    CHECK(out[t * 6 + 3] == (lane % 8 + 4 < 8 ? 100 + t + 4 : 100 + t));
    CHECK(static_cast<unsigned>(out[t * 6 + 4]) == ballot);
    CHECK(out[t * 6 + 5] == base + (lane / 16) * 16 + (lane + 1) % 16);
  }
}

__global__ void divergent_collective(int* out) {
  if (threadIdx.x % 2 == 0) {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0);
  } else {
    __syncwarp();
  }
}

void test_divergent_collective_is_reported() {
  std::vector<int> out(32);
  const std::string err = launch_error(dx::launch_kernel(divergent_collective, 1, 32, 0, nullptr, false, out.data()));
  CHECK(contains(err, "divergent warp collective"));
}

// --- barriers and shared memory ---------------------------------------------------------------------
template <typename T>
__global__ void static_shared_is_per_block(T* out) {
  __shared__ T cell[64];
  cell[threadIdx.x] = static_cast<T>(blockIdx.x * 1000 + threadIdx.x);
  __syncthreads();
  out[blockIdx.x * 64 + threadIdx.x] = cell[63 - threadIdx.x];
}

// Each block reads its shared array back only after the next block has written its own.
template <typename T>
__global__ void static_shared_interleaved(T* out, uint64_t* written) {
  __shared__ T cell[64];
  cell[threadIdx.x] = static_cast<T>(blockIdx.x * 1000 + threadIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) {
    dx::ptx::red_add_release_gpu(written + blockIdx.x, 1);
    if (blockIdx.x + 1 < gridDim.x) {
      while (dx::ptx::ld_acquire_gpu(written + blockIdx.x + 1) == 0) {
      }
    }
  }
  __syncthreads();
  out[blockIdx.x * 64 + threadIdx.x] = cell[63 - threadIdx.x];
}

// A template kernel's static shared memory is per block, with blocks interleaved (cooperative) and
// over three waves (300 blocks).
void test_static_shared_and_barrier() {
  std::vector<int> few(8 * 64);
  std::vector<uint64_t> written(8);
  CHECK(dx::launch_kernel(static_shared_interleaved<int>, 8, 64, 0, nullptr, true, few.data(), written.data()) ==
        cudaSuccess);
  for (int b = 0; b < 8; ++b)
    for (int t = 0; t < 64; ++t) CHECK(few[b * 64 + t] == b * 1000 + 63 - t);
  constexpr int kBlocks = 300;
  std::vector<int> out(kBlocks * 64);
  CHECK(dx::launch_kernel(static_shared_is_per_block<int>, kBlocks, 64, 0, nullptr, false, out.data()) ==
        cudaSuccess);
  for (int b = 0; b < kBlocks; ++b)
    for (int t = 0; t < 64; ++t) CHECK(out[b * 64 + t] == b * 1000 + 63 - t);
}

__global__ void dynamic_shared_window(uint32_t* out) {
  uint8_t* smem = dx::dynamic_shared_memory<uint8_t>();
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  if (threadIdx.x == 1) out[4 + blockIdx.x] = smem[100];  // never written: the poison pattern
}

void test_dynamic_shared_memory() {
  uint32_t out[8] = {};
  CHECK(dx::launch_kernel(dynamic_shared_window, 2, 32, 4096, nullptr, false, out) == cudaSuccess);
  CHECK(out[0] % 16 == 0 && out[0] % 1024 != 0);  // only 16-byte alignment is guaranteed
  CHECK(out[4] == 0xff && out[5] == 0xff);
  // Above 48 KB a kernel must opt in (cudaFuncSetAttribute).
  CHECK(dx::launch_kernel(dynamic_shared_window, 1, 32, 64 * 1024, nullptr, false, out) == cudaErrorInvalidValue);
  CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(dynamic_shared_window),
                             cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024) == cudaSuccess);
  CHECK(dx::launch_kernel(dynamic_shared_window, 1, 32, 64 * 1024, nullptr, false, out) == cudaSuccess);
}

__global__ void named_barrier_short(int) {
  if (threadIdx.x < 32) dx::ptx::named_barrier_sync(1, 64);  // only one warp of the 64 arrives
}

void test_deadlock_report() {
  const cudaError_t err = dx::launch_kernel(named_barrier_short, 1, 64, 0, nullptr, false, 0);
  const std::string text = launch_error(err);
  CHECK(err == cudaErrorLaunchTimeout);
  CHECK(contains(text, "deadlock") && contains(text, "barrier 1") && contains(text, "emu_runtime.cpp:"));
  CHECK(contains(text, "warp 0 lanes ffffffff"));
}

// --- mbarrier --------------------------------------------------------------------------------------
__global__ void mbarrier_phases(int* out) {
  uint8_t* smem = dx::dynamic_shared_memory<uint8_t>();
  const uint32_t bar = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  if (threadIdx.x == 0) dx::ptx::mbarrier_init(bar, 2);
  __syncthreads();
  // Phase 0 is current: its parity is not complete, the "preceding" parity 1 is.
  if (threadIdx.x == 2) out[0] = dx::ptx::mbarrier_try_wait_parity(bar, 1) ? 1 : 0;
  __syncthreads();
  if (threadIdx.x < 2) dx::ptx::mbarrier_arrive(bar);
  dx::ptx::mbarrier_wait_parity(bar, 0);  // completes once both arrived
  if (threadIdx.x == 2) out[1] = dx::ptx::mbarrier_try_wait_parity(bar, 1) ? 1 : 0;  // phase 1 pending
  __syncthreads();
  // Phase 1: one arrival announcing 0 bytes plus one plain arrival.
  if (threadIdx.x == 0) dx::ptx::mbarrier_arrive_expect_tx(bar, 0);
  if (threadIdx.x == 1) dx::ptx::mbarrier_arrive(bar);
  dx::ptx::mbarrier_wait_parity(bar, 1);
  out[2 + threadIdx.x] = 1;
}

void test_mbarrier_phases() {
  int out[8] = {};
  CHECK(dx::launch_kernel(mbarrier_phases, 1, 4, 64, nullptr, false, out) == cudaSuccess);
  CHECK(out[0] == 1 && out[1] == 0);
  for (int t = 0; t < 4; ++t) CHECK(out[2 + t] == 1);
}

__global__ void mbarrier_uninitialized(int) {
  const uint32_t bar = static_cast<uint32_t>(__cvta_generic_to_shared(dx::dynamic_shared_memory<uint8_t>()));
  dx::ptx::mbarrier_wait_parity(bar, 0);
}

void test_mbarrier_misuse() {
  CHECK(contains(launch_error(dx::launch_kernel(mbarrier_uninitialized, 1, 32, 64, nullptr, false, 0)),
                 "before mbarrier.init"));
}

// --- TMA through an mbarrier, and the async proxy ------------------------------------------------------
// How tma_round_trip misbehaves: not at all, no fence.proxy.async, no barrier before the store,
// or a rewrite of the stored tile before cp.async.bulk.wait_group.read.
enum StoreMode { kCorrect = 0, kNoFence = 1, kNoBarrier = 2, kEarlyReuse = 3 };

__global__ void tma_round_trip(const __grid_constant__ CUtensorMap in, const __grid_constant__ CUtensorMap out,
                               uint32_t expect_bytes, int mode) {
  uint8_t* smem = dx::dynamic_shared_memory<uint8_t>();
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t tile = (base + 1023) / 1024 * 1024, bar = tile + 4096;
  if (threadIdx.x == 0) {
    dx::ptx::mbarrier_init(bar, 1);
    dx::ptx::mbarrier_arrive_expect_tx(bar, expect_bytes);
    dx::ptx::tma_load_2d(tile, &in, 0, 0, bar);
  }
  __syncthreads();
  dx::ptx::mbarrier_wait_parity(bar, 0);
  uint8_t* data = smem + (tile - base);
  for (int i = threadIdx.x; i < 32 * 32; i += blockDim.x) data[i] = static_cast<uint8_t>(data[i] + 1);
  if (mode != kNoFence) dx::ptx::fence_proxy_async_shared();
  if (mode != kNoBarrier) __syncthreads();
  if (threadIdx.x == 0) {
    dx::ptx::tma_store_3d(&out, 0, 0, 0, tile);
    dx::ptx::bulk_commit_group();
    if (mode == kEarlyReuse) data[7] = 0;
    dx::ptx::bulk_wait_group<0>();
  }
}

void encode(CUtensorMap* map, void* p, int rank) {
  const cuuint64_t dims[3] = {32, 32, 1}, strides[2] = {32, 32 * 32};
  const cuuint32_t box[3] = {32, 32, 1}, elem[3] = {1, 1, 1};
  CHECK(dx::emu::encode_tensor_map_tiled(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, rank, p, dims, strides, box, elem,
                                         CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                                         CU_TENSOR_MAP_L2_PROMOTION_NONE,
                                         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS);
}

void test_tma_and_async_proxy() {
  alignas(128) static uint8_t in[32 * 32], out[32 * 32];
  for (int i = 0; i < 32 * 32; ++i) in[i] = static_cast<uint8_t>(i * 7 + 3);
  CUtensorMap map_in, map_out;
  encode(&map_in, in, 2);
  encode(&map_out, out, 3);
  const size_t smem = 8192;
  CHECK(dx::launch_kernel(tma_round_trip, 1, 64, smem, nullptr, false, map_in, map_out, 1024u, kCorrect) ==
        cudaSuccess);
  for (int i = 0; i < 32 * 32; ++i) CHECK(out[i] == static_cast<uint8_t>(in[i] + 1));
  // Without fence.proxy.async the TMA store would not see the generic writes: reported.
  CHECK(contains(launch_error(dx::launch_kernel(tma_round_trip, 1, 64, smem, nullptr, false, map_in, map_out, 1024u,
                                                kNoFence)),
                 "written after the last fence.proxy.async"));
  // Without the barrier the store reads before the other threads wrote, who then write under it.
  CHECK(contains(launch_error(dx::launch_kernel(tma_round_trip, 1, 64, smem, nullptr, false, map_in, map_out, 1024u,
                                                kNoBarrier)),
                 "rewritten while a TMA store still read it"));
  // Rewriting the tile before wait_group.read races with the store's read: reported.
  CHECK(contains(launch_error(dx::launch_kernel(tma_round_trip, 1, 64, smem, nullptr, false, map_in, map_out, 1024u,
                                                kEarlyReuse)),
                 "rewritten while a TMA store still read it"));
  // expect_tx announcing a box that never comes: the phase never completes.
  const std::string err =
      launch_error(dx::launch_kernel(tma_round_trip, 1, 64, smem, nullptr, false, map_in, map_out, 2048u, kCorrect));
  CHECK(contains(err, "deadlock") && contains(err, "mbarrier") && contains(err, "tx-count 1024"));
}

// --- wgmma ------------------------------------------------------------------------------------------
// A[64 x 32] = 1 and B[8 x 32] = 1 (e4m3 0x38) in the no-swizzle K-major layout: D = 32 everywhere.
__global__ void wgmma_rules(float* out, int mode) {
  uint8_t* smem = dx::dynamic_shared_memory<uint8_t>();
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  for (int i = threadIdx.x; i < 72 * 32; i += blockDim.x) smem[i] = 0x38;
  dx::ptx::fence_proxy_async_shared();
  __syncthreads();
  // Core matrices 8 rows x 16 bytes: LBO (K neighbour) 128 bytes, SBO (8-row neighbour) 256 bytes.
  const auto desc = [](uint32_t addr) {
    return uint64_t{(addr & 0x3ffff) >> 4} | uint64_t{128 >> 4} << 16 | uint64_t{256 >> 4} << 32;
  };
  float d[32];
  for (float& v : d) v = 1.0f;
  if (mode != 1) dx::ptx::wgmma_fence();
  dx::emu::wgmma_mma_async_e4m3(8, d, desc(base), desc(base + 64 * 32), true, DX_HERE);
  if (mode == 2) {  // read before the wait: still in flight
    out[threadIdx.x] = d[0];
    return;
  }
  dx::ptx::wgmma_commit_group();
  dx::ptx::wgmma_wait_group<0>();
  out[threadIdx.x] = d[0] + d[1] + d[2] + d[3];
}

void test_wgmma_rules() {
  std::vector<float> out(128);
  const size_t smem = 8192;
  CHECK(dx::launch_kernel(wgmma_rules, 1, 128, smem, nullptr, false, out.data(), 0) == cudaSuccess);
  for (float v : out) CHECK(v == 4 * 33.0f);  // 4 registers of 1 + 32 each
  CHECK(contains(launch_error(dx::launch_kernel(wgmma_rules, 1, 128, smem, nullptr, false, out.data(), 1)),
                 "without a wgmma.fence"));
  CHECK(dx::launch_kernel(wgmma_rules, 1, 128, smem, nullptr, false, out.data(), 2) == cudaSuccess);
  for (float v : out) CHECK(std::isnan(v));
}

// --- setmaxnreg -------------------------------------------------------------------------------------
template <int kFirst, int kOthers>
__global__ void setmaxnreg_budget(int) {
  if (threadIdx.x < 128) {
    dx::ptx::setmaxnreg_dec<kFirst>();
  } else {
    dx::ptx::setmaxnreg_inc<kOthers>();
  }
}

void test_setmaxnreg() {
  CHECK(dx::launch_kernel(setmaxnreg_budget<40, 232>, 1, 384, 0, nullptr, false, 0) == cudaSuccess);
  CHECK(contains(launch_error(dx::launch_kernel(setmaxnreg_budget<40, 248>, 1, 384, 0, nullptr, false, 0)),
                 "65536"));
  CHECK(contains(launch_error(dx::launch_kernel(setmaxnreg_budget<36, 232>, 1, 384, 0, nullptr, false, 0)),
                 "multiple of 8"));
}

// --- release/acquire --------------------------------------------------------------------------------
__global__ void flag_handoff(uint64_t* flag, uint64_t* data, bool release) {
  if (blockIdx.x == 0) {
    *data = 42;
    if (release) {
      dx::ptx::red_add_release_gpu(flag, 1);
    } else {
      atomicAdd(reinterpret_cast<unsigned long long*>(flag), 1ull);
    }
  } else {
    while (dx::ptx::ld_acquire_gpu(flag) == 0) {
    }
    data[1] = *data;
  }
}

void test_release_acquire_monitor() {
  uint64_t flag = 0, data[2] = {};
  CHECK(dx::launch_kernel(flag_handoff, 2, 1, 0, nullptr, false, &flag, data, true) == cudaSuccess);
  CHECK(data[1] == 42);
  uint64_t flag2 = 0;
  CHECK(contains(launch_error(dx::launch_kernel(flag_handoff, 2, 1, 0, nullptr, false, &flag2, data, false)),
                 "without release semantics"));
}

// --- thread-block clusters --------------------------------------------------------------------------
// Pairs of blocks: each multicasts its half of a 32x32 tile into both blocks, then arrives on its
// peer's "done" barrier (mapa + remote arrival); out[block][i] = the whole tile as each block saw it.
enum ClusterMode { kPaired = 0, kNoRemoteArrival = 1, kMaskOutsideCluster = 2 };

__global__ void cluster_exchange(const __grid_constant__ CUtensorMap half_rows, uint8_t* out, int mode) {
  uint8_t* smem = dx::dynamic_shared_memory<uint8_t>();
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t tile = (base + 1023) / 1024 * 1024, full = tile + 2048, done = full + 8;
  const uint32_t rank = dx::ptx::cluster_ctarank();
  if (threadIdx.x == 0) {
    dx::ptx::mbarrier_init(full, 1);
    dx::ptx::mbarrier_init(done, 1);
    dx::ptx::fence_mbarrier_init();
  }
  dx::ptx::cluster_sync();  // the peer's barriers exist before anything lands there
  if (threadIdx.x == 0) {
    dx::ptx::mbarrier_arrive_expect_tx(full, 32 * 32);  // both halves
    const uint16_t mask = mode == kMaskOutsideCluster ? 0b100 : 0b11;
    dx::ptx::tma_load_2d_multicast(tile + rank * 16 * 32, &half_rows, 0, static_cast<int>(rank) * 16, full, mask);
  }
  dx::ptx::mbarrier_wait_parity(full, 0);
  uint8_t* data = smem + (tile - base);
  for (int i = threadIdx.x; i < 32 * 32; i += blockDim.x) out[blockIdx.x * 32 * 32 + i] = data[i];
  __syncthreads();
  if (threadIdx.x == 0 && mode != kNoRemoteArrival) {
    dx::ptx::mbarrier_arrive_cluster(dx::ptx::cluster_map_shared(done, rank ^ 1));
  }
  dx::ptx::mbarrier_wait_parity(done, 0);  // the peer read its tile
  dx::ptx::cluster_sync();
}

void test_clusters() {
  alignas(128) static uint8_t in[32 * 32];
  for (int i = 0; i < 32 * 32; ++i) in[i] = static_cast<uint8_t>(i * 5 + 1);
  CUtensorMap map;  // boxes of 16 rows: each block loads one half
  const cuuint64_t dims[2] = {32, 32}, strides[1] = {32};
  const cuuint32_t box[2] = {32, 16}, elem[2] = {1, 1};
  CHECK(dx::emu::encode_tensor_map_tiled(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, in, dims, strides, box, elem,
                                         CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                                         CU_TENSOR_MAP_L2_PROMOTION_NONE,
                                         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS);
  std::vector<uint8_t> out(4 * 32 * 32, 0);
  const size_t smem = 4096;
  CHECK(dx::launch_clustered_kernel(cluster_exchange, 4, 64, smem, nullptr, false, 2, map, out.data(), kPaired) ==
        cudaSuccess);
  for (int b = 0; b < 4; ++b)
    for (int i = 0; i < 32 * 32; ++i) CHECK(out[b * 32 * 32 + i] == in[i]);
  // A block that never arrives on its peer's barrier leaves the peer waiting: a deadlock report.
  const std::string err = launch_error(dx::launch_clustered_kernel(cluster_exchange, 2, 64, smem, nullptr, false, 2,
                                                                   map, out.data(), kNoRemoteArrival));
  CHECK(contains(err, "deadlock") && contains(err, "mbarrier"));
  CHECK(contains(launch_error(dx::launch_clustered_kernel(cluster_exchange, 2, 64, smem, nullptr, false, 2, map,
                                                          out.data(), kMaskOutsideCluster)),
                 "outside the cluster"));
  // Grids must hold whole clusters.
  CHECK(dx::launch_clustered_kernel(cluster_exchange, 3, 64, smem, nullptr, false, 2, map, out.data(), kPaired) ==
        cudaErrorInvalidClusterSize);
}

// --- launcher error details --------------------------------------------------------------------------
void test_tensor_map_error_detail() {
  alignas(128) static uint8_t data[64 * 64];
  CUtensorMap map;
  const uint32_t too_wide[3] = {300, 8, 1};  // boxes are at most 256 per dimension
  CHECK(dx::encode_tensor_map(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, data, {64, 64, 1}, {64, 0}, too_wide) ==
        cudaErrorInvalidValue);
  const std::string detail = dx::take_error_detail();
  CHECK(contains(detail, "cuTensorMapEncodeTiled returned CUresult 1") && contains(detail, "box [300, 8]") &&
        contains(detail, "dims [64, 64]"));
  CHECK(dx::take_error_detail().empty());  // taken once
}

}  // namespace

int main() {
  test_clusters();
  test_tensor_map_error_detail();
  test_shuffles();
  test_divergent_collective_is_reported();
  test_static_shared_and_barrier();
  test_dynamic_shared_memory();
  test_deadlock_report();
  test_mbarrier_phases();
  test_mbarrier_misuse();
  test_tma_and_async_proxy();
  test_wgmma_rules();
  test_setmaxnreg();
  test_release_acquire_monitor();
  return report_checks();
}
