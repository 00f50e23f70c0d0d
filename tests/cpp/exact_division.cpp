// Checks that divide_by_group_scale (csrc/include/deepseek_ext/quant/scale_math.cuh: x * (1/s) plus
// one FMA correction) quantizes to the same e4m3 bytes as the true division x / s, on the kernels'
// domain: s = scale_from_amax(amax, pow2) and |x| <= amax (a group's amax bounds its elements;
// NaN or Inf amax make s NaN/Inf, which take the plain x * (1/s)). The reference is the numerics
// contract's e4m3_satfinite(scale_and_clamp(x, s)); the e4m3 cast is the PTX model of
// csrc/emu/fp8.cpp. Covers every bf16 x against a sweep of scales and 10^8 random fp32 pairs, and
// shows the test can fail: the uncorrected x * (1/s) does mismatch.
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cinttypes>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include "check.h"
#include "deepseek_ext/quant/scale_math.cuh"
#include "emu/fp8.h"

using dx::emu::f32_to_e4m3_satfinite_rn;

namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A group's scale as the kernels make it (r once per group), with its amax for the domain rule.
struct Scale {
  float s, r;
  bool fast;
  float amax;
  bool pow2;
};
Scale make_scale(float amax, bool pow2) {
  const dx::GroupScale g = dx::group_scale(amax, pow2);
  return {g.s, g.r, g.by_reciprocal, amax, pow2};
}
float divide_new(float x, const Scale& c) { return dx::divide_by_group_scale(x, dx::GroupScale{c.s, c.r, c.fast}); }

// |x| <= amax, NaN x included (a NaN element makes its group's amax NaN, but the rule is applied
// per pair here, so NaN x is tried against every scale).
bool in_domain(float x, float amax) { return std::isnan(x) || std::fabs(x) <= amax; }

struct Mismatch {
  float x, s, amax;
  bool pow2;
  uint8_t want, got;
};

struct Counts {
  uint64_t pairs = 0;           // in-domain pairs checked
  uint64_t fast_pairs = 0;      // of which have a normal reciprocal (the rest: NaN/Inf scales)
  uint64_t corrected_bad = 0;   // e4m3(divide_new) != reference
  uint64_t clamp_bad = 0;       // e4m3(clamp(x/s)) != e4m3(x/s)
  uint64_t naive_bad = 0;       // e4m3(x * (1/s)) != reference (expected > 0)
  uint64_t f32_diff = 0;        // fp32 quotient bits differ (e4m3 bytes may still agree)
  float f32_diff_max = 0.0f;    // largest |x/s| among those
  uint64_t f32_bad = 0;         // ... with |x/s| >= 2^-10, where the e4m3 byte can be nonzero
  uint64_t naive_f32_bad = 0;   // fp32 bits of x * (1/s) differ with |x/s| >= 2^-10
  uint64_t outside = 0, outside_bad = 0;  // bf16 sweep only: |x| > amax (not required, for information)
  std::vector<Mismatch> examples, naive_examples, outside_examples;

  void add(const Counts& o) {
    pairs += o.pairs, fast_pairs += o.fast_pairs, corrected_bad += o.corrected_bad, clamp_bad += o.clamp_bad;
    naive_bad += o.naive_bad, f32_diff += o.f32_diff, f32_diff_max = std::max(f32_diff_max, o.f32_diff_max);
    f32_bad += o.f32_bad, naive_f32_bad += o.naive_f32_bad;
    outside += o.outside, outside_bad += o.outside_bad;
    append(examples, o.examples), append(naive_examples, o.naive_examples);
    append(outside_examples, o.outside_examples);
  }
  static void append(std::vector<Mismatch>& to, const std::vector<Mismatch>& from) {
    for (const auto& m : from)
      if (to.size() < 8) to.push_back(m);
  }
};

// One in-domain pair: the reference byte against the corrected and the naive paths.
inline void check_pair(float x, const Scale& c, bool naive, Counts& n) {
  const float exact = x / c.s;
  const uint8_t want = f32_to_e4m3_satfinite_rn(dx::scale_and_clamp(x, c.s));
  const float q = divide_new(x, c);
  const uint8_t got = f32_to_e4m3_satfinite_rn(q);
  ++n.pairs;
  n.fast_pairs += c.fast;
  if (got != want) {
    if (n.examples.size() < 8) n.examples.push_back({x, c.s, c.amax, c.pow2, want, got});
    ++n.corrected_bad;
  }
  if (f32_to_e4m3_satfinite_rn(exact) != want) ++n.clamp_bad;
  // Below 2^-10 every quotient casts to a signed zero; there the residual x - q0*s may underflow
  // (|x| < ~2^-100) and the fp32 bits may differ. Above it the quotient itself must be exact.
  const bool visible = !(std::fabs(exact) < 0x1p-10f);
  if (bits_of(q) != bits_of(exact) && !(std::isnan(q) && std::isnan(exact))) {
    ++n.f32_diff;
    n.f32_diff_max = std::max(n.f32_diff_max, std::fabs(exact));
    n.f32_bad += visible;
  }
  if (naive) {
    const float nq = x * c.r;
    n.naive_f32_bad += visible && bits_of(nq) != bits_of(exact) && !(std::isnan(nq) && std::isnan(exact));
    const uint8_t nb = f32_to_e4m3_satfinite_rn(nq);
    if (nb != want) {
      if (n.naive_examples.size() < 8) n.naive_examples.push_back({x, c.s, c.amax, c.pow2, want, nb});
      ++n.naive_bad;
    }
  }
}

