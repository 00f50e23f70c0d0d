// Position in the shared-memory ring: producer and consumers walk the same sequence of
// (stage, phase) so each full/empty barrier phase pairs one fill with one drain.
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"

namespace dx::gemm {

template <int kStages>
struct RingPosition {
  int stage = 0;
  uint32_t phase = 0;  // parity of the barrier phase this pass over the ring waits for

  DX_HOST_DEVICE void advance() {
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1;
    }
  }
};

}  // namespace dx::gemm
