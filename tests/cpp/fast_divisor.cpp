// Checks fast_divide (csrc/include/deepseek_ext/quant/fast_divisor.cuh: multiply-high, add, shift)
// against n / d over its whole domain's edges: every divisor up to 2^16 and around every power of
// two up to 2^31 - 1, plus random ones, each against the dividends where the quotient steps (k*d - 1,
// k*d), the ends of [0, 2^31) and random ones; and every n < 2^22 for a few divisors. Shows the check
// can fail: a multiplier one below the theorem's does mismatch.
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "deepseek_ext/quant/fast_divisor.cuh"

namespace {

uint64_t g_checked = 0, g_failed = 0;
bool g_low_multiplier = false;  // the negative control: m - 1

void check(uint32_t n, dx::FastDivisor f) {
  ++g_checked;
  if (g_low_multiplier) f.m -= 1;
  const uint32_t got = dx::fast_divide(n, f);
  if (got != n / f.d && ++g_failed <= 10 && !g_low_multiplier)
    std::printf("mismatch: %" PRIu32 " / %" PRIu32 " = %" PRIu32 ", fast_divide gave %" PRIu32 "\n", n, f.d,
                n / f.d, got);
}

void check_divisor(uint32_t d, std::mt19937_64& rng) {
  constexpr uint32_t kEnd = 0x80000000u;  // dividends are below 2^31
  const dx::FastDivisor f = dx::make_fast_divisor(d);
  for (uint32_t n : {0u, 1u, kEnd - 2, kEnd - 1}) check(n, f);
  const uint32_t top = (kEnd - 1) / d;  // largest multiple of d in range: top * d
  for (uint64_t k : {uint64_t{1}, uint64_t{2}, uint64_t{3}, uint64_t{top} - 1, uint64_t{top}, uint64_t{top} / 2}) {
    if (k == 0 || k > top) continue;
    check(uint32_t(k * d), f);
    check(uint32_t(k * d - 1), f);
    if (k * d + 1 < kEnd) check(uint32_t(k * d + 1), f);
  }
  for (int i = 0; i < 64; ++i) {
    const uint64_t k = rng() % (uint64_t{top} + 1);
    if (k > 0) check(uint32_t(k * d - 1), f);
    check(uint32_t(k * d), f);
    check(uint32_t(rng() % kEnd), f);
  }
}

}  // namespace

int main() {
  std::mt19937_64 rng(7);
  for (uint32_t d = 1; d <= 65536; ++d) check_divisor(d, rng);
  for (int p = 16; p <= 31; ++p) {
    for (int64_t delta = -3; delta <= 3; ++delta) {
      const int64_t d = (int64_t{1} << p) + delta;
      if (d >= 1 && d < (int64_t{1} << 31)) check_divisor(uint32_t(d), rng);
    }
  }
  for (int i = 0; i < 200000; ++i) check_divisor(uint32_t(1 + rng() % 0x7fffffffu), rng);
  for (uint32_t d : {3u, 7u, 130u, 641u, 100003u, 0x7fffffffu}) {
    const dx::FastDivisor f = dx::make_fast_divisor(d);
    for (uint32_t n = 0; n < (1u << 22); ++n) check(n, f);
  }
  std::printf("%" PRIu64 " divisions checked, %" PRIu64 " mismatches\n", g_checked, g_failed);
  if (g_failed != 0) return 1;
  g_low_multiplier = true;
  for (int i = 0; i < 1000; ++i) check_divisor(uint32_t(3 + rng() % 0x7ffffffcu), rng);
  std::printf("negative control (multiplier m - 1): %" PRIu64 " mismatches\n", g_failed);
  if (g_failed == 0) return 1;
  std::printf("all passed\n");
  return 0;
}
