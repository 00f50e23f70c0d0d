// A value the optimizer must treat as unknown where it is used: what is computed from it inside a
// loop stays in the loop (one instruction per use) instead of being hoisted into registers that live
// across the whole loop, or spill. No instruction is emitted; the DX_EMULATE branch is the host twin.
#pragma once

namespace dx::ptx {

__device__ __forceinline__ int opaque(int v) {
#if defined(DX_EMULATE)
  return v;
#else
  asm volatile("" : "+r"(v));
  return v;
#endif
}

}  // namespace dx::ptx
