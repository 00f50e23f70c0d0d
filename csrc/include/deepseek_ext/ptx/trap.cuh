// Bad index values found where a kernel reads them. The finding thread records the first one
// (inline stores into a device global: a call inside the kernel's loops would cost the
// accumulators registers) and carries on with the value read as padding or clamped, so that
// nothing is read out of bounds; each role ends with trap_on_index_fault(), where the first thread
// to see the record prints it and traps, as a device-side assert does (the launch fails, and the
// CUDA context with it). The DX_EMULATE branches are the host twin (csrc/emu/scheduler.cpp): the
// same record, and the emulated launch fails with its text at the same point. Host-only callers
// (tests/cpp) abort at once.
#pragma once
#include <cstdio>
#include <cstdlib>

#include "deepseek_ext/common.cuh"

#define DX_INDEX_RANGE_FORMAT "%s[%d] = %d is outside [%d, %d]"
#define DX_MIXED_BLOCK_FORMAT \
  "%s[%d] = %d, but its 128-row block starts at row %d with %d (one group per block, then -1 padding)"
#define DX_AFTER_PADDING_FORMAT \
  "%s[%d] = %d follows -1 padding in its 128-row block (rows %d.. hold %d: one group per block, then -1 padding)"

namespace dx::ptx {

enum class IndexFault : int { kNone = 0, kRange = 1, kMixedBlock = 2, kAfterPadding = 3 };

// kRange: name[at] = value, outside [a, b]; kMixedBlock: name[at] = value, in the block of row a
// holding b; kAfterPadding: name[at] = value after a -1 of the block of row a (holding b).
struct IndexFaultRecord {
  int kind;
  int claimed;   // a thread is writing the record
  int reported;  // a thread is printing it
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
  char text[224];
  std::snprintf(text, sizeof(text), kind == IndexFault::kRange        ? DX_INDEX_RANGE_FORMAT
                                    : kind == IndexFault::kMixedBlock ? DX_MIXED_BLOCK_FORMAT
                                                                      : DX_AFTER_PADDING_FORMAT,
                name, at, value, a, b);
#if defined(DX_EMULATE)
  emu::record_fault(text);
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
  } else if (f.kind == static_cast<int>(IndexFault::kMixedBlock)) {
    printf("deepseek_ext: " DX_MIXED_BLOCK_FORMAT "\n", f.name, f.at, f.value, f.a, f.b);
  } else {
    printf("deepseek_ext: " DX_AFTER_PADDING_FORMAT "\n", f.name, f.at, f.value, f.a, f.b);
  }
  __trap();
}
#endif

// Called by every thread at the end of its role: if any thread of any block found a bad index, one
// thread prints it and traps (the others return: a trap of theirs could end the grid mid-print).
__device__ __forceinline__ void trap_on_index_fault() {
#if defined(__CUDA_ARCH__)
  if (*static_cast<volatile int*>(&g_index_fault.kind) != 0 && atomicExch(&g_index_fault.reported, 1) == 0) {
    __threadfence();
    report_index_fault(const_cast<const IndexFaultRecord&>(g_index_fault));
  }
#elif defined(DX_EMULATE)
  emu::trap_on_recorded_fault();
#endif
}

}  // namespace dx::ptx