// Runs body(index, counts) for index in [0, total) on all hardware threads, chunks handed out in
// order; each index is independent of the thread that runs it, so the counts are deterministic.
template <typename Body>
Counts parallel(uint64_t total, uint64_t chunk, Body body) {
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::atomic<uint64_t> next{0};
  std::mutex mu;
  Counts all;
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      Counts mine;
      for (uint64_t begin; (begin = next.fetch_add(chunk)) < total;)
        for (uint64_t i = begin; i < std::min(total, begin + chunk); ++i) body(i, mine);
      std::lock_guard<std::mutex> lock(mu);
      all.add(mine);
    });
  for (auto& th : pool) th.join();
  return all;
}

// Examples are collected per thread in chunk order, so which ones print can vary; the counts do not.
void print_examples(const char* what, const std::vector<Mismatch>& v, size_t most = 8) {
  for (const auto& m : std::vector<Mismatch>(v.begin(), v.begin() + std::min(most, v.size())))
    std::printf("  %s: x=%a s=%a (amax=%a pow2=%d) x/s=%a want 0x%02x got 0x%02x\n", what, m.x, m.s, m.amax,
                m.pow2, m.x / m.s, m.want, m.got);
}

// splitmix64: a deterministic stream per index.
uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The sweep's amax values: every 8th positive finite bf16 (a bf16 group's amax is a bf16 value; 16
// per binade over the whole range, subnormals included), 1024 log-uniform fp32 values with random
// mantissas, and the edges: 0, the 1e-4 floor and its neighbours, 448 * 2^k (pow2 scales), FLT_MAX,
// denormal min, Inf and NaN.
std::vector<float> sweep_amax() {
  std::vector<float> a;
  for (uint32_t b = 0; b < 0x7F80u; b += 8) a.push_back(from_bits(b << 16));
  for (uint64_t i = 0; i < 1024; ++i) {
    const uint64_t z = mix(0x5eed0000ull + i);
    const uint32_t exponent = 1 + static_cast<uint32_t>(i * 254 / 1024);  // 1..254: every binade
    a.push_back(from_bits((exponent << 23) | static_cast<uint32_t>(z & 0x7FFFFFu)));
  }
  const float floor = dx::kAmaxFloor;
  for (float v : {0.0f, floor, std::nextafter(floor, 0.0f), std::nextafter(floor, 1.0f), 448.0f, 1.0f, 0.5f,
                  FLT_MAX, std::nextafter(FLT_MAX, 0.0f), FLT_MIN, std::numeric_limits<float>::denorm_min(),
                  std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()})
    a.push_back(v);
  for (int k = -40; k <= 100; ++k) a.push_back(std::ldexp(448.0f, k));
  return a;
}

}  // namespace

