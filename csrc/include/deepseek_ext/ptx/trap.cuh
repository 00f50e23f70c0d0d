// Bad index values found where a kernel reads them. On the GPU the finding thread records the
// first one in a device global (inline stores: a call inside the kernel's loops would cost the
// accumulators registers) and each role ends with trap_on_index_fault(), out of line: if one was
// recorded it is printed and the kernel traps, as a device-side assert does (the launch fails, and
// the CUDA context with it). The DX_EMULATE branch is the host twin: the emulated launch fails
// with the same text at once (csrc/emu/scheduler.cpp). Host-only callers (tests/cpp) abort.
#pragma once
#include <cstdio>
#include <cstdlib>

#include "deepseek_ext/common.cuh"

#define DX_INDEX_RANGE_FORMAT "%s[%d] = %d is outside [%d, %d]"
#define DX_MIXED_BLOCK_FORMAT \
  "%s[%d] = %d, but its 128-row block starts at row %d with %d (one group per block, then -1 padding)"

namespace dx::ptx {

enum class IndexFault : int { kNone = 0, kRange = 1, kMixedBlock = 2 };

// kRange: name[at] = value, outside [a, b]; kMixedBlock: name[at] = value, in the block of row a holding b.
struct IndexFaultRecord {
  int kind;
  int claimed;
  const char* name;
  int at, value, a, b;
};

#if defined(__CUDACC__) && !defined(DX_EMULATE)
static __device__ IndexFaultRecord g_index_fault;
#endif

DX_HOST_DEVICE void record_index_fault(IndexFault kind, const char* name, int at, int value, int a, int b) {
#if defined(__CUDA_ARCH__)
  if (atomicCAS(&g_index_fault.claimed, 0, 1) != 0) return;  // the first fault is reported
  g_index_fault.name = name;
  g_index_fault.at = at;
  g_index_fault.value = value;
  g_index_fault.a = a;
  g_index_fault.b = b;
  __threadfence();  // the fields before the kind that announces them
  *static_cast<volatile int*>(&g_index_fault.kind) = static_cast<int>(kind);
#else
  char text[192];
  std::snprintf(text, sizeof(text), kind == IndexFault::kRange ? DX_INDEX_RANGE_FORMAT : DX_MIXED_BLOCK_FORMAT, name,
                at, value, a, b);
#if defined(DX_EMULATE)
  emu::trap(text);
#else
  std::fprintf(stderr, "deepseek_ext: %s\n", text);
  std::abort();
#endif
#endif
}

#if defined(__CUDACC__) && !defined(DX_EMULATE)
// Out of line: printf's arguments cost registers only here, at the end of a role.
static __device__ __noinline__ void report_index_fault(const IndexFaultRecord& f) {
  if (f.kind == static_cast<int>(IndexFault::kRange)) {
    printf("deepseek_ext: " DX_INDEX_RANGE_FORMAT "\n", f.name, f.at, f.value, f.a, f.b);
  } else {
    printf("deepseek_ext: " DX_MIXED_BLOCK_FORMAT "\n", f.name, f.at, f.value, f.a, f.b);
  }
  __trap();
}
#endif

// Called by every thread at the end of its role: traps if any thread of any block found a bad index.
__device__ __forceinline__ void trap_on_index_fault() {
#if defined(__CUDA_ARCH__)
  if (*static_cast<volatile int*>(&g_index_fault.kind) != 0) {
    __threadfence();
    report_index_fault(const_cast<const IndexFaultRecord&>(g_index_fault));
  }
#endif
}

}  // namespace dx::ptx
