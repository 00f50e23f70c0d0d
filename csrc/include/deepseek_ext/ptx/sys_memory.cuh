// System-scope acquire/release memory wrappers (peer GPUs and other processes see these) and
// the global nanosecond timer used for timeouts. Each DX_EMULATE branch is the host twin: host
// atomics on (possibly process-shared) memory, with polls yielding to the other fibers.
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"

namespace dx::ptx {

// Loads a flag written by another GPU or process; later reads see what its writer released.
__device__ __forceinline__ uint64_t ld_acquire_sys(const uint64_t* p DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  return emu::ld_acquire(p, true, dx_site);
#else
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
#endif
}

// Adds to a flag in (possibly peer) memory, releasing every write this thread has observed.
__device__ __forceinline__ void red_add_release_sys(uint64_t* p, uint64_t v DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  emu::red_add_release(p, v, true, dx_site);
#else
  asm volatile("red.release.sys.global.add.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
#endif
}

// Stores a flag with release semantics at system scope.
__device__ __forceinline__ void st_release_sys(uint64_t* p, uint64_t v DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  emu::st_release(p, v, dx_site);
#else
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
#endif
}

// GPU-scope acquire load / release add: the arrival counter of a grid-wide barrier.
__device__ __forceinline__ uint64_t ld_acquire_gpu(const uint64_t* p DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  return emu::ld_acquire(p, false, dx_site);
#else
  uint64_t v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
#endif
}

__device__ __forceinline__ void red_add_release_gpu(uint64_t* p, uint64_t v DX_SITE_PARAM) {
#if defined(DX_EMULATE)
  emu::red_add_release(p, v, false, dx_site);
#else
  asm volatile("red.release.gpu.global.add.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
#endif
}

// Orders all prior memory accesses of this thread before later ones, system-wide.
__device__ __forceinline__ void fence_acq_rel_sys() {
#if defined(DX_EMULATE)
  emu::fence(DX_HERE);
#else
  asm volatile("fence.acq_rel.sys;" ::: "memory");
#endif
}

// Nanoseconds of the GPU's global timer (the clock of every device-side timeout).
__device__ __forceinline__ uint64_t globaltimer_ns() {
#if defined(DX_EMULATE)
  return emu::globaltimer_ns();
#else
  uint64_t t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
#endif
}

}  // namespace dx::ptx