int main() {
  const auto t0 = std::chrono::steady_clock::now();
  std::printf("threads: %u\n", std::max(1u, std::thread::hardware_concurrency()));

  // Part 1: all 65,536 bf16 bit patterns against every sweep scale.
  std::vector<Scale> scales;
  for (float amax : sweep_amax())
    for (bool pow2 : {false, true}) scales.push_back(make_scale(amax, pow2));
  std::vector<float> xs(65536);
  for (uint32_t b = 0; b < 65536; ++b) xs[b] = from_bits(b << 16);
  const Counts sweep = parallel(scales.size(), 8, [&](uint64_t i, Counts& n) {
    const Scale& c = scales[i];
    for (float x : xs) {
      if (in_domain(x, c.amax)) {
        check_pair(x, c, true, n);
      } else {
        ++n.outside;
        const uint8_t want = f32_to_e4m3_satfinite_rn(dx::scale_and_clamp(x, c.s));
        const uint8_t got = f32_to_e4m3_satfinite_rn(divide_new(x, c));
        if (got != want) {
          if (n.outside_examples.size() < 8) n.outside_examples.push_back({x, c.s, c.amax, c.pow2, want, got});
          ++n.outside_bad;
        }
      }
    }
  });
  const double t1 = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("bf16 sweep: %zu scales, %" PRIu64 " pairs (%" PRIu64 " via the reciprocal), %.1f s\n", scales.size(),
              sweep.pairs, sweep.fast_pairs, t1);
  std::printf("  corrected mismatches: %" PRIu64 "\n", sweep.corrected_bad);
  std::printf("  naive x*(1/s) mismatches: %" PRIu64 "\n", sweep.naive_bad);
  std::printf("  fp32 quotients with |x/s| >= 2^-10 differing: corrected %" PRIu64 ", naive %" PRIu64 "\n",
              sweep.f32_bad, sweep.naive_f32_bad);
  std::printf("  clamp+cast vs satfinite cast mismatches: %" PRIu64 "\n", sweep.clamp_bad);
  std::printf("  fp32 quotient bits differ anywhere: %" PRIu64 ", all with |x/s| <= %a\n", sweep.f32_diff,
              sweep.f32_diff_max);
  std::printf("  outside the domain (|x| > amax, not required): %" PRIu64 " pairs, %" PRIu64 " mismatches\n",
              sweep.outside, sweep.outside_bad);
  print_examples("corrected", sweep.examples);
  print_examples("naive", sweep.naive_examples, 3);
  print_examples("outside", sweep.outside_examples, 3);
  CHECK(scales.size() >= 3000);
  CHECK(sweep.corrected_bad == 0);
  CHECK(sweep.clamp_bad == 0);
  CHECK(sweep.naive_bad > 0);  // the test can fail: without the correction the bytes differ
  CHECK(sweep.f32_bad == 0);   // stronger: the fp32 quotient is IEEE x / s wherever e4m3 can see it

  // Part 2: 10^8 random pairs; amax from random bits (Inf/NaN/subnormal included), a random pow2
  // flag, x = +-amax, |x| of random bits below amax, or |x| a random mantissa within 32 binades below
  // amax (where the quotient lands in the e4m3 range).
  constexpr uint64_t kRandom = 100'000'000;
  const Counts rnd = parallel(kRandom, 1 << 16, [&](uint64_t i, Counts& n) {
    const uint64_t z = mix(0xd1715104ull ^ (i * 0x2545f4914f6cdd1dull));
    const uint64_t w = mix(z);
    const float amax = from_bits(static_cast<uint32_t>(z) & 0x7FFFFFFFu);
    const Scale c = make_scale(amax, (z >> 32) & 1);
    const uint32_t abits = bits_of(amax);
    const uint32_t sign = static_cast<uint32_t>(z >> 33) & 1u;
    uint32_t xbits;
    switch ((z >> 34) & 7) {
      case 0: xbits = abits; break;
      case 1: xbits = static_cast<uint32_t>(w % (uint64_t{abits} + 1)); break;
      default: {
        const int32_t e = static_cast<int32_t>(abits >> 23) - static_cast<int32_t>((w >> 32) & 31);
        xbits = e <= 0 ? static_cast<uint32_t>(w & 0x7FFFFFu)
                       : (static_cast<uint32_t>(e) << 23) | static_cast<uint32_t>(w & 0x7FFFFFu);
        xbits = std::min(xbits, abits);  // |x| <= amax (NaN/Inf amax: any x up to their bits)
      }
    }
    check_pair(from_bits(xbits | (sign << 31)), c, true, n);
  });
  const double t2 = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("random: %" PRIu64 " pairs (%" PRIu64 " via the reciprocal), %.1f s\n", rnd.pairs, rnd.fast_pairs,
              t2 - t1);
  std::printf("  corrected mismatches: %" PRIu64 "\n", rnd.corrected_bad);
  std::printf("  naive x*(1/s) mismatches: %" PRIu64 "\n", rnd.naive_bad);
  std::printf("  fp32 quotients with |x/s| >= 2^-10 differing: corrected %" PRIu64 ", naive %" PRIu64 "\n",
              rnd.f32_bad, rnd.naive_f32_bad);
  std::printf("  clamp+cast vs satfinite cast mismatches: %" PRIu64 "\n", rnd.clamp_bad);
  std::printf("  fp32 quotient bits differ anywhere: %" PRIu64 ", all with |x/s| <= %a\n", rnd.f32_diff,
              rnd.f32_diff_max);
  print_examples("corrected", rnd.examples);
  CHECK(rnd.pairs >= kRandom);
  CHECK(rnd.corrected_bad == 0);
  CHECK(rnd.clamp_bad == 0);
  CHECK(rnd.naive_bad > 0);
  CHECK(rnd.f32_bad == 0);
  CHECK(rnd.naive_f32_bad > 0);

  std::printf("total pairs checked: %" PRIu64 ", %.1f s\n", sweep.pairs + rnd.pairs, t2);
  return report_checks();
}
