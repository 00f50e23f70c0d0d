// group_scale (csrc/include/deepseek_ext/quant/scale_math.cuh: the kernels' branch-free scale) against
// scale_from_amax (the numerics contract's formula) on its whole domain: every amax bit pattern with
// the sign bit clear (a lane amax is max.NaN of |x|: +0 up to Inf, and NaNs), both pow2 modes; s, r
// and by_reciprocal must agree bit for bit (NaN s: NaN in both).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "check.h"
#include "deepseek_ext/quant/scale_math.cuh"

namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Same bits, or both NaN.
bool same(float a, float b) { return bits_of(a) == bits_of(b) || (a != a && b != b); }

}  // namespace

int main() {
  constexpr uint64_t kPatterns = uint64_t{1} << 31, kChunk = uint64_t{1} << 20;
  std::atomic<uint64_t> next{0}, checked{0};
  std::mutex mu;
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      uint64_t mine = 0;
      for (uint64_t begin; (begin = next.fetch_add(kChunk)) < kPatterns;)
        for (uint64_t b = begin; b < begin + kChunk; ++b) {
          float amax;
          const uint32_t pattern = static_cast<uint32_t>(b);
          std::memcpy(&amax, &pattern, 4);
          for (bool pow2 : {false, true}) {
            const float s = dx::scale_from_amax(amax, pow2);
            const dx::GroupScale want{s, 1.0f / s, dx::reciprocal_is_exact_enough(s)};
            const dx::GroupScale got = dx::group_scale(amax, pow2);
            if (!same(got.s, want.s) || !same(got.r, want.r) || got.by_reciprocal != want.by_reciprocal) {
              std::lock_guard<std::mutex> lock(mu);
              std::printf("amax %08x pow2 %d: s %08x r %08x fast %d, want s %08x r %08x fast %d\n", pattern, pow2,
                          bits_of(got.s), bits_of(got.r), got.by_reciprocal, bits_of(want.s), bits_of(want.r),
                          want.by_reciprocal);
              CHECK(false);
            }
            ++mine;
          }
        }
      checked += mine;
    });
  for (auto& th : pool) th.join();
  std::printf("%llu (amax, pow2) pairs checked\n", static_cast<unsigned long long>(checked.load()));
  CHECK(checked.load() == 2 * kPatterns);
  return report_checks();
}
