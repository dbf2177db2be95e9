// Matrix-vector products for weight-only int8 and int4 linear layers on the CPU, for decode (one
// token, or a few): y[m] = x[m] W^T + bias, computed in float32; products with activations rounded
// to bytes for prefill; the same for float32 layers (their section says why); and one token's
// attention over a float32 cache (its section says why).
//
// Decode reads every weight once per token, so these kernels must stream weights at memory speed
// while spending few instructions per weight. Both take the weights repacked by engine/quantize.py
// (pack_int8_for_cpu, pack_int4_for_cpu) into blocks of rows interleaved so that each thread reads
// one sequential stream (several streams at once, one per row, read at half the speed on an EPYC),
// and prefetch it well ahead (the hardware prefetcher alone left a thread at 60 % of its share).
//
// - int8: blocks of 4 rows, 16 columns of each in turn. 8 (AVX2) or 16 (AVX-512) weights widen
//   to float32 in two instructions and accumulate in float32; each activation load serves 4 rows.
//   Or (int8x16, chosen per layer shape where faster) x rounded to int16 as for int4 below, each 16
//   weights widened once to int16 and multiplied in one 16-bit multiply-add per token.
// - int4 needs nibble unpacking and one scale per small group, which cost too much in float32:
//   blocks of 8 rows where 16 bytes hold 4 columns of all 8, each group followed by its scales and
//   4-bit zero points (20 bytes for 8 rows: 4.625 bits a weight with groups of 32, Q4_0's 4.5),
//   and x as 16-bit integers (one scale per group: |error| <= max |x in the group| / 65534, far
//   below the weights' own error). One 16-bit multiply-add then multiplies 16 weights by 16
//   activations into 8 exact int32 sums, one per row: no per-weight conversion. Or (int4x8, AVX-512
//   VNNI, chosen per layer shape where faster) x rounded to bytes per group, the nibbles multiplied
//   as they are, 64 products a token in one instruction.
//
// Each kernel is compiled three times: for AVX-512 (with VNNI, which also adds int4's products in
// the same instruction, and whose prefill products have tiles of their own), for AVX2 + FMA, and
// for the baseline of the build target (plain C++). The caller names the one to run, among those
// `isas()` says this CPU has, so a benchmark can choose; "amx" (where `amx()` says the tiles run)
// names the AVX-512 build with the int8 prefill product in AMX tiles.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace {

// GCC/Clang vector types: arithmetic on them is one SIMD instruction per register, and a type
// wider than the target's registers is split into several.
template <int W>
struct Vec {
  typedef float f32 __attribute__((vector_size(4 * W)));
  typedef int32_t i32 __attribute__((vector_size(4 * W)));
};
typedef int16_t i16x16 __attribute__((vector_size(32)));
typedef int16_t i16x8 __attribute__((vector_size(16)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef float f32x8 __attribute__((vector_size(32)));
typedef int16_t i16x32 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)  // GCC 12 and later, clang
#define HAVE_SHUFFLEVECTOR 1
#endif
#endif

template <class V>
inline V load(const void* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof v);  // an unaligned load
  return v;
}

// An unaligned store, of a copy: GCC kept an array of sums whose address memcpy took in memory.
template <class V>
inline void store(void* p, V v) {
  __builtin_memcpy(p, &v, sizeof v);
}

template <class V>
inline float sum(V v) {
  float s = 0.f;
  for (size_t i = 0; i < sizeof v / sizeof v[0]; ++i) s += v[i];
  return s;
}

// The lanes added in halves, in registers. sum() adds them one by one from memory: in the float32
// decode kernel that was most of a (row, token)'s time with few columns (4 FMAs for 256), and kept
// the accumulators on the stack.
inline float halving_sum(Vec<4>::f32 v) { return (v[0] + v[2]) + (v[1] + v[3]); }
#ifdef HAVE_SHUFFLEVECTOR
inline float halving_sum(Vec<8>::f32 v) { return halving_sum(__builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7)); }
inline float halving_sum(Vec<16>::f32 v) {
  return halving_sum(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
}
#else
template <class V>
inline float halving_sum(V v) { return sum(v); }
#endif

inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16, exponent = (h >> 10) & 31, mantissa = h & 1023;
  if (exponent == 0) return (sign ? -1.f : 1.f) * float(mantissa) * (1.f / 16777216.f);  // subnormal: m * 2^-24
  const uint32_t bits = sign | (exponent == 31 ? 0x7f800000u | mantissa << 13 : (exponent + 112) << 23 | mantissa << 13);
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  return f;
}

// What vector extensions cannot say in one instruction (GCC 12 scalarizes widening from bytes):
// int8 -> int32 lanes; 16 bytes -> 16 int16; dot_add: acc[i] += a[2i] b[2i] + a[2i+1] b[2i+1].
struct Baseline {
  static constexpr int W = 4;
  static Vec<4>::i32 widen_int8(const int8_t* p) { return Vec<4>::i32{p[0], p[1], p[2], p[3]}; }
  static i16x16 widen_bytes(const uint8_t* p) {
    i16x16 v;
    for (int i = 0; i < 16; ++i) v[i] = p[i];
    return v;
  }
  static i16x16 widen_signed_bytes(const int8_t* p) {
    i16x16 v;
    for (int i = 0; i < 16; ++i) v[i] = p[i];
    return v;
  }
  static i32x8 dot_add(i32x8 acc, i16x16 a, i16x16 b) {
    for (int i = 0; i < 8; ++i) acc[i] += a[2 * i] * b[2 * i] + a[2 * i + 1] * b[2 * i + 1];
    return acc;
  }
  static f32x8 halves(const uint8_t* p) {  // 8 float16 -> float32
    f32x8 v;
    for (int i = 0; i < 8; ++i) v[i] = half_to_float(load<uint16_t>(p + 2 * i));
    return v;
  }
  static Vec<4>::f32 floats(const uint16_t* p) { return Vec<4>::f32{half_to_float(p[0]), half_to_float(p[1]), half_to_float(p[2]), half_to_float(p[3])}; }
};

#if defined(__x86_64__)
#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

struct Avx2 {
  static constexpr int W = 8;
  AVX2 static Vec<8>::i32 widen_int8(const int8_t* p) { return (Vec<8>::i32)_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)); }
  AVX2 static i16x16 widen_bytes(const uint8_t* p) { return (i16x16)_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)p)); }
  AVX2 static i16x16 widen_signed_bytes(const int8_t* p) { return (i16x16)_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)p)); }
  AVX2 static i32x8 dot_add(i32x8 acc, i16x16 a, i16x16 b) { return acc + (i32x8)_mm256_madd_epi16((__m256i)a, (__m256i)b); }
  AVX2 static f32x8 halves(const uint8_t* p) { return (f32x8)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
  AVX2 static f32x8 floats(const uint16_t* p) { return halves((const uint8_t*)p); }
};

struct Avx512 {
  static constexpr int W = 16;
  AVX512 static Vec<16>::i32 widen_int8(const int8_t* p) { return (Vec<16>::i32)_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)); }
  AVX512 static i16x16 widen_bytes(const uint8_t* p) { return (i16x16)_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)p)); }
  AVX512 static i16x16 widen_signed_bytes(const int8_t* p) { return (i16x16)_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)p)); }
  AVX512 static i32x8 dot_add(i32x8 acc, i16x16 a, i16x16 b) { return (i32x8)_mm256_dpwssd_epi32((__m256i)acc, (__m256i)a, (__m256i)b); }
  // Two rows' 16 bytes at once, and 16 int16 twice: for int8x16_rows' 512-bit form (below).
  AVX512 static i16x32 widen_signed_bytes_x2(const int8_t* p) { return (i16x32)_mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)p)); }
  AVX512 static i16x32 twice(const int16_t* p) { return (i16x32)_mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)p)); }
  AVX512 static i32x16 dot_add_x2(i32x16 acc, i16x32 a, i16x32 b) { return (i32x16)_mm512_dpwssd_epi32((__m512i)acc, (__m512i)a, (__m512i)b); }
  AVX512 static f32x8 halves(const uint8_t* p) { return (f32x8)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
  AVX512 static Vec<16>::f32 floats(const uint16_t* p) { return (Vec<16>::f32)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
};
#endif

// How far ahead of its reads a thread asks for weights, and where to: 4 KB ahead (more than one
// thread streams during a memory latency), into L2 (prefetcht1). Into L1, each line held one of
// L1's few miss buffers (16 on Intel's recent cores) for the whole latency, so the loads and prefetches
// in flight capped a thread's stream: on the Intel Xeon, 2 KB ahead into L1 left the int4 kernel
// with bytes at 18 GB/s from memory where a sum read 28, and whole santacoder int8 / int4 steps
// took 7-14 % longer than with this. (On the AVX2 EPYC, into L1, 2 KB beat 1, 4 and 8 KB narrowly.)
constexpr int64_t PREFETCH_BYTES = 4096;
inline void prefetch_weights(const void* p) { __builtin_prefetch((const char*)p + PREFETCH_BYTES, 0, 2); }

// Calls pass(T, m0) for tokens [m0, m0 + T) over [0, M): passes of Max tokens while they fit, then
// one of the rest (T a compile-time constant, so each pass keeps its sums in registers).
template <int Max, class Pass>
inline void token_passes(int64_t M, Pass pass) {
  int64_t m = 0;
  for (; m + Max <= M; m += Max) pass(std::integral_constant<int, Max>{}, m);
  if constexpr (Max > 1)
    if (m < M) token_passes<Max - 1>(M - m, [&](auto tokens, int64_t m0) { pass(tokens, m + m0); });
}

// ---------------------------------------------------------------- int8
// Block b of 4 rows (zero rows pad the last), columns 16c..16c+15: 64 bytes, row r's at 16r.
// y[m, n] = (x[m] . w[n]) * scales[n] + bias[n].

struct Int8Args {
  const float* x;  // (M, K)
  const int8_t* w;  // (N/4, K/16, 4, 16)
  const float* scales;
  const float* bias;  // or nullptr
  float* y;           // (M, N)
  int64_t M, N, K;
};

// Rows [r0, r0 + R) of block b for tokens [m0, m0 + T). Each (token, row) sums its products in the
// same two accumulators in the same order whatever T and R are, so its result is bit for bit the
// same: a speculative verify's rows equal decode steps. With two tokens, each weight vector widened
// serves both, and rows go by halves so that the 2 x 2 x 2 sums stay in AVX2's 16 registers.
template <class Isa, int T, int R>
inline void int8_rows(const Int8Args& a, int64_t b, int64_t m0, int r0) {
  constexpr int W = Isa::W;
  using F = typename Vec<W>::f32;
  const int8_t* w = a.w + b * 4 * a.K;
  F acc[T][R][2] = {};  // two per row: an FMA's latency is longer than its issue interval
  for (int64_t k = 0; k < a.K; k += 32, w += 128) {  // the caller checks 32 divides K
    if (r0 == 0) {
      prefetch_weights(w);
      prefetch_weights(w + 64);
    }
    for (int i = 0; i < 32 / W; ++i) {
      F xi[T];
      for (int t = 0; t < T; ++t) xi[t] = load<F>(a.x + (m0 + t) * a.K + k + i * W);
      const int chunk = i * W / 16, column = i * W % 16;
      for (int r = 0; r < R; ++r) {
        const F wr = __builtin_convertvector(Isa::widen_int8(w + chunk * 64 + (r0 + r) * 16 + column), F);
        for (int t = 0; t < T; ++t) acc[t][r][i % 2] += wr * xi[t];
      }
    }
  }
  // The sums first, apart from the loop that stops at N (halving_sum); then one rounding for scale
  // and bias however the compiler vectorizes that loop for T tokens (a verify's rows equal decode steps).
  float sums[T][R];
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) sums[t][r] = halving_sum(acc[t][r][0] + acc[t][r][1]);
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R && b * 4 + r0 + r < a.N; ++r) {
      const int64_t n = b * 4 + r0 + r;
      a.y[(m0 + t) * a.N + n] = __builtin_fmaf(sums[t][r], a.scales[n], a.bias ? a.bias[n] : 0.f);
    }
}

template <class Isa>
inline void int8_blocks(const Int8Args& a, int64_t begin, int64_t end) {  // blocks [begin, end)
  for (int64_t b = begin; b < end; ++b) {  // the block stays in L1/L2 from one token to the next
    int64_t m = 0;
    for (; m + 2 <= a.M; m += 2) {
      int8_rows<Isa, 2, 2>(a, b, m, 0);
      int8_rows<Isa, 2, 2>(a, b, m, 2);
    }
    for (; m < a.M; ++m) int8_rows<Isa, 1, 4>(a, b, m, 0);
  }
}

// ---------------------------------------------------------------- float32, for decode
// The checkpoint's own (N, K) rows, not repacked (a tied LM head shares them with the embedding):
// each thread reads its rows in order, one stream. PyTorch's float32 matrix-vector product is
// MKL's, which on AMD CPUs reads weights at half the memory's speed or less (its own path for
// other vendors' CPUs). Each (token, row) sums in the same four accumulators in the same order
// for any number of tokens, so a speculative verify's rows equal decode steps bit for bit. Every
// row reads each token's x again (from L2 once x outgrows L1), so for many tokens PyTorch's matrix
// product, which blocks over tokens, is faster: FloatLinear stops using this past a verify's rows.

struct FloatArgs {
  const float* x;     // (M, K)
  const float* w;     // (N, K)
  const float* bias;  // or nullptr
  float* y;           // (M, N)
  int64_t M, N, K;
};

template <class Isa, int T>
inline void float_row(const FloatArgs& a, int64_t n, int64_t m0) {  // row n for tokens [m0, m0 + T)
  constexpr int W = Isa::W;
  using F = typename Vec<W>::f32;
  const float* w = a.w + n * a.K;
  F acc[T][4] = {};
  int64_t k = 0;
  for (; k + 4 * W <= a.K; k += 4 * W) {
    if (m0 == 0)  // the row's first pass reads it from memory; the others find it in L1
      for (int byte = 0; byte < 16 * W; byte += 64) prefetch_weights((const char*)(w + k) + byte);
    for (int i = 0; i < 4; ++i) {
      const F wi = load<F>(w + k + i * W);
      for (int t = 0; t < T; ++t) acc[t][i] += wi * load<F>(a.x + (m0 + t) * a.K + k + i * W);
    }
  }
  float sums[T];  // first, apart from the columns' tail: with its loop inside, acc lived on the stack
  for (int t = 0; t < T; ++t) sums[t] = halving_sum((acc[t][0] + acc[t][1]) + (acc[t][2] + acc[t][3]));
  for (int t = 0; t < T; ++t) {
    for (int64_t j = k; j < a.K; ++j) sums[t] += w[j] * a.x[(m0 + t) * a.K + j];
    a.y[(m0 + t) * a.N + n] = sums[t] + (a.bias ? a.bias[n] : 0.f);
  }
}

template <class Isa>
inline void float_rows_of(const FloatArgs& a, int64_t begin, int64_t end) {  // rows [begin, end)
  for (int64_t n = begin; n < end; ++n) {  // the row stays in L1 from one token to the next
    int64_t m = 0;
    for (; m + 2 <= a.M; m += 2) float_row<Isa, 2>(a, n, m);
    for (; m < a.M; ++m) float_row<Isa, 1>(a, n, m);
  }
}

// ---------------------------------------------------------------- int8 x int16, for decode
// The same blocks with x rounded to int16, one scale per token and group of 256 columns (float32's
// precision: |x error| <= max |x in the group| / 65534): each 16 weights are widened to int16 once
// for a pass over up to 5 tokens (AVX-512's 32 registers; 3 in AVX2's 16; above: to int32 and
// converted to float, every 8, per pair of tokens) and multiplied 16 at a time (vpmaddwd) into exact
// int32 sums. Integer sums do not depend on their order, and the float part (each group's sum times
// its scales) is the same per (token, row) for any tokens per call: a speculative verify's rows
// equal decode steps. (A verify's rows are bound by these multiply-adds and widenings: 4-5 tokens a
// pass instead of 2 made 5-17 rows 15-30 % cheaper on the Zen 4 EPYC, benchmarks/README.md.)

constexpr int64_t GROUP_COLUMNS = 256;  // columns per scale of rounded activations (int8 weights)

struct Int8x16Args {
  const int16_t* x;       // (M, K): x[m] / x_scales[m, g], rounded
  const float* x_scales;  // (M, groups)
  const int8_t* w;        // (N/4, K/16, 4, 16), as for int8_blocks
  const float* scales;
  const float* bias;  // or nullptr
  float* y;           // (M, N)
  int64_t M, N, K, groups;
};

template <class Isa, int T>
inline void int8x16_rows(const Int8x16Args& a, int64_t b, int64_t m0) {  // block b for tokens [m0, m0 + T)
  const int8_t* w = a.w + b * 4 * a.K;
  f32x8 totals[T][4] = {};
  for (int64_t g = 0; g < a.groups; ++g) {
    i32x8 dot[T][4] = {};  // exact: 256 columns * 127 * 32767 < 2^31
    const int64_t end = std::min(a.K, (g + 1) * GROUP_COLUMNS);
    if constexpr (Isa::W == 16) {
      // Two rows a 512-bit register: one widening per 32 weights. Intel runs the widening (a
      // shuffle) on one port only, where the 256-bit form's four per 64 bytes of weights kept
      // decode at ~70 % of the bandwidth on the Xeon. The same exact sums: lanes 0-7 are row 2p's.
      i32x16 pair[T][2] = {};
      for (int64_t k = g * GROUP_COLUMNS; k < end; k += 16, w += 64) {
        prefetch_weights(w);
        i16x32 x[T];
        for (int t = 0; t < T; ++t) x[t] = Isa::twice(a.x + (m0 + t) * a.K + k);
        for (int p = 0; p < 2; ++p) {
          const i16x32 wp = Isa::widen_signed_bytes_x2(w + 32 * p);
          for (int t = 0; t < T; ++t) pair[t][p] = Isa::dot_add_x2(pair[t][p], wp, x[t]);
        }
      }
      for (int t = 0; t < T; ++t)
        for (int p = 0; p < 2; ++p) {
          dot[t][2 * p] = __builtin_shufflevector(pair[t][p], pair[t][p], 0, 1, 2, 3, 4, 5, 6, 7);
          dot[t][2 * p + 1] = __builtin_shufflevector(pair[t][p], pair[t][p], 8, 9, 10, 11, 12, 13, 14, 15);
        }
    } else {
      for (int64_t k = g * GROUP_COLUMNS; k < end; k += 16, w += 64) {
        prefetch_weights(w);
        i16x16 x[T];
        for (int t = 0; t < T; ++t) x[t] = load<i16x16>(a.x + (m0 + t) * a.K + k);
        for (int r = 0; r < 4; ++r) {
          const i16x16 wr = Isa::widen_signed_bytes(w + 16 * r);
          for (int t = 0; t < T; ++t) dot[t][r] = Isa::dot_add(dot[t][r], wr, x[t]);
        }
      }
    }
    for (int t = 0; t < T; ++t) {
      const float x_scale = a.x_scales[(m0 + t) * a.groups + g];
      for (int r = 0; r < 4; ++r) totals[t][r] += __builtin_convertvector(dot[t][r], f32x8) * x_scale;
    }
  }
  float sums[T][4];  // as in int8_rows
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < 4; ++r) sums[t][r] = halving_sum(totals[t][r]);
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < 4 && b * 4 + r < a.N; ++r) {
      const int64_t n = b * 4 + r;
      a.y[(m0 + t) * a.N + n] = __builtin_fmaf(sums[t][r], a.scales[n], a.bias ? a.bias[n] : 0.f);
    }
}

template <class Isa>
inline void int8x16_blocks(const Int8x16Args& a, int64_t begin, int64_t end) {  // blocks [begin, end)
  for (int64_t b = begin; b < end; ++b) {
    // 5 tokens: 10 sums (two rows each), 5 x and a widened weight vector in AVX-512's 32 registers (the
    // totals, touched once a group, may wait in memory); 3 in AVX2's 16; 2 in the portable build's
    // (SSE2 on x86-64, where each 256-bit value takes two registers).
    token_passes<Isa::W == 16 ? 5 : Isa::W == 8 ? 3 : 2>(a.M, [&](auto tokens, int64_t m) { int8x16_rows<Isa, decltype(tokens)::value>(a, b, m); });
  }
}

// ---------------------------------------------------------------- int4
// Block b of 8 rows (zero rows pad the last), group g: 8 * g / 2 bytes of weights, 16 bytes per
// 4 columns (bytes 2r and 2r+1 hold row r's columns 4c, 4c+1 in their low nibbles and 4c+2, 4c+3
// in their high ones), then the 8 rows' scales (8 float16) and zero points (row r's in bits 4r to
// 4r + 3 of a little-endian uint32). With w = (q - zero) * scale (q and zero in [0, 15]), per group:
//   sum_k w[n, k] x[k] = scale[n, g] * sum_k q[n, k] x[k] + offset[n, g] * sum_k x[k],
// offset = -zero * scale. An integer zero point takes 4 bits where a float16 offset took 16 (11 %
// more bytes a weight than llama.cpp's symmetric Q4_0, now 3 %) and kept the demo model's int4
// agreement with float32 (245/256 teacher-forced tokens against 242; benchmarks/quant_quality.py).

constexpr int64_t INT4_TAIL_BYTES = 20;  // after a group's weights: 8 scales, 8 zero points
inline int64_t int4_group_bytes(int64_t group_size) { return 4 * group_size + INT4_TAIL_BYTES; }

// The 8 rows' offsets (-zero * scale) from a group's tail, and one row's.
inline f32x8 int4_offsets(const f32x8& scales, const uint8_t* tail) {
  const i32x8 zeros = ((i32x8){} + load<int32_t>(tail + 16)) >> (i32x8){0, 4, 8, 12, 16, 20, 24, 28} & 15;
  return -__builtin_convertvector(zeros, f32x8) * scales;
}
inline float int4_offset(float scale, const uint8_t* tail, int r) { return -float((load<uint32_t>(tail + 16) >> (4 * r)) & 15) * scale; }

// A decode kernel's arguments, x rounded to Q: int16 here, bytes for int4x8_blocks (below).
template <class Q>
struct Int4DecodeArgs {
  const Q* x;             // (M, K) x[m, k] / x_scales[m, g], rounded
  const float* x_scales;  // (M, K/g)
  const float* x_sums;    // (M, K/g) sums of x per group
  const uint8_t* w;       // (N/8, K/g, 4g + 20)
  const float* bias;      // (N,) or nullptr
  float* y;               // (M, N)
  int64_t M, N, K, group_size;
};
using Int4Args = Int4DecodeArgs<int16_t>;
using Int4x8Args = Int4DecodeArgs<int8_t>;

inline i16x16 broadcast_pair(const int16_t* x) {  // x[0], x[1], x[0], x[1], ...
  return (i16x16)((i32x8){} + load<int32_t>(x));
}

// Block b for tokens [m0, m0 + T): each 16 bytes of weights unpacked once serve the T tokens, and
// each token's sums take the same steps in the same order whatever T is (its integer sums are exact,
// then the same float operations), so a verify's rows equal decode steps bit for bit.
template <class Isa, int T>
inline void int4_tokens(const Int4Args& a, int64_t b, int64_t m0) {
  const int64_t groups = a.K / a.group_size;
  const i16x16 low_nibble = (i16x16){} + 15;
  const uint8_t* w = a.w + b * groups * int4_group_bytes(a.group_size);
  const int16_t* x = a.x + m0 * a.K;
  const float *x_scales = a.x_scales + m0 * groups, *x_sums = a.x_sums + m0 * groups;
  f32x8 acc[T] = {};
  for (int64_t g = 0; g < groups; ++g) {
    // Four sums a token, one per 4-column chunk, each exact (256 columns * 15 * 32767 < 2^31): with
    // one, every multiply-add waited for the last (vpdpwssd adds into its accumulator), and the
    // AVX-512 kernel ran at half the speed on a Zen 4 EPYC.
    i32x8 dots[T][4] = {};
    for (int64_t k = g * a.group_size; k < (g + 1) * a.group_size; k += 16, w += 64) {
      prefetch_weights(w);
      for (int i = 0; i < 4; ++i) {
        const i16x16 q = Isa::widen_bytes(w + 16 * i), low = q & low_nibble, high = q >> 4;
        for (int t = 0; t < T; ++t) {
          dots[t][i] = Isa::dot_add(dots[t][i], low, broadcast_pair(x + t * a.K + k + 4 * i));
          dots[t][i] = Isa::dot_add(dots[t][i], high, broadcast_pair(x + t * a.K + k + 4 * i + 2));
        }
      }
    }
    prefetch_weights(w);
    const f32x8 scales = Isa::halves(w), offsets = int4_offsets(scales, w);
    for (int t = 0; t < T; ++t) {
      const i32x8 dot = (dots[t][0] + dots[t][1]) + (dots[t][2] + dots[t][3]);
      acc[t] += __builtin_convertvector(dot, f32x8) * (scales * x_scales[t * groups + g]);
      acc[t] += offsets * x_sums[t * groups + g];
    }
    w += INT4_TAIL_BYTES;
  }
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < 8 && b * 8 + r < a.N; ++r)
      a.y[(m0 + t) * a.N + b * 8 + r] = acc[t][r] + (a.bias ? a.bias[b * 8 + r] : 0.f);
}

template <class Isa>
inline void int4_blocks(const Int4Args& a, int64_t begin, int64_t end) {  // blocks [begin, end)
  for (int64_t b = begin; b < end; ++b) {  // the block stays in L1/L2 from one pass to the next
    // 5 tokens: 20 sums, a weight vector's nibbles and x in AVX-512's 32 registers; 2 in AVX2's 16.
    token_passes<Isa::W == 16 ? 5 : 2>(a.M, [&](auto tokens, int64_t m) { int4_tokens<Isa, decltype(tokens)::value>(a, b, m); });
  }
}

// Rows of x (K a multiple of 8) to integers in [-levels, levels] with one scale per group of
// `group` columns (the last may be shorter), and each group's sum of x (if wanted): int16 for the
// decode kernels, bytes for the prefill products below.
constexpr float INT16_LEVELS = 32767.f;  // activations rounded to int16 (decode kernels)

// 8 int32 lanes (in range) to Q8's 8 narrower ones. GCC 12 scalarizes converting to bytes (40
// scalar instructions for 8 lanes: the prefill products' rounding of x took 3.4 % of an int8
// product on the AVX2 EPYC); the low byte of each lane, shuffled, is the same and takes four.
template <class Q8>
inline Q8 narrow_to(i32x8 whole) {
#if defined(HAVE_SHUFFLEVECTOR) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if constexpr (sizeof(Q8) == 8) {
    typedef int8_t bytes32 __attribute__((vector_size(32)));
    const bytes32 bytes = (bytes32)whole;
    return __builtin_shufflevector(bytes, bytes, 0, 4, 8, 12, 16, 20, 24, 28);
  }
#endif
  return __builtin_convertvector(whole, Q8);
}

template <class Q>
inline void round_activations(const float* x, int64_t rows, int64_t K, int64_t group, float levels, Q* q, float* x_scales,
                              float* x_sums) {
  typedef Q q8 __attribute__((vector_size(8 * sizeof(Q))));
  const int64_t groups = (K + group - 1) / group;
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t start = m * K + g * group, n = std::min(group, K - g * group);
      f32x8 amax = {}, sum_of_x = {};
      for (int64_t i = 0; i < n; i += 8) {
        const f32x8 v = load<f32x8>(x + start + i), magnitude = v < 0 ? -v : v;
        amax = magnitude > amax ? magnitude : amax;
        sum_of_x += v;
      }
      float largest = 0.f;
      for (int i = 0; i < 8; ++i) largest = std::max(largest, amax[i]);
      const float scale = largest > 0.f ? largest / levels : 1.f, inverse = 1.f / scale;
      for (int64_t i = 0; i < n; i += 8) {
        const f32x8 rounded = (load<f32x8>(x + start + i) * inverse + 12582912.f) - 12582912.f;  // to nearest: + 1.5 * 2^23
        const i32x8 whole = __builtin_convertvector(rounded, i32x8);
        const q8 narrow = narrow_to<q8>(whole);
        __builtin_memcpy(q + start + i, &narrow, sizeof narrow);
      }
      x_scales[m * groups + g] = scale;
      if (x_sums) x_sums[m * groups + g] = sum(sum_of_x);
    }
}

// ---------------------------------------------------------------- int8 x int8, for prefill
// Many tokens at once (prefill) are bound by arithmetic, not by reading weights. Here x is rounded
// to integers in [-63, 63], one scale per token and group of 256 columns, and AVX2's byte
// multiply-add (vpmaddubsw: unsigned bytes by signed bytes, pairs summed into int16) multiplies 32
// weights by 32 activations; a 16-bit multiply-add by ones (vpmaddwd) widens the pair sums to
// int32. It takes an unsigned operand: x goes in as x + 64 (each thread's copy of a panel), and
// the 64 * sum(w) that adds to each lane's sum, a constant of the weight block, is where the lane
// starts (the block's lanes summed once per panel). Its pair sums cannot saturate: 2 * 127 * 127 <
// 2^15; with 8-bit activations they could, which is why 7 bits (as FBGEMM's reduce_range). Per 32
// products that is 3 instructions where int16 activations took 4 and a widening of the weights
// (1.25-1.6x the speed on the AVX2 EPYC, benchmarks/README.md). The rounding
// costs precision: |x error| <= max |x in the group| / 126, like bfloat16's 2^-9 only for the
// group's largest values (benchmarks/quant_quality.py: the demo model's greedy tokens unchanged).
//
// A thread takes a run of 4-row weight blocks; for each panel of x rows small enough to stay in the
// L2 cache, each block (4K bytes, in L1) meets every 4-token tile of the panel.
// y[m, n] = sum over groups g of (q[m, g] . w[n, g]) * x_scales[m, g], times scales[n], + bias[n].

constexpr float ACTIVATION_LEVELS = 63.f, VNNI_ACTIVATION_LEVELS = 127.f;
// VNNI's 8-bit x takes one scale per 128 columns: smaller groups round closer (the demo model's int8
// logits: largest error 0.207 with 256 columns, 0.172 with 128) for 3-5 % of a whole prefill.
constexpr int64_t VNNI_GROUP_COLUMNS = 128;

struct Int8GemmArgs {
  const int8_t* q;        // (M, K): x[m] / x_scales[m, g], rounded
  const float* x_scales;  // (M, groups)
  const int8_t* w;        // (N/4, K/16, 4, 16), as for int8_blocks
  const float* scales;
  const float* bias;  // or nullptr
  float* y;           // (M, N)
  int64_t M, N, K, groups, group;  // group: columns per scale of x (the last group may be shorter)
};

// y for token m and block b's rows below N: dots (the block's 4 rows' sums) times their scales, plus the bias.
inline void store_int8_rows(const Int8GemmArgs& a, int64_t b, int64_t m, const float dots[4]) {
  for (int r = 0; r < 4 && b * 4 + r < a.N; ++r) {
    const int64_t n = b * 4 + r;
    a.y[m * a.N + n] = dots[r] * a.scales[n] + (a.bias ? a.bias[n] : 0.f);
  }
}

// sum over groups g of (q[m, g] . w[n, g]) * x_scales[m, g] for rows m of the tile and the block's
// 4 rows n: dots[m][n].
template <int MT>
inline void int8_gemm_tile_portable(const Int8GemmArgs& a, const int8_t* w, int64_t m0, float dots[][4]) {
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < 4; ++r) {
      float total = 0.f;
      for (int64_t g = 0; g < a.groups; ++g) {
        int32_t dot = 0;
        for (int64_t k = g * a.group; k < std::min(a.K, (g + 1) * a.group); ++k)
          dot += int32_t(a.q[(m0 + m) * a.K + k]) * w[k / 16 * 64 + r * 16 + k % 16];
        total += float(dot) * a.x_scales[(m0 + m) * a.groups + g];
      }
      dots[m][r] = total;
    }
}

#if defined(__x86_64__)
// Tokens m0 .. m0 + MT - 1 (rows of x, x + 64 as unsigned bytes, K apart) against a block's 4 rows:
// y for them (before the bias). starts: per group, the int32 lanes' 64 * sum(w) taken off
// (int8_lane_starts).
template <int MT>
AVX2 inline void int8_gemm_tile_avx2(const Int8GemmArgs& a, int64_t b, const uint8_t* x, const int32_t* starts, int64_t m0) {
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* w = a.w + b * 4 * a.K;
  // Per x row, the int32 sums' lanes scaled into float as each group ends (a few instructions a
  // register, where reducing each group's lanes to 4 rows took ten: the product 4-12 % faster).
  __m256 totals[MT][2];
  for (int m = 0; m < MT; ++m) totals[m][0] = totals[m][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < a.groups; ++g) {
    // Per x row: block rows 0 | 1 (one 128-bit lane each), rows 2 | 3. The start takes off, in
    // integers, exactly, what x + 64 adds (taken off the float totals instead, it would be far
    // larger than the products and leave their last bits to rounding).
    __m256i acc[MT][2];
    const __m256i start01 = _mm256_loadu_si256((const __m256i*)(starts + 16 * g)), start23 = _mm256_loadu_si256((const __m256i*)(starts + 16 * g + 8));
    for (int m = 0; m < MT; ++m) acc[m][0] = start01, acc[m][1] = start23;
    for (int64_t k = g * a.group; k < std::min(a.K, (g + 1) * a.group); k += 16, w += 64) {
      const __m256i rows01 = _mm256_loadu_si256((const __m256i*)w);
      const __m256i rows23 = _mm256_loadu_si256((const __m256i*)(w + 32));
      for (int m = 0; m < MT; ++m) {
        const __m256i xm = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(x + m * a.K + k)));
        acc[m][0] = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(xm, rows01), ones), acc[m][0]);
        acc[m][1] = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(xm, rows23), ones), acc[m][1]);
      }
    }
    for (int m = 0; m < MT; ++m) {
      const __m256 scale = _mm256_set1_ps(a.x_scales[(m0 + m) * a.groups + g]);
      totals[m][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[m][0]), scale, totals[m][0]);
      totals[m][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[m][1]), scale, totals[m][1]);
    }
  }
  const bool whole = b * 4 + 4 <= a.N;  // 4 rows to store (not the padding of the last block)
  const __m128 scales = whole ? _mm_loadu_ps(a.scales + b * 4) : _mm_setzero_ps();
  const __m128 bias = whole && a.bias ? _mm_loadu_ps(a.bias + b * 4) : _mm_setzero_ps();
  for (int m = 0; m < MT; ++m) {
    // Lane 0 of the sums of pairs: rows 0, 2, 0, 2; lane 1: rows 1, 3, 1, 3. Then rows 0-3.
    const __m256 pairs = _mm256_hadd_ps(totals[m][0], totals[m][1]);
    const __m256 quads = _mm256_hadd_ps(pairs, pairs);
    const __m128 rows = _mm_unpacklo_ps(_mm256_castps256_ps128(quads), _mm256_extractf128_ps(quads, 1));
    float* y = a.y + (m0 + m) * a.N + b * 4;
    if (whole) {
      _mm_storeu_ps(y, _mm_fmadd_ps(rows, scales, bias));
      continue;
    }
    float dots[4];
    _mm_storeu_ps(dots, rows);
    store_int8_rows(a, b, m0 + m, dots);
  }
}

// Per group of x's columns, block b's lane sums of w as the AVX2 tile's lanes hold them, times -64:
// starts[16g .. 16g + 7] for rows 0 | 1, [16g + 8 .. 16g + 15] for rows 2 | 3.
AVX2 inline void int8_lane_starts(const Int8GemmArgs& a, int64_t b, int32_t* starts) {
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1), minus64 = _mm256_set1_epi32(-64);
  const int8_t* w = a.w + b * 4 * a.K;
  for (int64_t g = 0; g < a.groups; ++g) {
    __m256i sums01 = _mm256_setzero_si256(), sums23 = _mm256_setzero_si256();
    for (int64_t k = g * a.group; k < std::min(a.K, (g + 1) * a.group); k += 16, w += 64) {
      sums01 = _mm256_add_epi32(sums01, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, _mm256_loadu_si256((const __m256i*)w)), ones16));
      sums23 = _mm256_add_epi32(sums23, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, _mm256_loadu_si256((const __m256i*)(w + 32))), ones16));
    }
    _mm256_storeu_si256((__m256i*)(starts + 16 * g), _mm256_mullo_epi32(sums01, minus64));
    _mm256_storeu_si256((__m256i*)(starts + 16 * g + 8), _mm256_mullo_epi32(sums23, minus64));
  }
}

AVX2 inline void int8_gemm_avx2_blocks(const Int8GemmArgs& a, int64_t begin, int64_t end) {  // blocks [begin, end)
  const int64_t panel = std::max<int64_t>(4, ((256 << 10) / a.K) / 4 * 4);  // rows of x in 256 KB
  std::vector<uint8_t> x(std::min(panel, a.M) * a.K);  // the panel's x + 64
  std::vector<int32_t> starts(16 * a.groups);
  for (int64_t p = 0; p < a.M; p += panel) {
    const int64_t panel_end = std::min(a.M, p + panel);
    for (int64_t i = 0; i < (panel_end - p) * a.K; ++i) x[i] = uint8_t(a.q[p * a.K + i] + 64);
    for (int64_t b = begin; b < end; ++b) {
      int8_lane_starts(a, b, starts.data());
      int64_t m = p;
      for (; m + 4 <= panel_end; m += 4) int8_gemm_tile_avx2<4>(a, b, x.data() + (m - p) * a.K, starts.data(), m);
      for (; m + 2 <= panel_end; m += 2) int8_gemm_tile_avx2<2>(a, b, x.data() + (m - p) * a.K, starts.data(), m);
      if (m < panel_end) int8_gemm_tile_avx2<1>(a, b, x.data() + (m - p) * a.K, starts.data(), m);
    }
  }
}

// With AVX-512 VNNI, one vpdpbusd multiplies 64 unsigned bytes by 64 signed bytes and adds each 4
// products into an int32 lane: where AVX2 took three instructions per 32 products, this takes one
// per 64. A 512-bit register holds 4 columns of 16 tokens (a tile; x + 128, unsigned), each
// weight row's 4 bytes come broadcast from memory inside the instruction, and lane i sums token
// i's products. (The block's 4 rows x 16 columns in one register against 16 bytes of x broadcast
// to its four lanes cost a shuffle per instruction beside the load: 1.37 cycles per vpdpbusd on
// Zen 4 against 1.0, and the product ran 1.5x slower.) The sums are int32 from the start, so x
// takes 8 bits here (VNNI_ACTIVATION_LEVELS) per 128 columns (VNNI_GROUP_COLUMNS), not 7 per 256, and the weights stay signed, as packed: x + 128
// adds 128 * sum(w) to each row's group sum, taken off at the start, exactly, in integers.
constexpr int64_t TILE_TOKENS = 16;

// Tokens [m0, m1) of q (M, K) as tiles of 16 (the last padded with zeros): tile t, columns
// 4c..4c+3 of its token i at t * 16K + 64c + 4i, plus 128 unless plus_128 is false (AMX's signed
// products); per group g, its tokens' scales at (t * groups + g) * 16 + i.
struct VnniTiles {
  const int8_t* q;
  const float* x_scales;  // (M, groups)
  int64_t K, groups;
};

AVX512 inline void vnni_tiles(const VnniTiles& a, int64_t m0, int64_t m1, uint8_t* tiles, float* tile_scales, bool plus_128 = true) {
  const int64_t count = (m1 - m0 + TILE_TOKENS - 1) / TILE_TOKENS;
  const __m512i flip = _mm512_set1_epi8(plus_128 ? -128 : 0);
  for (int64_t t = 0; t < count; ++t) {
    const int64_t tokens = std::min<int64_t>(TILE_TOKENS, m1 - m0 - t * TILE_TOKENS);
    const int8_t* q = a.q + (m0 + t * TILE_TOKENS) * a.K;
    uint8_t* out = tiles + t * TILE_TOKENS * a.K;
    const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(a.K));
    const __mmask16 present = __mmask16((1u << tokens) - 1);
    for (int64_t c = 0; c < a.K; c += 4) {  // token i's 4 bytes at q + i K + c, absent tokens 0
      const __m512i v = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), present, rows, q + c, 1);
      _mm512_storeu_si512(out + c * TILE_TOKENS, _mm512_xor_si512(v, flip));
    }
    for (int64_t g = 0; g < a.groups; ++g)
      for (int64_t i = 0; i < TILE_TOKENS; ++i) {
        const int64_t at = (m0 + t * TILE_TOKENS + i) * a.groups + g, to = (t * a.groups + g) * TILE_TOKENS + i;
        tile_scales[to] = i < tokens ? a.x_scales[at] : 0.f;
      }
  }
}

// y[m, n0 + r] = v[r][i] for tokens m = m0 + i below m_end and rows n0 + r below N (r < 4): each
// token's 4 outputs are adjacent in y, so the 4 x 16 results are transposed and stored 4 at a time.
AVX512 inline void store_token_rows(const __m512 v[4], float* y, int64_t N, int64_t n0, int64_t m0, int64_t m_end) {
  // 128-bit lane j of quad[i] holds token 4j + i's 4 rows.
  const __m512 lo01 = _mm512_unpacklo_ps(v[0], v[1]), hi01 = _mm512_unpackhi_ps(v[0], v[1]);
  const __m512 lo23 = _mm512_unpacklo_ps(v[2], v[3]), hi23 = _mm512_unpackhi_ps(v[2], v[3]);
  const __m512 quad[4] = {_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(lo01), _mm512_castps_pd(lo23))),
                          _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(lo01), _mm512_castps_pd(lo23))),
                          _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(hi01), _mm512_castps_pd(hi23))),
                          _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(hi01), _mm512_castps_pd(hi23)))};
  const __mmask8 keep = __mmask8((1u << std::min<int64_t>(4, N - n0)) - 1);
  for (int i = 0; i < TILE_TOKENS && m0 + i < m_end; ++i) {
    float* out = y + (m0 + i) * N + n0;
    switch (i / 4) {  // the lane's index must be a constant
      case 0: _mm_mask_storeu_ps(out, keep, _mm512_extractf32x4_ps(quad[i % 4], 0)); break;
      case 1: _mm_mask_storeu_ps(out, keep, _mm512_extractf32x4_ps(quad[i % 4], 1)); break;
      case 2: _mm_mask_storeu_ps(out, keep, _mm512_extractf32x4_ps(quad[i % 4], 2)); break;
      default: _mm_mask_storeu_ps(out, keep, _mm512_extractf32x4_ps(quad[i % 4], 3));
    }
  }
}

// Each row's sum of w per group, for the 4 rows of a block: sums[r * groups + g].
AVX512 inline void vnni_weight_sums(const Int8GemmArgs& a, const int8_t* w, int32_t* sums) {
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t g = 0; g < a.groups; ++g) {
    __m512i acc = _mm512_setzero_si512();  // lanes 4r..4r+3: row r
    for (int64_t k = g * a.group; k < std::min(a.K, (g + 1) * a.group); k += 16, w += 64)
      acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512((const void*)w));
    int32_t lanes[16];
    _mm512_storeu_si512(lanes, acc);
    for (int r = 0; r < 4; ++r) sums[r * a.groups + g] = lanes[4 * r] + lanes[4 * r + 1] + lanes[4 * r + 2] + lanes[4 * r + 3];
  }
}

// TT tiles of tokens against the 4 rows of one weight block (signed, as packed): y for rows
// n0..n0+3 of the tiles' tokens m0.. (those below M).
template <int TT>
AVX512 inline void int8_gemm_tile_vnni(const Int8GemmArgs& a, const int8_t* w, const int32_t* w_sums, const uint8_t* tiles,
                                        const float* tile_scales, int64_t m0, int64_t m_end, int64_t n0) {
  __m512 totals[TT][4];
  for (int t = 0; t < TT; ++t)
    for (int r = 0; r < 4; ++r) totals[t][r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < a.groups; ++g) {
    __m512i acc[TT][4];
    for (int t = 0; t < TT; ++t)
      for (int r = 0; r < 4; ++r) acc[t][r] = _mm512_set1_epi32(-128 * w_sums[r * a.groups + g]);
    for (int64_t k = g * a.group; k < std::min(a.K, (g + 1) * a.group); k += 16, w += 64)
      for (int c = 0; c < 4; ++c) {
        __m512i x[TT];
        for (int t = 0; t < TT; ++t) x[t] = _mm512_loadu_si512((const void*)(tiles + t * TILE_TOKENS * a.K + (k + 4 * c) * TILE_TOKENS));
        for (int r = 0; r < 4; ++r)
          for (int t = 0; t < TT; ++t)  // acc += x . (row r's 4 bytes, broadcast)
            acc[t][r] = _mm512_dpbusd_epi32(acc[t][r], x[t], _mm512_set1_epi32(load<int32_t>(w + 16 * r + 4 * c)));
      }
    for (int t = 0; t < TT; ++t) {
      const __m512 scale = _mm512_loadu_ps(tile_scales + (t * a.groups + g) * TILE_TOKENS);
      for (int r = 0; r < 4; ++r) totals[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t][r]), scale, totals[t][r]);
    }
  }
  for (int t = 0; t < TT; ++t) {
    __m512 v[4];
    for (int r = 0; r < 4; ++r) {
      const int64_t n = std::min(n0 + r, a.N - 1);  // rows past N (padding) are computed, not stored
      v[r] = _mm512_fmadd_ps(totals[t][r], _mm512_set1_ps(a.scales[n]), _mm512_set1_ps(a.bias ? a.bias[n] : 0.f));
    }
    store_token_rows(v, a.y, a.N, n0, m0 + t * TILE_TOKENS, m_end);
  }
}

AVX512 inline void int8_gemm_vnni_blocks(const Int8GemmArgs& a, int64_t begin, int64_t end) {  // blocks [begin, end)
  const int64_t panel = std::max<int64_t>(2 * TILE_TOKENS, ((256 << 10) / a.K) / (2 * TILE_TOKENS) * (2 * TILE_TOKENS));
  std::vector<uint8_t> tiles((std::min(panel, a.M) + TILE_TOKENS) * a.K);
  std::vector<float> tile_scales((std::min(panel, a.M) + TILE_TOKENS) * a.groups);
  std::vector<int32_t> w_sums((end - begin) * 4 * a.groups);
  for (int64_t b = begin; b < end; ++b) vnni_weight_sums(a, a.w + b * 4 * a.K, w_sums.data() + (b - begin) * 4 * a.groups);
  for (int64_t p = 0; p < a.M; p += panel) {
    const int64_t panel_end = std::min(a.M, p + panel), count = (panel_end - p + TILE_TOKENS - 1) / TILE_TOKENS;
    vnni_tiles({a.q, a.x_scales, a.K, a.groups}, p, panel_end, tiles.data(), tile_scales.data());
    for (int64_t b = begin; b < end; ++b) {
      const int8_t* w = a.w + b * 4 * a.K;
      const int32_t* sums = w_sums.data() + (b - begin) * 4 * a.groups;
      int64_t t = 0;
      for (; t + 2 <= count; t += 2)
        int8_gemm_tile_vnni<2>(a, w, sums, tiles.data() + t * TILE_TOKENS * a.K, tile_scales.data() + t * a.groups * TILE_TOKENS,
                                p + t * TILE_TOKENS, panel_end, b * 4);
      if (t < count)
        int8_gemm_tile_vnni<1>(a, w, sums, tiles.data() + t * TILE_TOKENS * a.K, tile_scales.data() + t * a.groups * TILE_TOKENS,
                                p + t * TILE_TOKENS, panel_end, b * 4);
    }
  }
}

// With AMX (Intel Xeon from Sapphire Rapids on), one tdpbssd multiplies a 16 x 64 tile of signed
// bytes by a 64 x 16 tile of signed bytes into 16 x 16 int32 sums: 16384 products, where vpdpbusd
// does 64. The tiles here: rows, 16 weight rows by 64 columns (a thread's rows rearranged from
// their 4-row blocks once per panel of tokens, each tile 64 columns of 16 rows in 1 KB); tokens, 16
// tokens' 64 columns as vnni_tiles lays them out, but signed (no x + 128, so no sum(w) to take
// off); sums, rows by tokens. Per group of 128 columns the integer sums leave the tiles and are
// scaled and added as in the VNNI product, in the same order: the same numbers, bit for bit.
#if defined(__GNUC__) && (__GNUC__ >= 11 || defined(__clang__)) && __has_include(<amxtileintrin.h>)
#define HAVE_AMX 1
#define AMX __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
constexpr int64_t AMX_ROWS = 16, AMX_STEP = 64;  // a tile's rows; columns per tdpbssd

struct TileConfig {  // ldtilecfg's 64 bytes (palette 1)
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: sums for two tiles of rows by two of tokens; 4 and 5: rows; 6 and 7: tokens (each
// tile loaded serves two tdpbssd: with one tile of rows, 1.5 loads each, the product was ~1.3x VNNI's).
AMX inline void amx_configure() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) config.rows[t] = 16, config.bytes_per_row[t] = 64;
  _tile_loadconfig(&config);
}

// Weight rows 16 * tile .. + 15 (blocks 4 * tile .. + 3; absent ones zero) as tiles: for each 64 columns,
// the 16 rows' 64 bytes one after the other (1 KB). Rows of K64 bytes side by side instead put a tile's
// 16 lines K64 bytes apart, 2 KB for most layers: in 2 of L1's 64 sets, which evict each other.
AMX inline void amx_weight_rows(const Int8GemmArgs& a, int64_t tile, int64_t K64, int8_t* rows) {
  const int64_t chunks = a.K / 16, blocks = (a.N + 3) / 4;
  if (K64 != a.K || 4 * tile + 4 > blocks) std::memset(rows, 0, AMX_ROWS * K64);
  for (int64_t bb = 0; bb < 4 && 4 * tile + bb < blocks; ++bb) {
    const int8_t* w = a.w + (4 * tile + bb) * 4 * a.K;
    int64_t c = 0;
    for (; c + 4 <= chunks; c += 4) {  // 4 chunks (4 rows' 16 columns each) to 4 rows' 64 columns: a 4 x 4 transpose of 16-byte lanes
      const __m512i c0 = _mm512_loadu_si512((const void*)(w + 64 * c)), c1 = _mm512_loadu_si512((const void*)(w + 64 * c + 64));
      const __m512i c2 = _mm512_loadu_si512((const void*)(w + 64 * c + 128)), c3 = _mm512_loadu_si512((const void*)(w + 64 * c + 192));
      const __m512i r01_0 = _mm512_shuffle_i32x4(c0, c1, 0x44), r23_0 = _mm512_shuffle_i32x4(c0, c1, 0xEE);  // rows 0 1 / 2 3 of chunks c, c + 1
      const __m512i r01_2 = _mm512_shuffle_i32x4(c2, c3, 0x44), r23_2 = _mm512_shuffle_i32x4(c2, c3, 0xEE);
      int8_t* out = rows + (c / 4) * AMX_ROWS * AMX_STEP + 4 * bb * AMX_STEP;
      _mm512_storeu_si512((void*)out, _mm512_shuffle_i32x4(r01_0, r01_2, 0x88));
      _mm512_storeu_si512((void*)(out + AMX_STEP), _mm512_shuffle_i32x4(r01_0, r01_2, 0xDD));
      _mm512_storeu_si512((void*)(out + 2 * AMX_STEP), _mm512_shuffle_i32x4(r23_0, r23_2, 0x88));
      _mm512_storeu_si512((void*)(out + 3 * AMX_STEP), _mm512_shuffle_i32x4(r23_0, r23_2, 0xDD));
    }
    for (; c < chunks; ++c) {  // chunk c: 4 rows' 16 columns, one after the other
      const __m512i v = _mm512_loadu_si512((const void*)(w + 64 * c));
      int8_t* out = rows + (c / 4) * AMX_ROWS * AMX_STEP + 4 * bb * AMX_STEP + 16 * (c % 4);
      _mm_storeu_si128((__m128i*)out, _mm512_extracti32x4_epi32(v, 0));
      _mm_storeu_si128((__m128i*)(out + AMX_STEP), _mm512_extracti32x4_epi32(v, 1));
      _mm_storeu_si128((__m128i*)(out + 2 * AMX_STEP), _mm512_extracti32x4_epi32(v, 2));
      _mm_storeu_si128((__m128i*)(out + 3 * AMX_STEP), _mm512_extracti32x4_epi32(v, 3));
    }
  }
}

// TN tiles of 16 rows (rows + i * 16 K64) against TT tiles of 16 tokens (tiles + j * 16 K): y for rows
// n0.. and tokens m0.. (those below N and m_end). Sums tile 2i + j: rows tile i by tokens tile j. The
// tile intrinsics take their tile's number as a literal (GCC pastes it into the asm), hence the ifs.
template <int TN, int TT>
AMX inline void amx_tiles(const Int8GemmArgs& a, const int8_t* rows, int64_t K64, const uint8_t* tiles, const float* tile_scales,
                          int64_t m0, int64_t m_end, int64_t n0) {
  alignas(64) float totals[TN][TT][AMX_ROWS][TILE_TOKENS] = {};
  alignas(64) int32_t sums[TN][TT][AMX_ROWS][TILE_TOKENS];
  const uint8_t* tokens1 = tiles + TILE_TOKENS * a.K;
  const int8_t* rows1 = rows + AMX_ROWS * K64;
  for (int64_t g = 0; g < a.groups; ++g) {
    _tile_zero(0);
    if (TT == 2) _tile_zero(1);
    if (TN == 2) _tile_zero(2);
    if (TN == 2 && TT == 2) _tile_zero(3);
    for (int64_t k = g * a.group; k < std::min(a.K, (g + 1) * a.group); k += AMX_STEP) {
      _tile_loadd(4, rows + k * AMX_ROWS, AMX_STEP);
      _tile_loadd(6, tiles + k * TILE_TOKENS, 64);
      _tile_dpbssd(0, 4, 6);
      if (TT == 2) {
        _tile_loadd(7, tokens1 + k * TILE_TOKENS, 64);
        _tile_dpbssd(1, 4, 7);
      }
      if (TN == 2) {
        _tile_loadd(5, rows1 + k * AMX_ROWS, AMX_STEP);
        _tile_dpbssd(2, 5, 6);
        if (TT == 2) _tile_dpbssd(3, 5, 7);
      }
    }
    _tile_stored(0, sums[0][0], 64);
    if (TT == 2) _tile_stored(1, sums[0][TT - 1], 64);
    if (TN == 2) _tile_stored(2, sums[TN - 1][0], 64);
    if (TN == 2 && TT == 2) _tile_stored(3, sums[TN - 1][TT - 1], 64);
    for (int i = 0; i < TN; ++i)
      for (int t = 0; t < TT; ++t) {
        const __m512 scale = _mm512_loadu_ps(tile_scales + (t * a.groups + g) * TILE_TOKENS);
        for (int r = 0; r < AMX_ROWS; ++r)  // x . w, exact, then as the VNNI product
          _mm512_store_ps(totals[i][t][r], _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(sums[i][t][r])), scale, _mm512_load_ps(totals[i][t][r])));
      }
  }
  for (int i = 0; i < TN; ++i)
    for (int t = 0; t < TT; ++t)
      for (int64_t q = 0; q < 4 && n0 + i * AMX_ROWS + 4 * q < a.N; ++q) {
        const int64_t n4 = n0 + i * AMX_ROWS + 4 * q;
        __m512 v[4];
        for (int r = 0; r < 4; ++r) {
          const int64_t n = std::min(n4 + r, a.N - 1);  // rows past N (padding) are computed, not stored
          v[r] = _mm512_fmadd_ps(_mm512_load_ps(totals[i][t][4 * q + r]), _mm512_set1_ps(a.scales[n]), _mm512_set1_ps(a.bias ? a.bias[n] : 0.f));
        }
        store_token_rows(v, a.y, a.N, n4, m0 + t * TILE_TOKENS, m_end);
      }
}

template <int TN>
AMX inline void amx_row_tiles(const Int8GemmArgs& a, const int8_t* rows, int64_t K64, const uint8_t* tiles, const float* tile_scales,
                              int64_t count, int64_t p, int64_t panel_end, int64_t n0) {
  int64_t t = 0;
  for (; t + 2 <= count; t += 2)
    amx_tiles<TN, 2>(a, rows, K64, tiles + t * TILE_TOKENS * a.K, tile_scales + t * a.groups * TILE_TOKENS,
                     p + t * TILE_TOKENS, panel_end, n0);
  if (t < count)
    amx_tiles<TN, 1>(a, rows, K64, tiles + t * TILE_TOKENS * a.K, tile_scales + t * a.groups * TILE_TOKENS,
                     p + t * TILE_TOKENS, panel_end, n0);
}

// Tiles of 16 weight rows [begin, end). Panels of tokens whose tiles take up to 2 MB (AMX's CPUs
// have 2 MB of L2 a core): each panel reads the thread's weights again, from memory, and rearranges
// them (amx_weight_rows). With 1 MB a 256-token prefill chunk of an 8192 -> 2048 layer took two
// panels: 6.2-6.6 against 5.3-5.6 ms with one (Intel Xeon, 2 threads, the same numbers).
AMX inline void int8_gemm_amx_tiles(const Int8GemmArgs& a, int64_t begin, int64_t end) {
  const int64_t K64 = (a.K + AMX_STEP - 1) / AMX_STEP * AMX_STEP;
  const int64_t panel = std::max<int64_t>(2 * TILE_TOKENS, ((2 << 20) / a.K) / (2 * TILE_TOKENS) * (2 * TILE_TOKENS));
  // A tile's last step may read up to 48 columns past K: zero weights there, any x (the slack).
  std::vector<uint8_t> tiles((std::min(panel, a.M) + TILE_TOKENS) * a.K + AMX_STEP * TILE_TOKENS);
  std::vector<float> tile_scales((std::min(panel, a.M) + TILE_TOKENS) * a.groups);
  std::vector<int8_t> rows(2 * AMX_ROWS * K64);
  amx_configure();
  for (int64_t p = 0; p < a.M; p += panel) {
    const int64_t panel_end = std::min(a.M, p + panel), count = (panel_end - p + TILE_TOKENS - 1) / TILE_TOKENS;
    vnni_tiles({a.q, a.x_scales, a.K, a.groups}, p, panel_end, tiles.data(), tile_scales.data(), false);
    for (int64_t tile = begin; tile < end; tile += 2) {
      amx_weight_rows(a, tile, K64, rows.data());
      if (tile + 1 < end) {
        amx_weight_rows(a, tile + 1, K64, rows.data() + AMX_ROWS * K64);
        amx_row_tiles<2>(a, rows.data(), K64, tiles.data(), tile_scales.data(), count, p, panel_end, tile * AMX_ROWS);
      } else {
        amx_row_tiles<1>(a, rows.data(), K64, tiles.data(), tile_scales.data(), count, p, panel_end, tile * AMX_ROWS);
      }
    }
  }
  _tile_release();
}
#endif
#endif

template <int MT>
inline void int8_gemm_tile(const Int8GemmArgs& a, int64_t b, int64_t m0) {
  float dots[MT][4];
  int8_gemm_tile_portable<MT>(a, a.w + b * 4 * a.K, m0, dots);
  for (int m = 0; m < MT; ++m) store_int8_rows(a, b, m0 + m, dots[m]);
}

// The portable products' loop: for each panel of the M tokens whose bytes of q (K a token) fit
// 256 KB, each block b in [begin, end) against the panel's tokens, tile(MT, b, m0) for tiles of MT
// tokens from m0 (up to 4, a compile-time constant).
template <class Tile>
inline void portable_panels(int64_t M, int64_t K, int64_t begin, int64_t end, Tile tile) {
  const int64_t panel = std::max<int64_t>(4, ((256 << 10) / K) / 4 * 4);
  for (int64_t p = 0; p < M; p += panel)
    for (int64_t b = begin; b < end; ++b)
      token_passes<4>(std::min(M, p + panel) - p, [&](auto tokens, int64_t m0) { tile(tokens, b, p + m0); });
}

inline void int8_gemm_blocks(const Int8GemmArgs& a, int64_t begin, int64_t end) {  // blocks [begin, end)
  portable_panels(a.M, a.K, begin, end, [&](auto tokens, int64_t b, int64_t m) { int8_gemm_tile<decltype(tokens)::value>(a, b, m); });
}

// ---------------------------------------------------------------- int4 x int8, for prefill
// The decode kernel above unpacks each weight's nibble again for every token. The products here
// unpack each 8-row block once per panel of tokens, to signed bytes q - zero (in [-15, 15]; row r's
// 4 columns of chunk c at 32c + 4r), and round x to 8-bit integers with one scale per 128 columns
// (as llama.cpp's Q8 activations, coarser: |x error| <= max |x in the 128| / 254), or per weight
// group where 128 does not divide K or for groups of 256. With the zero point inside the bytes there
// is no offset term: per group and row a tile spends one conversion and one multiply-add on the
// group's integer sum. x goes in as x + 128 (unsigned), which adds 128 * sum(q - zero) to each
// group's sum: taken off as one float per x group and row (benchmarks/README.md, "CPU decode kernels").
// y[m, n] = sum over x groups G of x_scales[m, G] * (sum over weight groups g in G of scale[n, g] *
// ((x[m, g] + 128) . (q - zero)[n, g]) - 128 * scale[n, g] * sum(q - zero)[n, g]), + bias[n].
// The portable tile keeps the form the AVX2 one had before: x per weight group, multiplied by q
// as it is, each group's offset (-zero * scale) times the exact sum of x added.

struct Int4GemmArgs {
  const int8_t* q;        // (M, K): x[m] / x_scales[m, g], rounded
  const float* x_scales;  // (M, K / x_group)
  const float* x_sums;    // (M, K / x_group): sums of x per group (not for VNNI's product)
  const uint8_t* w;       // (N/8, K/g, 4g + 20), as for int4_blocks
  const float* bias;      // (N,) or nullptr
  float* y;               // (M, N)
  int64_t M, N, K, group_size;
  int64_t x_group;        // columns per scale of x: group_size, or a multiple of it (VNNI's product)
};

// The block's 8 rows for tokens m0 .. m0 + MT - 1: out[m][r], before the bias.
template <int MT>
inline void int4_gemm_tile_portable(const Int4GemmArgs& a, const uint8_t* w, int64_t m0, float out[4][8]) {
  const int64_t groups = a.K / a.group_size;
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < 8; ++r) {
      const uint8_t* group_w = w;
      float acc = 0.f;
      for (int64_t g = 0; g < groups; ++g, group_w += int4_group_bytes(a.group_size)) {
        int32_t dot = 0;
        for (int64_t c = 0; c < a.group_size; ++c) {  // column c of the group: chunk c / 4, byte 2r + (c % 2)
          const uint8_t byte = group_w[c / 4 * 16 + 2 * r + c % 2];
          dot += int32_t(c % 4 < 2 ? byte & 15 : byte >> 4) * a.q[(m0 + m) * a.K + g * a.group_size + c];
        }
        const uint8_t* tail = group_w + 4 * a.group_size;
        const float scale = half_to_float(load<uint16_t>(tail + 2 * r)), offset = int4_offset(scale, tail, r);
        acc += float(dot) * (scale * a.x_scales[(m0 + m) * groups + g]);
        acc += offset * a.x_sums[(m0 + m) * groups + g];
      }
      out[m][r] = acc;
    }
}

#if defined(__x86_64__)
struct Int4Unpacked {  // one 8-row block, unpacked
  std::vector<int8_t> w;                  // (K/4, 8, 4): q - zero
  std::vector<float> scales;              // (groups, 8)
  std::vector<float> corrections;         // (K / x_group, 8): -128 * sum over the x group of scale * sum(q - zero)
  explicit Int4Unpacked(const Int4GemmArgs& a) : w(8 * a.K), scales(8 * (a.K / a.group_size)), corrections(8 * (a.K / a.x_group)) {}
};

// Row r's 16 bits of a chunk (columns 4c, 4c + 1 in the low nibbles, 4c + 2, 4c + 3 in the high) in
// lane r as bytes q = columns 4c .. 4c + 3, less the zero points (each lane's in its 4 bytes).
AVX2 inline __m256i int4_chunk_bytes(const uint8_t* packed, __m256i zeros) {
  const __m256i nibbles = _mm256_set1_epi32(0x0F0F);
  const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)packed));
  const __m256i q = _mm256_or_si256(_mm256_and_si256(v, nibbles), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(v, 4), nibbles), 16));
  return _mm256_sub_epi8(q, zeros);
}

// The 8 rows' zero points from a group's tail, each repeated in its lane's 4 bytes.
AVX2 inline __m256i int4_zero_bytes(const uint8_t* tail) {
  const __m256i row_of_lane = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  return _mm256_mullo_epi32(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(load<int32_t>(tail + 16)), row_of_lane), _mm256_set1_epi32(15)),
                            _mm256_set1_epi32(0x01010101));
}

// The block's scales and the corrections for x + 128, given each group's sum of q - zero per row.
inline void int4_unpacked_group(const Int4GemmArgs& a, int64_t g, const uint8_t* tail, const int32_t sums[8], Int4Unpacked& out) {
  const int64_t per_x_group = a.x_group / a.group_size;
  float* corrections = &out.corrections[g / per_x_group * 8];
  for (int r = 0; r < 8; ++r) {
    const float scale = half_to_float(load<uint16_t>(tail + 2 * r));
    out.scales[g * 8 + r] = scale;
    if (g % per_x_group == 0) corrections[r] = 0.f;
    corrections[r] -= 128.f * scale * float(sums[r]);
  }
}

AVX2 inline void int4_unpack_avx2(const Int4GemmArgs& a, const uint8_t* packed, Int4Unpacked& out) {
  const int64_t groups = a.K / a.group_size;
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  int8_t* w = out.w.data();
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* tail = packed + 4 * a.group_size;
    const __m256i zeros = int4_zero_bytes(tail);
    __m256i sums = _mm256_setzero_si256();  // lane r: row r
    for (int64_t c = 0; c < a.group_size / 4; ++c, packed += 16, w += 32) {
      const __m256i bytes = int4_chunk_bytes(packed, zeros);
      _mm256_storeu_si256((__m256i*)w, bytes);
      sums = _mm256_add_epi32(sums, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, bytes), ones16));
    }
    int32_t lanes[8];
    _mm256_storeu_si256((__m256i*)lanes, sums);
    int4_unpacked_group(a, g, tail, lanes, out);
    packed += INT4_TAIL_BYTES;
  }
}

// MT tokens (x + 128: rows of `x`, K apart) against an unpacked block's 8 rows: one register holds
// 4 columns of the 8 rows, and x's 4 bytes broadcast meet them in one vpmaddubsw, whose pair sums
// ((x + 128) <= 255 times |q - zero| <= 15, twice: at most 7,650) leave room to add 4 chunks (16
// columns) in int16 before a vpmaddwd widens them; lane r is row r's throughout (no shuffles and no
// reduction at the end). 2.4 instructions per 32 products where int8's product takes 3.
template <int MT>
AVX2 inline void int4_gemm_tile_avx2(const Int4GemmArgs& a, const Int4Unpacked& block, const uint8_t* x, int64_t m0, int64_t n0) {
  const int64_t groups_per_x = a.x_group / a.group_size, x_groups = a.K / a.x_group;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 totals[MT];
  for (int m = 0; m < MT; ++m) totals[m] = _mm256_setzero_ps();
  const int8_t* w = block.w.data();
  const float* scales = block.scales.data();
  int64_t k = 0;
  for (int64_t xg = 0; xg < x_groups; ++xg) {
    __m256 partial[MT];  // the x group's sum for the 8 rows, before x's scale
    for (int m = 0; m < MT; ++m) partial[m] = _mm256_loadu_ps(&block.corrections[xg * 8]);
    for (int64_t g = 0; g < groups_per_x; ++g, scales += 8) {
      __m256i acc[MT];
      for (int m = 0; m < MT; ++m) acc[m] = _mm256_setzero_si256();
      for (int64_t c = 0; c < a.group_size / 4; c += 4, w += 128, k += 16)
        for (int m = 0; m < MT; ++m) {
          const uint8_t* xm = x + m * a.K + k;
          __m256i pairs = _mm256_maddubs_epi16(_mm256_set1_epi32(load<int32_t>(xm)), _mm256_loadu_si256((const __m256i*)w));
          for (int u = 1; u < 4; ++u)
            pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(_mm256_set1_epi32(load<int32_t>(xm + 4 * u)), _mm256_loadu_si256((const __m256i*)(w + 32 * u))));
          acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(pairs, ones));
        }
      const __m256 group_scales = _mm256_loadu_ps(scales);
      for (int m = 0; m < MT; ++m) partial[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[m]), group_scales, partial[m]);
    }
    for (int m = 0; m < MT; ++m) totals[m] = _mm256_fmadd_ps(partial[m], _mm256_set1_ps(a.x_scales[(m0 + m) * x_groups + xg]), totals[m]);
  }
  for (int m = 0; m < MT; ++m) {
    float out[8];
    _mm256_storeu_ps(out, totals[m]);
    for (int r = 0; r < 8 && n0 + r < a.N; ++r) a.y[(m0 + m) * a.N + n0 + r] = out[r] + (a.bias ? a.bias[n0 + r] : 0.f);
  }
}

AVX2 inline void int4_gemm_avx2_blocks(const Int4GemmArgs& a, int64_t begin, int64_t end) {  // blocks [begin, end)
  const int64_t groups = a.K / a.group_size;
  // Rows of x in 256 KB, but at least 128, so that a block's unpacking serves 32 tiles: at 8,192
  // columns 32 rows (8 tiles) made 8192 -> 2048 1.13x slower on the AVX2 EPYC, where 1 MB panels
  // made the 2,048-column shapes 1.03-1.04x slower.
  const int64_t panel = std::max<int64_t>(128, ((256 << 10) / a.K) / 4 * 4);
  std::vector<uint8_t> x(std::min(panel, a.M) * a.K);  // the panel's x + 128
  Int4Unpacked block(a);
  for (int64_t p = 0; p < a.M; p += panel) {
    const int64_t panel_end = std::min(a.M, p + panel);
    for (int64_t i = 0; i < (panel_end - p) * a.K; ++i) x[i] = uint8_t(a.q[p * a.K + i]) ^ 0x80;
    for (int64_t b = begin; b < end; ++b) {
      int4_unpack_avx2(a, a.w + b * groups * int4_group_bytes(a.group_size), block);
      int64_t m = p;
      for (; m + 4 <= panel_end; m += 4) int4_gemm_tile_avx2<4>(a, block, x.data() + (m - p) * a.K, m, b * 8);
      for (; m + 2 <= panel_end; m += 2) int4_gemm_tile_avx2<2>(a, block, x.data() + (m - p) * a.K, m, b * 8);
      if (m < panel_end) int4_gemm_tile_avx2<1>(a, block, x.data() + (m - p) * a.K, m, b * 8);
    }
  }
}

// With AVX-512 VNNI, as int8's product: tokens in the lanes, x + 128 unsigned, each row's 4 weights
// broadcast inside the vpdpbusd, on the same unpacked blocks (unpacked with AVX-512 here). Per group
// and row a tile spends a conversion and one multiply-add on its 8 vpdpbusd (with groups of 32),
// where scaling by each group's x scale and adding its offset took five (int4 prefill was
// 1.55-1.6x int8's time; benchmarks/README.md, "CPU decode kernels").
AVX512 inline void int4_vnni_unpack(const Int4GemmArgs& a, const uint8_t* packed, Int4Unpacked& out) {
  const int64_t groups = a.K / a.group_size;
  const __m512i nibbles = _mm512_set1_epi32(0x0F0F), ones = _mm512_set1_epi8(1);
  int8_t* w = out.w.data();
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* tail = packed + 4 * a.group_size;
    const __m512i zeros = _mm512_broadcast_i64x4(int4_zero_bytes(tail));  // lanes r and 8 + r: row r's
    __m512i sums = _mm512_setzero_si512();  // lanes r and 8 + r: row r
    for (int64_t c = 0; c < a.group_size / 4; c += 2, packed += 32, w += 64) {  // two chunks at once: int4_chunk_bytes
      const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)packed));
      const __m512i q = _mm512_or_si512(_mm512_and_si512(v, nibbles), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(v, 4), nibbles), 16));
      const __m512i bytes = _mm512_sub_epi8(q, zeros);
      _mm512_storeu_si512(w, bytes);
      sums = _mm512_dpbusd_epi32(sums, ones, bytes);
    }
    int32_t lanes[16];
    _mm512_storeu_si512(lanes, sums);
    for (int r = 0; r < 8; ++r) lanes[r] += lanes[8 + r];
    int4_unpacked_group(a, g, tail, lanes, out);
    packed += INT4_TAIL_BYTES;
  }
}

// One tile of 16 tokens against an unpacked block's 8 rows: y for rows n0..n0+7 of tokens m0...
AVX512 inline void int4_gemm_tile_vnni(const Int4GemmArgs& a, const Int4Unpacked& block, const uint8_t* tile, const float* tile_scales,
                                       int64_t m0, int64_t m_end, int64_t n0) {
  const int64_t groups_per_x = a.x_group / a.group_size, x_groups = a.K / a.x_group;
  __m512 totals[8];
  for (int r = 0; r < 8; ++r) totals[r] = _mm512_setzero_ps();
  const int8_t* w = block.w.data();
  const float* scales = block.scales.data();
  for (int64_t xg = 0; xg < x_groups; ++xg) {
    __m512 partial[8];  // the x group's sum for row r, before x's scale
    for (int r = 0; r < 8; ++r) partial[r] = _mm512_set1_ps(block.corrections[xg * 8 + r]);
    for (int64_t g = 0; g < groups_per_x; ++g, scales += 8) {
      __m512i acc[8];
      for (int r = 0; r < 8; ++r) acc[r] = _mm512_setzero_si512();
      // 8 chunks (32 columns) a turn, unrolled: one at a time, GCC 12 copied the 8 sums to other registers and back
      // every turn (16 moves per 8 vpdpbusd, which bound the loop).
      for (int64_t c = 0; c < a.group_size / 4; c += 8, w += 256, tile += 32 * TILE_TOKENS)
        for (int u = 0; u < 8; ++u) {
          const __m512i x = _mm512_loadu_si512((const void*)(tile + u * 4 * TILE_TOKENS));
          for (int r = 0; r < 8; ++r) acc[r] = _mm512_dpbusd_epi32(acc[r], x, _mm512_set1_epi32(load<int32_t>(w + 32 * u + 4 * r)));
        }
      for (int r = 0; r < 8; ++r) partial[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r]), _mm512_set1_ps(scales[r]), partial[r]);
    }
    const __m512 x_scales = _mm512_loadu_ps(tile_scales + xg * TILE_TOKENS);
    for (int r = 0; r < 8; ++r) totals[r] = _mm512_fmadd_ps(partial[r], x_scales, totals[r]);
  }
  for (int half = 0; half < 2 && n0 + 4 * half < a.N; ++half) {
    __m512 v[4];
    for (int r = 0; r < 4; ++r) {
      const int64_t n = std::min(n0 + 4 * half + r, a.N - 1);  // rows past N (padding) are computed, not stored
      v[r] = _mm512_add_ps(totals[4 * half + r], _mm512_set1_ps(a.bias ? a.bias[n] : 0.f));
    }
    store_token_rows(v, a.y, a.N, n0 + 4 * half, m0, m_end);
  }
}

AVX512 inline void int4_gemm_vnni_blocks(const Int4GemmArgs& a, int64_t begin, int64_t end) {  // blocks [begin, end)
  const int64_t groups = a.K / a.group_size, x_groups = a.K / a.x_group;
  // 512 KB of tiles (every AVX-512 CPU has 1 MB of L2 or more): with 256, at 8,192 columns a block's
  // unpacking served 2 tiles, and int4 took 1.16x int8's time on that shape instead of 1.0x.
  const int64_t panel = std::max<int64_t>(TILE_TOKENS, ((512 << 10) / a.K) / TILE_TOKENS * TILE_TOKENS);
  const int64_t padded = std::min(panel, a.M) + TILE_TOKENS;
  std::vector<uint8_t> tiles(padded * a.K);
  std::vector<float> tile_scales(padded * x_groups);
  Int4Unpacked block(a);
  for (int64_t p = 0; p < a.M; p += panel) {
    const int64_t panel_end = std::min(a.M, p + panel), count = (panel_end - p + TILE_TOKENS - 1) / TILE_TOKENS;
    vnni_tiles({a.q, a.x_scales, a.K, x_groups}, p, panel_end, tiles.data(), tile_scales.data());
    for (int64_t b = begin; b < end; ++b) {
      int4_vnni_unpack(a, a.w + b * groups * int4_group_bytes(a.group_size), block);
      for (int64_t t = 0; t < count; ++t)
        int4_gemm_tile_vnni(a, block, tiles.data() + t * TILE_TOKENS * a.K, tile_scales.data() + t * x_groups * TILE_TOKENS,
                            p + t * TILE_TOKENS, panel_end, b * 8);
    }
  }
}
#endif

// ---------------------------------------------------------------- int4 x int8, for decode (VNNI)
// int4_tokens with x rounded to bytes, one scale per weight group (as the int4 products round it,
// and llama.cpp's Q4_0 x Q8_0: the demo model's int4 agreement 246/256, 245 with int16). The weights'
// nibbles are VNNI's unsigned operand as they are: from 64 packed bytes (4 column quads of the 8
// rows), the low and high nibbles interleaved by 16-bit pairs give each row's 4 columns of a quad
// in one 32-bit lane, rows 0-3 in one register and 4-7 in another, each quad in its own 128 bits.
// One vpdpbusd then does 64 products per token where int4_tokens' vpdpwssd did 16 and a broadcast:
// a verify's 5 rows, bound by that arithmetic, cost santacoder 1.9 decode steps instead of 2.25
// (Zen 4 EPYC; one token as fast or faster). x meets them with each quad's 4 bytes repeated in its
// 128 bits (one vpermd: x expanded so in memory, 4 bytes a column, made one token 10 % slower, its
// reads beside the weights'). Per (token, row) the integer sums are exact and the float steps the
// same for any number of tokens a call, so a verify's rows equal decode steps bit for bit.

#if defined(__x86_64__)
// Tokens [m0, m0 + T) of block b. STEPS (the group's columns / 16) is a constant so that the group's
// loop unrolls: as a loop, GCC 12 copied every sum to another register and back each turn (20 moves
// beside 10 vpdpbusd). A group's sums are folded to one register per token (rows 0-3 and 4-7, two
// quads' lanes each) before they are scaled: 5 tokens' sums and totals then stay in registers.
template <int T, int STEPS>
AVX512 inline void int4x8_tokens(const Int4x8Args& a, int64_t b, int64_t m0) {
  const int64_t groups = a.K / a.group_size;
  const __m512i low_nibbles = _mm512_set1_epi8(15);
  const uint8_t* w = a.w + b * groups * int4_group_bytes(a.group_size);
  const int8_t* x = a.x + m0 * a.K;
  const __m512i quad_lanes = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);  // each quad's 4 bytes to its 128 bits
  const float *x_scales = a.x_scales + m0 * groups, *x_sums = a.x_sums + m0 * groups;
  __m512 acc[T];  // lanes: rows 0-3 twice, then rows 4-7 twice (quads 0+2 and 1+3 of the group)
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g, w += INT4_TAIL_BYTES) {
    __m512i rows03[T], rows47[T];  // exact: 256 columns * 15 * 127 < 2^31
    for (int t = 0; t < T; ++t) rows03[t] = rows47[t] = _mm512_setzero_si512();
    const int8_t* xg = x + g * a.group_size;
    for (int step = 0; step < STEPS; ++step, w += 64) {
      prefetch_weights(w);
      const __m512i bytes = _mm512_loadu_si512((const void*)w);
      const __m512i low = _mm512_and_si512(bytes, low_nibbles), high = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low_nibbles);
      const __m512i weights03 = _mm512_unpacklo_epi16(low, high), weights47 = _mm512_unpackhi_epi16(low, high);
      for (int t = 0; t < T; ++t) {
        const __m512i xq = _mm512_permutexvar_epi32(quad_lanes, _mm512_castsi128_si512(_mm_loadu_si128((const __m128i*)(xg + t * a.K + 16 * step))));
        rows03[t] = _mm512_dpbusd_epi32(rows03[t], weights03, xq);
        rows47[t] = _mm512_dpbusd_epi32(rows47[t], weights47, xq);
      }
    }
    prefetch_weights(w);
    // This group's scales and offsets (-zero * scale) in the folded lanes' order; offsets in the
    // first of each row's two lanes only.
    const __m256 scales = (__m256)Avx512::halves(w), offsets = (__m256)int4_offsets((f32x8)scales, w);
    const __m512 lane_scales = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7),
                                                     _mm512_castps256_ps512(scales));
    const __m512 lane_offsets = _mm512_maskz_permutexvar_ps(0x0f0f, _mm512_setr_epi32(0, 1, 2, 3, 0, 0, 0, 0, 4, 5, 6, 7, 0, 0, 0, 0),
                                                           _mm512_castps256_ps512(offsets));
    for (int t = 0; t < T; ++t) {
      // [rows 0-3: quads 0+2, 1+3 | rows 4-7: quads 0+2, 1+3]
      const __m512i folded = _mm512_add_epi32(_mm512_shuffle_i32x4(rows03[t], rows47[t], 0x44), _mm512_shuffle_i32x4(rows03[t], rows47[t], 0xee));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(folded), _mm512_mul_ps(lane_scales, _mm512_set1_ps(x_scales[t * groups + g])), acc[t]);
      acc[t] = _mm512_fmadd_ps(lane_offsets, _mm512_set1_ps(x_sums[t * groups + g]), acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) {
    float lanes[16];
    _mm512_storeu_ps(lanes, acc[t]);
    for (int r = 0; r < 8 && b * 8 + r < a.N; ++r) {
      const float* l = lanes + (r / 4) * 8 + r % 4;
      a.y[(m0 + t) * a.N + b * 8 + r] = (l[0] + l[4]) + (a.bias ? a.bias[b * 8 + r] : 0.f);
    }
  }
}

template <int STEPS>
AVX512 inline void int4x8_group_blocks(const Int4x8Args& a, int64_t begin, int64_t end) {
  for (int64_t b = begin; b < end; ++b)
    token_passes<5>(a.M, [&](auto tokens, int64_t m) { int4x8_tokens<decltype(tokens)::value, STEPS>(a, b, m); });
}

AVX512 inline void int4x8_blocks(const Int4x8Args& a, int64_t begin, int64_t end) {  // blocks [begin, end)
  switch (a.group_size) {
    case 32: return int4x8_group_blocks<2>(a, begin, end);
    case 64: return int4x8_group_blocks<4>(a, begin, end);
    case 128: return int4x8_group_blocks<8>(a, begin, end);
    default: return int4x8_group_blocks<16>(a, begin, end);  // 256 (int4_inputs allows no other)
  }
}
#endif

template <int MT>
inline void int4_gemm_tile(const Int4GemmArgs& a, int64_t b, int64_t m0) {
  float out[4][8];
  int4_gemm_tile_portable<MT>(a, a.w + b * (a.K / a.group_size) * int4_group_bytes(a.group_size), m0, out);
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < 8 && b * 8 + r < a.N; ++r) a.y[(m0 + m) * a.N + b * 8 + r] = out[m][r] + (a.bias ? a.bias[b * 8 + r] : 0.f);
}

inline void int4_gemm_blocks(const Int4GemmArgs& a, int64_t begin, int64_t end) {  // blocks [begin, end)
  portable_panels(a.M, a.K, begin, end, [&](auto tokens, int64_t b, int64_t m) { int4_gemm_tile<decltype(tokens)::value>(a, b, m); });
}

// ---------------------------------------------------------------- one copy per instruction set
// flatten compiles the templates above inside each of these, for its instruction set. (A lambda
// does not inherit its function's target attribute, so parallel_for's lambda calls these.)

// ---------------------------------------------------------------- decode attention
// One new token's queries over the cached keys and values: q (KVH, G, D), the G query heads that
// read key/value head h (multi-query: KVH = 1; multi-head: G = 1); k, v (KVH, S, D), rows apart by
// a stride (a slice of the cache). PyTorch's SDPA gives one query block of one head to a thread, so
// a multi-query cache is read by one thread alone. Here the keys
// are cut into chunks across threads (flash-decoding): each chunk keeps its own softmax maximum,
// sum and weighted sum of values, merged at the end. Scores are computed with one head per row
// (row_scores) or, where G is a multiple of the register's width, one head per lane (lane_scores).

struct AttendArgs {
  const float* q;  // (KVH, G, D)
  const void* k;   // float32 or float16; row j of head h at h * k_head + j * k_row
  const void* v;
  int64_t G, S, D, k_head, k_row, v_head, v_row, chunk, chunks;  // chunk: keys per task; chunks per head
  float scale;
  float* partial;  // per task: G maxima, G sums, then G x D weighted sums of values
};

// exp(x) for x <= 0 (scores minus their maximum), Cephes' expf: 2^n times a polynomial of the
// remainder, relative error ~1e-7; below -87 it is 0 (as expf's underflow).
template <class F>
inline F exp_nonpositive(F x) {
  typedef typename Vec<sizeof(F) / 4>::i32 I;
  const F tiny = (F){} - 87.f;
  const F clamped = x < tiny ? tiny : x;
  const F n = (clamped * 1.44269504f + 12582912.f) - 12582912.f;  // x log2 e to the nearest integer: + 1.5 * 2^23
  const F r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
  F p = (F){} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const F y = p * r * r + r + 1.f;
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  F two_n;
  __builtin_memcpy(&two_n, &bits, sizeof two_n);
  return x < tiny ? (F){} : y * two_n;
}

// out[r] = the sum of dots[r]'s lanes, r < 8. With 8 lanes, three rounds of pairwise shuffles and
// adds give all eight sums in one vector, instead of seven scalar adds for each.

template <class F>
inline void sums_of_8(const F dots[8], float* out) {
#ifdef HAVE_SHUFFLEVECTOR
  if constexpr (sizeof(F) == 32) {
    F t[4], u[2];
    for (int i = 0; i < 4; ++i)
      t[i] = __builtin_shufflevector(dots[2 * i], dots[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
             __builtin_shufflevector(dots[2 * i], dots[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    for (int i = 0; i < 2; ++i)
      u[i] = __builtin_shufflevector(t[2 * i], t[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
             __builtin_shufflevector(t[2 * i], t[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    const F all = __builtin_shufflevector(u[0], u[1], 0, 1, 2, 3, 8, 9, 10, 11) +
                  __builtin_shufflevector(u[0], u[1], 4, 5, 6, 7, 12, 13, 14, 15);
    __builtin_memcpy(out, &all, sizeof all);
    return;
  }
  if constexpr (sizeof(F) == 64) {  // fold each to 8 lanes first
    f32x8 halves[8];
    for (int r = 0; r < 8; ++r)
      halves[r] = __builtin_shufflevector(dots[r], dots[r], 0, 1, 2, 3, 4, 5, 6, 7) +
                  __builtin_shufflevector(dots[r], dots[r], 8, 9, 10, 11, 12, 13, 14, 15);
    sums_of_8(halves, out);
    return;
  }
#endif
  for (int r = 0; r < 8; ++r) out[r] = sum(dots[r]);
}

// W of a cache's numbers, float32 or float16, as float32.
template <class Isa, class F>
inline F cache_floats(const float* p) { return load<F>(p); }
template <class Isa, class F>
inline F cache_floats(const uint16_t* p) { return Isa::floats(p); }

// A chunk's attention weights: head g's for key j at p[g * head + j * key] (heads in rows, or, where
// the scores were computed with heads in lanes, in columns).
struct Weights {
  const float* p;
  int64_t head, key;
};

// acc[g * D + c] = sum over the chunk's n keys j of weight (g, j) * values[j * v_row + c], for GG
// heads g and C columns c (acc and values start at the first of them).
template <class Isa, int GG, int C, class T>
inline void weighted_values(const AttendArgs& a, const Weights& weights, const T* values, int64_t n, float* acc) {
  constexpr int W = Isa::W, R = C / W;
  using F = typename Vec<W>::f32;
  F sums[GG][R] = {};
  for (int64_t j = 0; j < n; ++j) {
    // As the keys' (past the end is harmless), every line of the C columns: with one line of a
    // 64-column float16 row asked for, one head's attention read the cache at 60 % of the bandwidth.
    for (size_t b = 0; b < C * sizeof(T); b += 64) __builtin_prefetch((const char*)(values + (j + 16) * a.v_row) + b);
    F row[R];
    for (int r = 0; r < R; ++r) row[r] = cache_floats<Isa, F>(values + j * a.v_row + r * W);
    for (int g = 0; g < GG; ++g) {
      const float weight = weights.p[g * weights.head + j * weights.key];
      for (int r = 0; r < R; ++r) sums[g][r] += weight * row[r];
    }
  }
  for (int g = 0; g < GG; ++g) __builtin_memcpy(acc + g * a.D, sums[g], sizeof sums[g]);
}

// The same for heads [g, G): GG at a time, then fewer.
template <class Isa, int GG, int C, class T>
inline void weighted_values_by_heads(const AttendArgs& a, const Weights& weights, const T* values, int64_t n, float* acc, int64_t g) {
  if constexpr (GG > 0) {
    for (; g + GG <= a.G; g += GG)
      weighted_values<Isa, GG, C>(a, Weights{weights.p + g * weights.head, weights.head, weights.key}, values, n, acc + g * a.D);
    weighted_values_by_heads<Isa, GG - 1, C>(a, weights, values, n, acc, g);
  }
}

// Keys j + 8 .. j + 15 of the chunk's n. The cache was last read a whole step ago: they are asked for
// while keys j .. j + 7 serve every query (the hardware prefetcher alone read the cache at a fifth
// of the bandwidth).
template <class T>
inline void prefetch_next_keys(const AttendArgs& a, const T* keys, int64_t j, int64_t n) {
  for (int64_t i = 0; i < 8 && j + 8 + i < n; ++i)
    for (int64_t d = 0; d < a.D; d += 16) __builtin_prefetch(keys + (j + 8 + i) * a.k_row + d);
}

// dot[r] += key r's numbers (key_floats, D each) times W heads' queries (q_t, D rows G apart), for r < rows.
template <class F>
inline void lane_dots(const float* key_floats, const float* q_t, int64_t D, int64_t G, int rows, F dot[8]) {
  for (int64_t d = 0; d < D; ++d) {
    const F query = load<F>(q_t + d * G);
    for (int r = 0; r < rows; ++r) dot[r] += key_floats[r * D + d] * query;
  }
}

// Where every W heads read the same keys (multi-query, or groups of W or more): the n keys' scores
// with one head per lane, scores[j * G + g], for query q_t (D, G), the group's queries transposed.
// Each key is widened to float32 once for all heads, and each of its numbers, broadcast, multiplies
// W heads' queries: no sum across lanes (one head per key at a time took 8 shuffles a score and
// widened each key G times: half of santacoder's attention time).
template <class Isa, class T>
inline void lane_scores(const AttendArgs& a, const float* q_t, const T* keys, int64_t n, float* scores, float* key_floats) {
  constexpr int W = Isa::W;
  using F = typename Vec<W>::f32;
  const int64_t G = a.G, D = a.D;
  for (int64_t j = 0; j < n; j += 8) {
    const int64_t here = std::min<int64_t>(8, n - j);
    prefetch_next_keys(a, keys, j, n);
    for (int64_t r = 0; r < here; ++r)
      for (int64_t d = 0; d < D; d += W) {
        const F k = cache_floats<Isa, F>(keys + (j + r) * a.k_row + d);
        __builtin_memcpy(key_floats + r * D + d, &k, sizeof k);
      }
    for (int64_t g = 0; g < G; g += W) {
      F dot[8] = {};
      if (here == 8)  // a constant row count in all but the chunk's last block: the loop unrolls
        lane_dots(key_floats, q_t + g, D, G, 8, dot);
      else
        lane_dots(key_floats, q_t + g, D, G, int(here), dot);
      for (int r = 0; r < here; ++r) {
        const F score = dot[r] * a.scale;
        __builtin_memcpy(scores + (j + r) * G + g, &score, sizeof score);
      }
    }
  }
}

// Softmax numerators of lane_scores' layout in place: per head, its maximum and the sum.
template <class Isa>
inline void lane_softmax(const AttendArgs& a, float* scores, int64_t n, float* maxima, float* sums) {
  constexpr int W = Isa::W;
  using F = typename Vec<W>::f32;
  for (int64_t g = 0; g < a.G; g += W) {
    F largest = load<F>(scores + g);
    for (int64_t j = 1; j < n; ++j) {
      const F next = load<F>(scores + j * a.G + g);
      largest = next > largest ? next : largest;
    }
    F total = {};
    for (int64_t j = 0; j < n; ++j) {
      const F e = exp_nonpositive(load<F>(scores + j * a.G + g) - largest);
      __builtin_memcpy(scores + j * a.G + g, &e, sizeof e);
      total += e;
    }
    __builtin_memcpy(maxima + g, &largest, sizeof largest);
    __builtin_memcpy(sums + g, &total, sizeof total);
  }
}

// The chunk's scores with one head per row, scores[g * chunk + j], turned into softmax numerators
// in place, and each head's maximum and sum.
template <class Isa, class T>
inline void row_scores(const AttendArgs& a, const float* q, const T* keys, int64_t n, float* scores, float* maxima, float* sums) {
  constexpr int W = Isa::W;
  using F = typename Vec<W>::f32;
  const int64_t G = a.G, D = a.D;
  // Eight keys at a time (they stay in L1 for every query of the group): eight independent sums
  // keep the FMA units busy, and each query vector loaded serves eight keys.
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    prefetch_next_keys(a, keys, j, n);
    for (int64_t g = 0; g < G; ++g) {
      F dot[8] = {};
      for (int64_t d = 0; d < D; d += W) {
        const F query = load<F>(q + g * D + d);
        for (int r = 0; r < 8; ++r) dot[r] += query * cache_floats<Isa, F>(keys + (j + r) * a.k_row + d);
      }
      float* row = scores + g * a.chunk + j;
      sums_of_8(dot, row);
      for (int r = 0; r < 8; ++r) row[r] *= a.scale;
    }
  }
  for (; j < n; ++j)
    for (int64_t g = 0; g < G; ++g) {
      F dot = {};
      for (int64_t d = 0; d < D; d += W) dot += load<F>(q + g * D + d) * cache_floats<Isa, F>(keys + j * a.k_row + d);
      scores[g * a.chunk + j] = sum(dot) * a.scale;
    }
  for (int64_t g = 0; g < G; ++g) {
    float* row = scores + g * a.chunk;
    // The maximum W lanes at a time (a scalar max chains each compare on the last: 10 % of the
    // kernel with santacoder's shape); the same number in any order.
    float largest = row[0];
    int64_t j = 0;
    if (n >= W) {
      F widest = load<F>(row);
      for (j = W; j + W <= n; j += W) {
        const F next = load<F>(row + j);
        widest = next > widest ? next : widest;
      }
      for (int i = 0; i < W; ++i) largest = std::max(largest, widest[i]);
    }
    for (; j < n; ++j) largest = std::max(largest, row[j]);
    F total = {};
    for (j = 0; j + W <= n; j += W) {
      const F e = exp_nonpositive(load<F>(row + j) - largest);
      __builtin_memcpy(row + j, &e, sizeof e);
      total += e;
    }
    float rest = 0.f;
    for (; j < n; ++j) {
      F tail = {};
      tail[0] = row[j] - largest;
      row[j] = exp_nonpositive(tail)[0];
      rest += row[j];
    }
    maxima[g] = largest;
    sums[g] = sum(total) + rest;
  }
}

template <class Isa, class T>
inline void attend_chunks(const AttendArgs& a, int64_t begin, int64_t end) {  // tasks [begin, end); T: the cache's numbers
  constexpr int W = Isa::W;
  const int64_t G = a.G, D = a.D;
  const bool lanes = G % W == 0;  // lane_scores
  std::vector<float> scores(G * a.chunk + W), key_floats(lanes ? 8 * D : 0), q_t(lanes ? D * G : 0);
  int64_t transposed = -1;  // the head whose queries q_t holds (a thread's tasks run a head's chunks in turn)
  for (int64_t t = begin; t < end; ++t) {
    const int64_t h = t / a.chunks, first = t % a.chunks * a.chunk, n = std::min(a.chunk, a.S - first);
    const float* q = a.q + h * G * D;
    float* maxima = a.partial + t * G * (D + 2);
    float* sums = maxima + G;
    float* acc = sums + G;
    const T* keys = (const T*)a.k + h * a.k_head + first * a.k_row;
    Weights weights{scores.data(), a.chunk, 1};
    if (lanes) {
      if (h != transposed)
        for (int64_t g = 0; g < G; ++g)
          for (int64_t d = 0; d < D; ++d) q_t[d * G + g] = q[g * D + d];
      transposed = h;
      lane_scores<Isa>(a, q_t.data(), keys, n, scores.data(), key_floats.data());
      lane_softmax<Isa>(a, scores.data(), n, maxima, sums);
      weights = Weights{scores.data(), 1, G};
    } else {
      row_scores<Isa>(a, q, keys, n, scores.data(), maxima, sums);
    }
    // The weighted sums of 16 columns of up to 6 heads at a time (32 of 2 heads, 4 registers' of 1:
    // multi-head attention has one), in registers, over all the chunk's values: each value row loaded serves
    // them all. (Loading and storing the sums for each value cost three times as much; one head
    // per pass read the values, from L2, G times: 60 % of the kernel's time with santacoder's 16
    // heads and 1,500 keys.)
    const T* values = (const T*)a.v + h * a.v_head + first * a.v_row;
    if constexpr (W == 16) {
      if (lanes) {  // 16 heads' weights of a key in one line: all 16 at once in AVX-512's registers
        for (int64_t d = 0; d < D; d += 16)
          for (int64_t g = 0; g < G; g += 16)
            weighted_values<Isa, 16, 16>(a, Weights{weights.p + g, weights.head, weights.key}, values + d, n, acc + g * D + d);
        continue;
      }
    }
    if (G >= 3)
      for (int64_t d = 0; d < D; d += 16) weighted_values_by_heads<Isa, 6, 16>(a, weights, values + d, n, acc + d, 0);
    else if (G == 1 && D % (4 * W) == 0)  // one head: 4 registers of columns a pass, fewer passes over the values
      for (int64_t d = 0; d < D; d += 4 * W) weighted_values<Isa, 1, 4 * W>(a, weights, values + d, n, acc + d);
    else
      for (int64_t d = 0; d < D; d += 32) weighted_values_by_heads<Isa, 2, 32>(a, weights, values + d, n, acc + d, 0);
  }
}

// ---------------------------------------------------------------- prefill attention
// A prefill chunk's T new tokens over the first S keys of the cache, theirs the last T: token i's
// queries see keys [0, S - T + i]. PyTorch's SDPA takes that as a boolean mask, so it computes
// every masked score too (a chunk of 256 after 256 cached tokens: a third of its work), and over a
// float16 cache it needs every layer's keys and values cast to float32 first. Here a block of up to
// 3 registers' worth of query rows (2 with AVX-512; one row per lane) of one key/value head goes
// over the keys its rows see, a chunk of keys at a time (flash attention): the chunk's scores with
// the rows in lanes (each key number broadcast against the rows' queries, no sums across lanes),
// then a softmax per lane that carries its running maximum and sum from chunk to chunk and rescales
// the rows' weighted values when the maximum grows, then the chunk's weighted values, 6 rows by 2
// registers of columns at a time (4 by 4 with AVX-512). A chunk's keys and values stay in the L1/L2
// cache while all the block's rows use them: with blocks of one register of rows, each over all its
// keys at once, the keys and values of a long context (santacoder at 1,536 tokens: 1.5 MB) came
// from the L3 cache for every 8 rows, and the AVX2 kernel ran at half SDPA's speed there. The rows
// of key/value head h are its G query heads' for each token, token-major: a multi-query block is a
// few tokens' heads, which see nearly the same keys.

struct PrefillArgs {
  const float* q;  // query head h * G + g, token i: q + (h * G + g) * q_head + i * q_row
  const void* k;   // float32 or float16; key j of head h at h * k_head + j * k_row
  const void* v;
  float* y;  // as q
  int64_t G, T, S, D, q_head, q_row, k_head, k_row, v_head, v_row, y_head, y_row;
  int64_t block_rows, blocks;  // rows per block (W, 2 W or prefill_registers(W) W), blocks per head
  float scale;
};

// scores[k * R + lanes of rv] = the dots of key k (rows of D floats) with the block's RV registers
// of queries, for k < KB (qt: D x R, the queries transposed and scaled).
template <class F, int RV, int KB>
inline void prefill_dots(const float* qt, const float* keys, int64_t D, float* scores) {
  constexpr int W = sizeof(F) / 4, R = RV * W;
  F dot[KB][RV];
  for (int k = 0; k < KB; ++k)
    for (int rv = 0; rv < RV; ++rv) dot[k][rv] = (F){};
  for (int64_t d = 0; d < D; ++d) {
    F query[RV];
    for (int rv = 0; rv < RV; ++rv) query[rv] = load<F>(qt + d * R + rv * W);
    for (int k = 0; k < KB; ++k) {
      const float key = keys[k * D + d];
      for (int rv = 0; rv < RV; ++rv) dot[k][rv] += query[rv] * key;
    }
  }
  for (int k = 0; k < KB; ++k)
    for (int rv = 0; rv < RV; ++rv) store(scores + k * R + rv * W, dot[k][rv]);
}

// out rows (lanes l0 .. l0 + RB - 1 of the block's R) over columns [c0, c0 + C W) += the n values
// (rows of D floats), each weighted by its lane's softmax numerator (weights: n x R).
template <class Isa, int R, int RB, int C>
inline void prefill_weighted_values(const float* weights, const float* values, int64_t D, int64_t n, int64_t l0, int64_t c0,
                                    float* out) {
  constexpr int W = Isa::W;
  using F = typename Vec<W>::f32;
  F acc[RB][C];
  for (int rb = 0; rb < RB; ++rb)
    for (int c = 0; c < C; ++c) acc[rb][c] = load<F>(out + rb * D + c0 + c * W);
  for (int64_t j = 0; j < n; ++j) {
    F value[C];
    for (int c = 0; c < C; ++c) value[c] = load<F>(values + j * D + c0 + c * W);
    for (int rb = 0; rb < RB; ++rb) {
      const float weight = weights[j * R + l0 + rb];
      for (int c = 0; c < C; ++c) acc[rb][c] += weight * value[c];
    }
  }
  for (int rb = 0; rb < RB; ++rb)
    for (int c = 0; c < C; ++c) store(out + rb * D + c0 + c * W, acc[rb][c]);
}

// Registers of query rows in a full block, and floats of keys in a chunk of them, as measured fastest
// (2026-12): AVX2 (Zen 3) 3 registers (24 rows, room for 3 x 4 sums) and 16 KB; AVX-512 (Zen 4) 2
// registers (32 rows) and 64 KB; 2 registers were 1.2-1.5x faster there than 4 at the same chunk size
// (64 rows' sums, scores and weighted values no longer fit its 32 KB L1).
constexpr int prefill_registers(int W) { return W == 16 ? 2 : 3; }
constexpr int64_t prefill_chunk_floats(int W) { return W == 16 ? 16384 : 4096; }

// prefill_weighted_values over all D columns, C registers at a time, then one.
template <class Isa, int R, int RB, int C>
inline void prefill_values_rows(const float* weights, const float* values, int64_t D, int64_t n, int64_t l0, float* out) {
  int64_t c0 = 0;
  for (; c0 + C * Isa::W <= D; c0 += C * Isa::W) prefill_weighted_values<Isa, R, RB, C>(weights, values, D, n, l0, c0, out);
  for (; c0 < D; c0 += Isa::W) prefill_weighted_values<Isa, R, RB, 1>(weights, values, D, n, l0, c0, out);
}

// Block b of head h: RV registers of rows. keys, values: the head's, rows of D floats.
template <class Isa, int RV>
inline void prefill_block(const PrefillArgs& a, int64_t h, int64_t b, const float* keys, const float* values, std::vector<float>& buffer) {
  // Sums in registers: 12 of 16 registers (16 of 32 with AVX-512), enough that the FMAs' latency
  // (4 cycles, 2 a cycle) does not bound the loops; the values' rows 6 (4) at a time.
  constexpr int W = Isa::W, R = RV * W, RB = W == 16 ? 4 : 6, C = W == 16 ? 4 : 2;
  constexpr int KB = W == 16 ? 16 / RV : RV == 1 ? 12 : RV == 2 ? 5 : 3;  // keys per pass of the dots: KB x RV sums in registers
  using F = typename Vec<W>::f32;
  const int64_t D = a.D, rows = a.G * a.T;
  // Keys per chunk: its keys and values stay in L1 or L2 while the block's rows use them.
  const int64_t chunk = std::max<int64_t>(KB, (prefill_chunk_floats(W) / D) / KB * KB);
  buffer.resize(D * R + chunk * R + R * D);
  float *qt = buffer.data(), *scores = qt + D * R, *out = scores + chunk * R;
  F seen[RV], largest[RV], total[RV];  // per lane: keys its row sees (lanes past the last row repeat it), softmax state
  for (int l = 0; l < R; ++l) {
    const int64_t r = std::min(b * R + l, rows - 1), token = r / a.G, g = r % a.G;
    const float* query = a.q + (h * a.G + g) * a.q_head + token * a.q_row;
    seen[l / W][l % W] = float(a.S - a.T + token + 1);
    for (int64_t d = 0; d < D; ++d) qt[d * R + l] = query[d] * a.scale;
  }
  for (int rv = 0; rv < RV; ++rv) largest[rv] = (F){} - INFINITY, total[rv] = (F){};
  std::fill(out, out + R * D, 0.f);
  const int64_t n = int64_t(seen[RV - 1][W - 1]), all_see = int64_t(seen[0][0]);  // rows are token-major: lane 0 sees fewest
  for (int64_t j0 = 0; j0 < n; j0 += chunk) {
    const int64_t j1 = std::min(n, j0 + chunk);
    int64_t j = j0;
    for (; j + KB <= j1; j += KB) prefill_dots<F, RV, KB>(qt, keys + j * D, D, scores + (j - j0) * R);
    for (; j < j1; ++j) prefill_dots<F, RV, 1>(qt, keys + j * D, D, scores + (j - j0) * R);
    F chunk_largest[RV];
    for (int rv = 0; rv < RV; ++rv) chunk_largest[rv] = (F){} - INFINITY;
    for (j = j0; j < j1; ++j)
      for (int rv = 0; rv < RV; ++rv) {
        F score = load<F>(scores + (j - j0) * R + rv * W);
        if (j >= all_see) score = float(j) < seen[rv] ? score : (F){} - INFINITY;  // past some rows' own token
        chunk_largest[rv] = score > chunk_largest[rv] ? score : chunk_largest[rv];
        store(scores + (j - j0) * R + rv * W, score);
      }
    // Each lane saw key 0 in the first chunk, so its maximum is finite from then on.
    for (int rv = 0; rv < RV; ++rv) {
      const F grown = chunk_largest[rv] > largest[rv] ? chunk_largest[rv] : largest[rv];
      const F factor = exp_nonpositive(largest[rv] - grown);  // 0 on the first chunk
      largest[rv] = grown, total[rv] *= factor;
      if (j0 > 0)
        for (int l = 0; l < W; ++l)
          if (factor[l] != 1.f)
            for (int64_t d = 0; d < D; ++d) out[(rv * W + l) * D + d] *= factor[l];
    }
    for (j = j0; j < j1; ++j)
      for (int rv = 0; rv < RV; ++rv) {
        const F e = exp_nonpositive(load<F>(scores + (j - j0) * R + rv * W) - largest[rv]);
        store(scores + (j - j0) * R + rv * W, e);
        total[rv] += e;
      }
    int64_t l0 = 0;
    for (; l0 + RB <= R; l0 += RB) prefill_values_rows<Isa, R, RB, C>(scores, values + j0 * D, D, j1 - j0, l0, out + l0 * D);
    for (; l0 < R; l0 += 2) prefill_values_rows<Isa, R, 2, C>(scores, values + j0 * D, D, j1 - j0, l0, out + l0 * D);
  }
  for (int l = 0; l < R && b * R + l < rows; ++l) {
    const int64_t r = b * R + l, token = r / a.G, g = r % a.G;
    float* y = a.y + (h * a.G + g) * a.y_head + token * a.y_row;
    const float row_total = total[l / W][l % W];
    for (int64_t d = 0; d < D; ++d) y[d] = out[l * D + d] / row_total;
  }
}

template <class Isa, class T>
inline void attend_prefill_blocks(const PrefillArgs& a, int64_t begin, int64_t end) {  // tasks [begin, end)
  const int64_t D = a.D;
  // A head's keys and values as float32 rows of D, read by every block of the head: a float32 cache's
  // own rows where they are D apart (a layer's are), else copies, widened from float16, once per head.
  const bool widen = !std::is_same_v<T, float> || a.k_row != D || a.v_row != D;
  std::vector<float> widened_keys(widen ? a.S * D : 0), widened_values(widen ? a.S * D : 0), buffer;
  const float *keys = widened_keys.data(), *values = widened_values.data();
  int64_t head = -1;  // whose keys and values those are
  for (int64_t task = begin; task < end; ++task) {
    // A head's blocks alternately from both ends: the later ones see more keys, and each thread's
    // share of the tasks gets as many of both.
    const int64_t h = task / a.blocks, i = task % a.blocks, b = i % 2 == 0 ? i / 2 : a.blocks - 1 - i / 2;
    if (h != head && !widen) {
      keys = (const float*)a.k + h * a.k_head, values = (const float*)a.v + h * a.v_head;
    } else if (h != head) {
      using F = typename Vec<Isa::W>::f32;
      for (int64_t j = 0; j < a.S; ++j)
        for (int64_t d = 0; d < D; d += Isa::W) {
          const F key = cache_floats<Isa, F>((const T*)a.k + h * a.k_head + j * a.k_row + d);
          const F value = cache_floats<Isa, F>((const T*)a.v + h * a.v_head + j * a.v_row + d);
          __builtin_memcpy(widened_keys.data() + j * D + d, &key, sizeof key);
          __builtin_memcpy(widened_values.data() + j * D + d, &value, sizeof value);
        }
    }
    head = h;
    if (a.block_rows == prefill_registers(Isa::W) * Isa::W)
      prefill_block<Isa, prefill_registers(Isa::W)>(a, h, b, keys, values, buffer);
    else if (a.block_rows == 2 * Isa::W)
      prefill_block<Isa, 2>(a, h, b, keys, values, buffer);
    else
      prefill_block<Isa, 1>(a, h, b, keys, values, buffer);
  }
}

// ---------------------------------------------------------------- GELU
// GELU with tanh's approximation (gelu_new, gelu_pytorch_tanh): x (1 + tanh u) / 2 = x sigmoid(2u),
// u = sqrt(2 / pi) (x + 0.044715 x^3), from exp(-2 |u|) (exp_nonpositive, ~1e-7 relative): PyTorch's
// tanh takes ~2 ns a number on the AVX2 EPYC, 30 us of every 8,192-wide MLP of a decode step.
template <class F>
inline F gelu_tanh_of(F x) {
  const F u = 0.7978845608f * (x + 0.044715f * x * x * x);
  const F e = exp_nonpositive(-2.f * (u < 0 ? -u : u));
  const F r = 1.f / (1.f + e);
  return x * (u >= 0 ? r : e * r);
}

template <class Isa>
inline void gelu_tanh_range(const float* x, float* y, int64_t begin, int64_t end) {
  using F = typename Vec<Isa::W>::f32;
  int64_t i = begin;
  for (; i + Isa::W <= end; i += Isa::W) {
    const F g = gelu_tanh_of(load<F>(x + i));
    __builtin_memcpy(y + i, &g, sizeof g);
  }
  if (i < end) {  // the last few, through a vector of zeros
    F v = {};
    __builtin_memcpy(&v, x + i, (end - i) * sizeof(float));
    const F g = gelu_tanh_of(v);
    __builtin_memcpy(y + i, &g, (end - i) * sizeof(float));
  }
}

// ---------------------------------------------------------------- RMSNorm
// Rows [begin, end) of x (D each): y = w * (x * r), r = 1 / sqrt(mean(x^2) + eps), in float32 and with
// the roundings of engine/layers.py's PyTorch ops (x * r rounded, then times w); only the order of
// the sum of squares differs (~1 ulp of r). PyTorch took ~9 ops a norm, two norms a Llama-style
// layer: a third of the ops of a Qwen2.5-Coder decode step. Each row alone: a verify's rows are
// their decode steps'.
template <class Isa>
inline void rms_norm_rows(const float* x, const float* w, float* y, int64_t D, float eps, int64_t begin, int64_t end) {
  constexpr int W = Isa::W;
  using F = typename Vec<W>::f32;
  for (int64_t row = begin; row < end; ++row) {
    const float* in = x + row * D;
    float* out = y + row * D;
    F squares[4] = {};
    int64_t i = 0;
    for (; i + 4 * W <= D; i += 4 * W)
      for (int r = 0; r < 4; ++r) {
        const F v = load<F>(in + i + r * W);
        squares[r] += v * v;
      }
    for (; i + W <= D; i += W) {
      const F v = load<F>(in + i);
      squares[0] += v * v;
    }
    float total = halving_sum((squares[0] + squares[1]) + (squares[2] + squares[3]));
    for (; i < D; ++i) total += in[i] * in[i];
    const float r = 1.f / std::sqrt(total / float(D) + eps);
    for (i = 0; i + W <= D; i += W) {
      const F v = load<F>(w + i) * (load<F>(in + i) * r);
      __builtin_memcpy(out + i, &v, sizeof v);
    }
    for (; i < D; ++i) out[i] = w[i] * (in[i] * r);
  }
}

struct Kernels {
  void (*float32)(const FloatArgs&, int64_t, int64_t);
  void (*int8)(const Int8Args&, int64_t, int64_t);
  void (*int4)(const Int4Args&, int64_t, int64_t);
  void (*int8x16)(const Int8x16Args&, int64_t, int64_t);
  // round_activations in this instruction set's build: to int16 for the decode kernels, to bytes
  // for the prefill products (inlined into an op, built for any x86-64, it ran as scalar SSE).
  void (*int16_activations)(const float*, int64_t, int64_t, int64_t, float, int16_t*, float*, float*);
  void (*byte_activations)(const float*, int64_t, int64_t, int64_t, float, int8_t*, float*, float*);
  void (*int8_gemm)(const Int8GemmArgs&, int64_t, int64_t);
  void (*int4_gemm)(const Int4GemmArgs&, int64_t, int64_t);
  void (*attend)(const AttendArgs&, int64_t, int64_t);
  void (*attend_half)(const AttendArgs&, int64_t, int64_t);  // over a float16 cache
  void (*attend_prefill)(const PrefillArgs&, int64_t, int64_t);
  void (*attend_prefill_half)(const PrefillArgs&, int64_t, int64_t);
  void (*gelu_tanh)(const float*, float*, int64_t, int64_t);
  void (*rms_norm)(const float*, const float*, float*, int64_t, float, int64_t, int64_t);
  float int8_gemm_levels;      // int8_gemm's x: bytes in [-levels, levels],
  int64_t int8_gemm_columns;   // one scale per this many columns
  int64_t int4_gemm_columns;   // int4_gemm's x: one scale per this many columns, or per weight group (0)
  int64_t lanes;               // floats a register holds: attend_prefill's blocks are 1, 2 or prefill_registers(lanes) registers of rows
  void (*int4x8)(const Int4x8Args&, int64_t, int64_t);  // int4 x bytes for decode: AVX-512 VNNI only (null elsewhere)
  int64_t int8_gemm_blocks = 1;  // weight blocks an int8_gemm task's unit holds: 8 (32 rows, two tiles) for AMX's
};

#define KERNEL __attribute__((flatten))
KERNEL void float_baseline(const FloatArgs& a, int64_t b, int64_t e) { float_rows_of<Baseline>(a, b, e); }
KERNEL void int8_baseline(const Int8Args& a, int64_t b, int64_t e) { int8_blocks<Baseline>(a, b, e); }
KERNEL void int4_baseline(const Int4Args& a, int64_t b, int64_t e) { int4_blocks<Baseline>(a, b, e); }
KERNEL void int8x16_baseline(const Int8x16Args& a, int64_t b, int64_t e) { int8x16_blocks<Baseline>(a, b, e); }
template <class Q>
KERNEL void activations_baseline(const float* x, int64_t rows, int64_t K, int64_t g, float levels, Q* q, float* s,
                               float* x_sums) {
  round_activations(x, rows, K, g, levels, q, s, x_sums);
}
KERNEL void int8_gemm_baseline(const Int8GemmArgs& a, int64_t b, int64_t e) { int8_gemm_blocks(a, b, e); }
KERNEL void int4_gemm_baseline(const Int4GemmArgs& a, int64_t b, int64_t e) { int4_gemm_blocks(a, b, e); }
KERNEL void attend_baseline(const AttendArgs& a, int64_t b, int64_t e) { attend_chunks<Baseline, float>(a, b, e); }
KERNEL void attend_half_baseline(const AttendArgs& a, int64_t b, int64_t e) { attend_chunks<Baseline, uint16_t>(a, b, e); }
KERNEL void attend_prefill_baseline(const PrefillArgs& a, int64_t b, int64_t e) { attend_prefill_blocks<Baseline, float>(a, b, e); }
KERNEL void attend_prefill_half_baseline(const PrefillArgs& a, int64_t b, int64_t e) { attend_prefill_blocks<Baseline, uint16_t>(a, b, e); }
KERNEL void gelu_tanh_baseline(const float* x, float* y, int64_t b, int64_t e) { gelu_tanh_range<Baseline>(x, y, b, e); }
KERNEL void rms_norm_baseline(const float* x, const float* w, float* y, int64_t D, float eps, int64_t b, int64_t e) { rms_norm_rows<Baseline>(x, w, y, D, eps, b, e); }
#if defined(__x86_64__)
KERNEL AVX2 void int8_gemm_avx2(const Int8GemmArgs& a, int64_t b, int64_t e) { int8_gemm_avx2_blocks(a, b, e); }
KERNEL AVX2 void int4_gemm_avx2(const Int4GemmArgs& a, int64_t b, int64_t e) { int4_gemm_avx2_blocks(a, b, e); }
KERNEL AVX2 void float_avx2(const FloatArgs& a, int64_t b, int64_t e) { float_rows_of<Avx2>(a, b, e); }
KERNEL AVX2 void int8_avx2(const Int8Args& a, int64_t b, int64_t e) { int8_blocks<Avx2>(a, b, e); }
KERNEL AVX2 void attend_avx2(const AttendArgs& a, int64_t b, int64_t e) { attend_chunks<Avx2, float>(a, b, e); }
KERNEL AVX2 void attend_half_avx2(const AttendArgs& a, int64_t b, int64_t e) { attend_chunks<Avx2, uint16_t>(a, b, e); }
KERNEL AVX2 void attend_prefill_avx2(const PrefillArgs& a, int64_t b, int64_t e) { attend_prefill_blocks<Avx2, float>(a, b, e); }
KERNEL AVX2 void attend_prefill_half_avx2(const PrefillArgs& a, int64_t b, int64_t e) { attend_prefill_blocks<Avx2, uint16_t>(a, b, e); }
KERNEL AVX2 void gelu_tanh_avx2(const float* x, float* y, int64_t b, int64_t e) { gelu_tanh_range<Avx2>(x, y, b, e); }
KERNEL AVX2 void rms_norm_avx2(const float* x, const float* w, float* y, int64_t D, float eps, int64_t b, int64_t e) { rms_norm_rows<Avx2>(x, w, y, D, eps, b, e); }
KERNEL AVX2 void int4_avx2(const Int4Args& a, int64_t b, int64_t e) { int4_blocks<Avx2>(a, b, e); }
KERNEL AVX2 void int8x16_avx2(const Int8x16Args& a, int64_t b, int64_t e) { int8x16_blocks<Avx2>(a, b, e); }
template <class Q>
KERNEL AVX2 void activations_avx2(const float* x, int64_t rows, int64_t K, int64_t g, float levels, Q* q, float* s,
                               float* x_sums) {
  round_activations(x, rows, K, g, levels, q, s, x_sums);
}
KERNEL AVX512 void float_avx512(const FloatArgs& a, int64_t b, int64_t e) { float_rows_of<Avx512>(a, b, e); }
KERNEL AVX512 void int8_avx512(const Int8Args& a, int64_t b, int64_t e) { int8_blocks<Avx512>(a, b, e); }
KERNEL AVX512 void attend_avx512(const AttendArgs& a, int64_t b, int64_t e) { attend_chunks<Avx512, float>(a, b, e); }
KERNEL AVX512 void attend_half_avx512(const AttendArgs& a, int64_t b, int64_t e) { attend_chunks<Avx512, uint16_t>(a, b, e); }
KERNEL AVX512 void attend_prefill_avx512(const PrefillArgs& a, int64_t b, int64_t e) { attend_prefill_blocks<Avx512, float>(a, b, e); }
KERNEL AVX512 void attend_prefill_half_avx512(const PrefillArgs& a, int64_t b, int64_t e) { attend_prefill_blocks<Avx512, uint16_t>(a, b, e); }
KERNEL AVX512 void gelu_tanh_avx512(const float* x, float* y, int64_t b, int64_t e) { gelu_tanh_range<Avx512>(x, y, b, e); }
KERNEL AVX512 void rms_norm_avx512(const float* x, const float* w, float* y, int64_t D, float eps, int64_t b, int64_t e) { rms_norm_rows<Avx512>(x, w, y, D, eps, b, e); }
KERNEL AVX512 void int4_avx512(const Int4Args& a, int64_t b, int64_t e) { int4_blocks<Avx512>(a, b, e); }
KERNEL AVX512 void int8x16_avx512(const Int8x16Args& a, int64_t b, int64_t e) { int8x16_blocks<Avx512>(a, b, e); }
KERNEL AVX512 void int8_gemm_avx512(const Int8GemmArgs& a, int64_t b, int64_t e) { int8_gemm_vnni_blocks(a, b, e); }
KERNEL AVX512 void int4_gemm_avx512(const Int4GemmArgs& a, int64_t b, int64_t e) { int4_gemm_vnni_blocks(a, b, e); }
#ifdef HAVE_AMX
// Tasks [b, e) of two tiles of 16 rows each.
KERNEL AMX void int8_gemm_amx(const Int8GemmArgs& a, int64_t b, int64_t e) { int8_gemm_amx_tiles(a, 2 * b, std::min(2 * e, (a.N + 15) / 16)); }
#endif
KERNEL AVX512 void int4x8_avx512(const Int4x8Args& a, int64_t b, int64_t e) { int4x8_blocks(a, b, e); }
template <class Q>
KERNEL AVX512 void activations_avx512(const float* x, int64_t rows, int64_t K, int64_t g, float levels, Q* q, float* s,
                               float* x_sums) {
  round_activations(x, rows, K, g, levels, q, s, x_sums);
}
#endif

std::string isas() {  // the instruction sets this CPU can run, best first
  std::string found;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vnni"))
    found += "avx512 ";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) found += "avx2 ";
#endif
  return found + "baseline";
}

// Whether the int8 prefill product can use AMX tiles here (product isa "amx": the AVX-512 kernels
// with AMX's int8 product). Not in isas(): the decode kernels are the same either way.
bool amx() {
#if defined(HAVE_AMX) && defined(__linux__)
  static const bool ready = [] {
    unsigned eax, ebx, ecx, edx;
    if (isas().rfind("avx512 ", 0) != 0 ||  // the AVX-512 build runs here
        !__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || !(edx & (1u << 24)) || !(edx & (1u << 25)))  // AMX-TILE, AMX-INT8
      return false;
    // Linux gives a process the tiles' 8 KB of register state only once asked (ARCH_REQ_XCOMP_PERM
    // for XTILEDATA); a refusal (an old kernel, a hypervisor) leaves the VNNI product.
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }();
  return ready;
#else
  return false;
#endif
}

Kernels kernels_for(c10::string_view isa) {
  static const std::string available = " " + isas() + " ";
  const std::string name(isa);
#ifdef HAVE_AMX
  if (name == "amx" && amx()) {
    Kernels run = kernels_for("avx512");
    run.int8_gemm = int8_gemm_amx, run.int8_gemm_blocks = 8;
    return run;
  }
#endif
  TORCH_CHECK(available.find(" " + name + " ") != std::string::npos, "instruction set ", name, " is not available here");
#if defined(__x86_64__)
  if (name == "avx512") return {float_avx512, int8_avx512, int4_avx512, int8x16_avx512, activations_avx512<int16_t>, activations_avx512<int8_t>, int8_gemm_avx512, int4_gemm_avx512, attend_avx512, attend_half_avx512, attend_prefill_avx512, attend_prefill_half_avx512, gelu_tanh_avx512, rms_norm_avx512, VNNI_ACTIVATION_LEVELS, VNNI_GROUP_COLUMNS, VNNI_GROUP_COLUMNS, Avx512::W, int4x8_avx512};
  if (name == "avx2") return {float_avx2, int8_avx2, int4_avx2, int8x16_avx2, activations_avx2<int16_t>, activations_avx2<int8_t>, int8_gemm_avx2, int4_gemm_avx2, attend_avx2, attend_half_avx2, attend_prefill_avx2, attend_prefill_half_avx2, gelu_tanh_avx2, rms_norm_avx2, ACTIVATION_LEVELS, GROUP_COLUMNS, VNNI_GROUP_COLUMNS, Avx2::W};
#endif
  return {float_baseline, int8_baseline, int4_baseline, int8x16_baseline, activations_baseline<int16_t>, activations_baseline<int8_t>, int8_gemm_baseline, int4_gemm_baseline, attend_baseline, attend_half_baseline, attend_prefill_baseline, attend_prefill_half_baseline, gelu_tanh_baseline, rms_norm_baseline, ACTIVATION_LEVELS, GROUP_COLUMNS, 0, Baseline::W};
}

// At least 64 KB of weights per task: each thread streams contiguous rows, small layers use one.
int64_t grain(int64_t bytes_per_unit) { return std::max<int64_t>(1, (64 << 10) / bytes_per_unit); }

// The ops take x (..., K) and give y (..., N) in x's dtype; the kernels work in float32.
// The ops' own tensors are made without a dispatch where none is needed: a decode call is a few
// microseconds of arithmetic on a small model, and each reshape, conversion or view costs ~1 us.

// x's numbers as contiguous float32, read as rows of its last dim (x itself when it is so already).
at::Tensor float_rows(const at::Tensor& x) {
  if (x.scalar_type() == at::kFloat && x.is_contiguous()) return x;
  return x.to(at::kFloat).contiguous();
}

at::Tensor float_bias(const c10::optional<at::Tensor>& bias, int64_t N) {
  if (!bias) return at::Tensor();
  TORCH_CHECK(bias->numel() == N, "bias: (N,)");
  return bias->scalar_type() == at::kFloat && bias->is_contiguous() ? *bias : bias->to(at::kFloat).contiguous();
}

// float32 y of x's shape with N in its last dim, and y in x's dtype once written.
at::Tensor float_output(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = N;
  return at::empty(sizes, x.options().dtype(at::kFloat));
}

// n numbers left as allocated, for a buffer every one of whose numbers is written before it is read:
// std::vector zeroes its numbers, a prefill chunk's rounded x (2 MB for 256 tokens of 8,192 columns)
// in one thread while the other waits (2 % of an 8192 -> 2048 product).
template <class T>
std::unique_ptr<T[]> uninitialized(int64_t n) { return std::unique_ptr<T[]>(new T[n]); }

at::Tensor in_dtype_of(const at::Tensor& y, const at::Tensor& x) { return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type()); }

// y = x W^T + bias for float32 W (N, K) as in the checkpoint, any number of tokens (meant for few).
at::Tensor float_matvec(const at::Tensor& x_in, const at::Tensor& weight, const c10::optional<at::Tensor>& bias_in,
                        c10::string_view isa) {
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.dim() == 2 && weight.is_contiguous() && x_in.size(-1) == weight.size(1),
              "weight: float32 (N, K), contiguous, K = x's last dim");
  const int64_t N = weight.size(0), K = weight.size(1);
  const at::Tensor x = float_rows(x_in);
  const at::Tensor bias = float_bias(bias_in, N);
  const Kernels run = kernels_for(isa);
  at::Tensor y = float_output(x_in, N);
  const FloatArgs a{x.data_ptr<float>(), weight.data_ptr<float>(), bias.defined() ? bias.data_ptr<float>() : nullptr,
                    y.data_ptr<float>(), K ? x.numel() / K : 0, N, K};
  at::parallel_for(0, N, grain(4 * K), [&](int64_t b, int64_t e) { run.float32(a, b, e); });
  return in_dtype_of(y, x_in);
}

// An int8 op's inputs, checked: x as float32 rows, the bias as float32 (or undefined).
struct Int8Inputs {
  at::Tensor x, bias;
  int64_t M, K, N, blocks;
  const float* bias_data() const { return bias.defined() ? bias.data_ptr<float>() : nullptr; }
};

Int8Inputs int8_inputs(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& scales,
                       const c10::optional<at::Tensor>& bias_in, int64_t k_multiple) {
  Int8Inputs in;
  in.x = float_rows(x_in);
  in.K = x_in.size(-1), in.M = in.K ? in.x.numel() / in.K : 0, in.N = scales.numel(), in.blocks = (in.N + 3) / 4;
  in.bias = float_bias(bias_in, in.N);
  TORCH_CHECK(in.K % k_multiple == 0 && weight.scalar_type() == at::kChar && weight.is_contiguous() &&
                  weight.numel() == in.blocks * 4 * in.K,
              "weight: int8 from pack_int8_for_cpu, K a multiple of ", k_multiple);
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous(), "scales: float32 (N,)");
  return in;
}

at::Tensor int8_matvec(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& scales,
                       const c10::optional<at::Tensor>& bias_in, c10::string_view isa) {
  const Int8Inputs in = int8_inputs(x_in, weight, scales, bias_in, 32);
  const Kernels run = kernels_for(isa);
  at::Tensor y = float_output(x_in, in.N);
  const Int8Args a{in.x.data_ptr<float>(), weight.data_ptr<int8_t>(), scales.data_ptr<float>(), in.bias_data(),
                   y.data_ptr<float>(), in.M, in.N, in.K};
  at::parallel_for(0, in.blocks, grain(4 * in.K), [&](int64_t b, int64_t e) { run.int8(a, b, e); });
  return in_dtype_of(y, x_in);
}

// int8_matvec with x rounded to int16 (int8x16_blocks).
at::Tensor int8_matvec_i16(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& scales,
                           const c10::optional<at::Tensor>& bias_in, c10::string_view isa) {
  const Int8Inputs in = int8_inputs(x_in, weight, scales, bias_in, 16);
  const Kernels run = kernels_for(isa);
  const int64_t groups = (in.K + GROUP_COLUMNS - 1) / GROUP_COLUMNS;
  std::vector<int16_t> xq(in.M * in.K);
  std::vector<float> x_scales(in.M * groups);
  run.int16_activations(in.x.data_ptr<float>(), in.M, in.K, GROUP_COLUMNS, INT16_LEVELS, xq.data(), x_scales.data(), nullptr);
  at::Tensor y = float_output(x_in, in.N);
  const Int8x16Args a{xq.data(), x_scales.data(), weight.data_ptr<int8_t>(), scales.data_ptr<float>(), in.bias_data(),
                      y.data_ptr<float>(), in.M, in.N, in.K, groups};
  at::parallel_for(0, in.blocks, grain(4 * in.K), [&](int64_t b, int64_t e) { run.int8x16(a, b, e); });
  return in_dtype_of(y, x_in);
}

at::Tensor int8_matmul(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& scales,
                       const c10::optional<at::Tensor>& bias_in, c10::string_view isa) {
  const Int8Inputs in = int8_inputs(x_in, weight, scales, bias_in, 16);
  const Kernels run = kernels_for(isa);
  const int64_t group = run.int8_gemm_columns, groups = (in.K + group - 1) / group;
  // Each row rounded in one pass (7 tensor ops took 7 parallel regions, each a wait for the other
  // thread on a busy machine), in the instruction set's own build (inlined here it was scalar SSE,
  // 13 % of a 8192 -> 2048 product).
  const std::unique_ptr<int8_t[]> q = uninitialized<int8_t>(in.M * in.K);
  std::vector<float> x_scales(in.M * groups);
  const float* x = in.x.data_ptr<float>();
  at::parallel_for(0, in.M, grain(4 * in.K), [&](int64_t b, int64_t e) {
    run.byte_activations(x + b * in.K, e - b, in.K, group, run.int8_gemm_levels, q.get() + b * in.K,
                         x_scales.data() + b * groups, nullptr);
  });
  at::Tensor y = float_output(x_in, in.N);
  const Int8GemmArgs a{q.get(), x_scales.data(), weight.data_ptr<int8_t>(), scales.data_ptr<float>(),
                       in.bias_data(), y.data_ptr<float>(), in.M, in.N, in.K, groups, group};
  at::parallel_for(0, (in.blocks + run.int8_gemm_blocks - 1) / run.int8_gemm_blocks, 1, [&](int64_t b, int64_t e) { run.int8_gemm(a, b, e); });
  return in_dtype_of(y, x_in);
}

// An int4 op's inputs, checked: x as float32 rows, the bias as float32 (or undefined).
struct Int4Inputs {
  at::Tensor x, bias;
  int64_t M, K, blocks;
  const float* bias_data() const { return bias.defined() ? bias.data_ptr<float>() : nullptr; }
};

Int4Inputs int4_inputs(const at::Tensor& x_in, const at::Tensor& weight, int64_t N, int64_t group_size,
                       const c10::optional<at::Tensor>& bias_in) {
  Int4Inputs in;
  in.x = float_rows(x_in);
  in.K = x_in.size(-1), in.M = in.K ? in.x.numel() / in.K : 0, in.blocks = (N + 7) / 8;
  in.bias = float_bias(bias_in, N);
  TORCH_CHECK(group_size % 32 == 0 && group_size <= 256 && in.K % group_size == 0, "group size: 32, 64, 128 or 256, dividing K");
  TORCH_CHECK(weight.scalar_type() == at::kByte && weight.is_contiguous() &&
                  weight.numel() == in.blocks * in.K / group_size * int4_group_bytes(group_size),
              "weight: uint8 from pack_int4_for_cpu");
  return in;
}

// int4_matvec's and int4_matvec_i8's steps: x rounded to Q per weight group, then `kernel` over the blocks.
template <class Q>
at::Tensor int4_decode(const Int4Inputs& in, const at::Tensor& x_in, const at::Tensor& weight, int64_t N, int64_t group_size,
                       void (*round)(const float*, int64_t, int64_t, int64_t, float, Q*, float*, float*), float levels,
                       void (*kernel)(const Int4DecodeArgs<Q>&, int64_t, int64_t)) {
  const int64_t groups = in.K / group_size;
  std::vector<Q> xq(in.M * in.K);
  std::vector<float> x_scales(in.M * groups), x_sums(in.M * groups);
  round(in.x.data_ptr<float>(), in.M, in.K, group_size, levels, xq.data(), x_scales.data(), x_sums.data());
  at::Tensor y = float_output(x_in, N);
  const Int4DecodeArgs<Q> a{xq.data(), x_scales.data(), x_sums.data(), weight.data_ptr<uint8_t>(), in.bias_data(), y.data_ptr<float>(),
                            in.M, N, in.K, group_size};
  at::parallel_for(0, in.blocks, grain(8 * in.K / 2), [&](int64_t b, int64_t e) { kernel(a, b, e); });
  return in_dtype_of(y, x_in);
}

at::Tensor int4_matvec(const at::Tensor& x_in, const at::Tensor& weight, int64_t N, int64_t group_size,
                       const c10::optional<at::Tensor>& bias_in, c10::string_view isa) {
  const Int4Inputs in = int4_inputs(x_in, weight, N, group_size, bias_in);
  const Kernels run = kernels_for(isa);
  return int4_decode<int16_t>(in, x_in, weight, N, group_size, run.int16_activations, INT16_LEVELS, run.int4);
}

// int4_matvec with x rounded to bytes per weight group (int4x8_blocks): AVX-512 VNNI only.
at::Tensor int4_matvec_i8(const at::Tensor& x_in, const at::Tensor& weight, int64_t N, int64_t group_size,
                          const c10::optional<at::Tensor>& bias_in, c10::string_view isa) {
  const Int4Inputs in = int4_inputs(x_in, weight, N, group_size, bias_in);
  const Kernels run = kernels_for(isa);
  TORCH_CHECK(run.int4x8, "int4_matvec_i8 needs AVX-512 VNNI (instruction set avx512), not ", isa);
  return int4_decode<int8_t>(in, x_in, weight, N, group_size, run.byte_activations, 127.f, run.int4x8);
}

at::Tensor int4_matmul(const at::Tensor& x_in, const at::Tensor& weight, int64_t N, int64_t group_size,
                       const c10::optional<at::Tensor>& bias_in, c10::string_view isa) {
  const Int4Inputs in = int4_inputs(x_in, weight, N, group_size, bias_in);
  const Kernels run = kernels_for(isa);
  const int64_t x_group = run.int4_gemm_columns && in.K % run.int4_gemm_columns == 0 ? std::max(group_size, run.int4_gemm_columns) : group_size;
  const int64_t groups = in.K / x_group;
  const std::unique_ptr<int8_t[]> q = uninitialized<int8_t>(in.M * in.K);
  std::vector<float> x_scales(in.M * groups), x_sums(run.int4_gemm_columns ? 0 : in.M * groups);
  const float* x = in.x.data_ptr<float>();
  at::parallel_for(0, in.M, grain(4 * in.K), [&](int64_t b, int64_t e) {
    run.byte_activations(x + b * in.K, e - b, in.K, x_group, 127.f, q.get() + b * in.K, x_scales.data() + b * groups,
                         x_sums.empty() ? nullptr : x_sums.data() + b * groups);
  });
  at::Tensor y = float_output(x_in, N);
  const Int4GemmArgs a{q.get(), x_scales.data(), x_sums.data(), weight.data_ptr<uint8_t>(), in.bias_data(), y.data_ptr<float>(),
                       in.M, N, in.K, group_size, x_group};
  at::parallel_for(0, in.blocks, 1, [&](int64_t b, int64_t e) { run.int4_gemm(a, b, e); });
  return in_dtype_of(y, x_in);
}

at::Tensor gelu_tanh(const at::Tensor& x_in, c10::string_view isa) {
  const at::Tensor x = float_rows(x_in);
  const Kernels run = kernels_for(isa);
  at::Tensor y = at::empty(x.sizes(), x.options());
  const float* in = x.data_ptr<float>();
  float* out = y.data_ptr<float>();
  at::parallel_for(0, x.numel(), 1 << 15, [&](int64_t b, int64_t e) { run.gelu_tanh(in, out, b, e); });
  return in_dtype_of(y, x_in);
}

// RMSNorm over x's last dim (Llama and the architectures after it): x and weight float32.
at::Tensor rms_norm(const at::Tensor& x_in, const at::Tensor& weight_in, double eps, c10::string_view isa) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && weight_in.scalar_type() == at::kFloat && weight_in.dim() == 1 &&
              x_in.dim() >= 1 && x_in.size(-1) == weight_in.size(0), "x: (..., D) float32, weight: (D,) float32");
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const Kernels run = kernels_for(isa);
  at::Tensor y = at::empty(x.sizes(), x.options());
  const int64_t D = x.size(-1), rows = D ? x.numel() / D : 0;
  const float *in = x.data_ptr<float>(), *w = weight.data_ptr<float>();
  float* out = y.data_ptr<float>();
  // One row (a decode step) in this thread: waking the others costs more than its ~1 us.
  at::parallel_for(0, rows, std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(D, 1)),
                   [&](int64_t b, int64_t e) { run.rms_norm(in, w, out, D, float(eps), b, e); });
  return y;
}

// Rotary positions: x (..., T, ..., D) float32, any strides, its dim position_dim the T positions;
// sin, cos (T, R) as engine/layers.py's rotary_sin_cos makes them. Interleaved (GPT-J, CodeGen): pairs
// (2i, 2i + 1) of each head's first R dims become x * cos + (the pair swapped) * sin, sin negated on
// each pair's first; halves (Llama and after): pairs (i, i + R/2), x * cos + (-x2, x1) * sin. Other
// dims are copied, into a contiguous tensor. One op where PyTorch took six to eight (interleaved: a
// copy of the strided view, flip, two products, a sum, a concatenation; 39 us a layer of codegen-350M's
// decode step), in the same order of float operations, so the same numbers. Each row is computed
// alone, so a verify's rows are their decode steps'.
at::Tensor rotary(const at::Tensor& x_in, const at::Tensor& sin_in, const at::Tensor& cos_in, int64_t position_dim, bool interleaved) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && position_dim >= 0 && position_dim + 1 < x_in.dim(),
              "x: (..., T, ..., D) float32, T at position_dim");
  // x read as it is, strided (CodeGen passes every second of its fused [q | v | k]): copying it first
  // made a codegen-350M decode step's call 5.0 us against 3.3 (a 256-token chunk's: the same).
  const at::Tensor x = x_in.stride(-1) == 1 ? x_in : x_in.contiguous(), sin = sin_in.contiguous(), cos = cos_in.contiguous();
  const int64_t T = x.size(position_dim), D = x.size(-1), R = sin.size(-1), rows = x.numel() / D, dims = x.dim() - 1;
  TORCH_CHECK(sin.dim() == 2 && sin.sizes() == cos.sizes() && sin.size(0) == T && R % 2 == 0 && R <= D &&
                  sin.scalar_type() == at::kFloat && cos.scalar_type() == at::kFloat,
              "sin, cos: (T, R) float32, R even and at most D");
  int64_t rows_per_position = 1;  // the rows between consecutive positions
  for (int64_t d = position_dim + 1; d + 1 < x.dim(); ++d) rows_per_position *= x.size(d);
  at::Tensor y = at::empty(x.sizes(), x.options());
  const std::vector<int64_t> sizes = x.sizes().vec(), strides = x.strides().vec();
  const float *in = x.data_ptr<float>(), *sines = sin.data_ptr<float>(), *cosines = cos.data_ptr<float>();
  float* out = y.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, (1 << 14) / D), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t t = row / rows_per_position % T;
      int64_t offset = 0;  // of row in x: its index over the dims before the last, in x's strides
      for (int64_t d = dims - 1, rest = row; d >= 0; rest /= sizes[d], --d) offset += rest % sizes[d] * strides[d];
      const float *a = in + offset, *s = sines + t * R, *c = cosines + t * R;
      float* o = out + row * D;
      if (interleaved)
        for (int64_t i = 0; i < R; i += 2) {
          o[i] = a[i] * c[i] + a[i + 1] * s[i];
          o[i + 1] = a[i + 1] * c[i + 1] + a[i] * s[i + 1];
        }
      else
        for (int64_t i = 0, h = R / 2; i < h; ++i) {
          o[i] = a[i] * c[i] + (-a[i + h]) * s[i];
          o[i + h] = a[i + h] * c[i + h] + a[i] * s[i + h];
        }
      for (int64_t i = R; i < D; ++i) o[i] = a[i];
    }
  });
  return y;
}

// ---------------------------------------------------------------- packing
// The layouts the kernels read, made from quantize_int8's and quantize_int4's at every load of a
// quantized model (engine/quantize.py, pack_int8_for_cpu and pack_int4_for_cpu, documents them; its
// unpack functions are their inverse). One pass over the weights: as PyTorch ops, a dozen passes
// with strided copies took most of a load from the quantized cache (santacoder int4: 1.4 of 2.2 s).

// weight int8 (N, K) -> (blocks, K / 16, 4, 16): blocks of 4 rows, zero rows padding the last.
at::Tensor pack_int8(const at::Tensor& weight_in) {
  TORCH_CHECK(weight_in.scalar_type() == at::kChar && weight_in.dim() == 2 && weight_in.size(1) % 16 == 0,
              "weight: int8 (N, K), K a multiple of 16");
  const at::Tensor weight = weight_in.contiguous();
  const int64_t N = weight.size(0), K = weight.size(1), blocks = (N + 3) / 4, chunks = K / 16;
  at::Tensor packed = at::empty({blocks, chunks, 4, 16}, weight.options());
  const int8_t* in = weight.data_ptr<int8_t>();
  int8_t* out = packed.data_ptr<int8_t>();
  at::parallel_for(0, blocks, grain(4 * K), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (int64_t r = 0; r < 4; ++r) {
        const int64_t row = 4 * b + r;
        for (int64_t c = 0; c < chunks; ++c) {
          int8_t* to = out + ((b * chunks + c) * 4 + r) * 16;
          if (row < N)
            std::memcpy(to, in + row * K + c * 16, 16);
          else
            std::memset(to, 0, 16);
        }
      }
  });
  return packed;
}

// q uint8 (N, K / 2) (column 2j in byte j's high nibble, 2j + 1 in its low one) and scales_and_zeros
// float32 (K / g, N, 2) -> (blocks, K / g, 4 g + 20): blocks of 8 rows, each group's weights (16
// bytes per 4 columns: bytes 2r and 2r + 1 hold row r's columns 4c, 4c + 1 in their low nibbles and
// 4c + 2, 4c + 3 in their high ones), then the 8 rows' scales as float16 and their zero points z
// (w = (q - z) * scale, z = 8 - zero / scale computed in float32 as quantize.py's zero_points does)
// in 4 bytes, row r's in bits 4r to 4r + 3. A z that is not a whole number in [0, 15] is a
// ValueError: the layout cannot hold it.
at::Tensor pack_int4(const at::Tensor& q_in, const at::Tensor& scales_and_zeros_in, int64_t group_size) {
  TORCH_CHECK(q_in.scalar_type() == at::kByte && q_in.dim() == 2 && group_size > 0 && group_size % 4 == 0 &&
                  2 * q_in.size(1) % group_size == 0,
              "q: uint8 (N, K / 2), K a multiple of the group size, itself a multiple of 4");
  const at::Tensor q = q_in.contiguous(), scales_and_zeros = scales_and_zeros_in.to(at::kFloat).contiguous();
  const int64_t N = q.size(0), K = 2 * q.size(1), groups = K / group_size, blocks = (N + 7) / 8;
  TORCH_CHECK(scales_and_zeros.dim() == 3 && scales_and_zeros.size(0) == groups && scales_and_zeros.size(1) == N &&
                  scales_and_zeros.size(2) == 2,
              "scales_and_zeros: (K / group size, N, 2)");
  const int64_t group_bytes = 4 * group_size + 20;
  at::Tensor packed = at::empty({blocks, groups, group_bytes}, q.options());
  const uint8_t* in = q.data_ptr<uint8_t>();
  const float* sz = scales_and_zeros.data_ptr<float>();
  uint8_t* out = packed.data_ptr<uint8_t>();
  std::atomic<bool> whole{true};
  at::parallel_for(0, blocks, grain(4 * K), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (int64_t g = 0; g < groups; ++g) {
        uint8_t* to = out + (b * groups + g) * group_bytes;
        // Row r's bytes of quad c (columns 4c, 4c + 1, then 4c + 2, 4c + 3) as one little-endian 16-bit
        // word v: its nibbles, high first, are columns 4c, 4c + 1, 4c + 2, 4c + 3 in bits 4-7, 0-3, 12-15,
        // 8-11; the layout's word has them in bits 0-3, 8-11, 4-7, 12-15.
        const uint8_t* rows[8];
        for (int64_t r = 0; r < 8; ++r) rows[r] = 8 * b + r < N ? in + (8 * b + r) * (K / 2) + g * group_size / 2 : nullptr;
        for (int64_t c = 0; c < group_size / 4; ++c)
          for (int64_t r = 0; r < 8; ++r) {
            uint16_t v = 0;
            if (rows[r]) std::memcpy(&v, rows[r] + 2 * c, 2);
            const uint16_t word = uint16_t(((v >> 4) & 0x000F) | ((v >> 8) & 0x00F0) | ((v << 8) & 0x0F00) | ((v << 4) & 0xF000));
            std::memcpy(to + 16 * c + 2 * r, &word, 2);
          }
        uint8_t* tail = to + 4 * group_size;
        uint32_t zeros = 0;
        for (int64_t r = 0; r < 8; ++r) {
          const int64_t row = 8 * b + r;
          float scale = 0.f, z = 0.f;
          if (row < N) {
            scale = sz[(g * N + row) * 2], z = 8.f - sz[(g * N + row) * 2 + 1] / scale;
            if (!(z >= 0.f && z <= 15.f && float(int(z)) == z)) whole = false, z = 0.f;  // (nearbyint: a libm call)
          }
          const uint16_t half = c10::Half(scale).x;
          std::memcpy(tail + 2 * r, &half, 2);
          zeros |= uint32_t(z) << (4 * r);
        }
        for (int i = 0; i < 4; ++i) tail[16 + i] = uint8_t(zeros >> (8 * i));
      }
  });
  TORCH_CHECK_VALUE(whole, "int4 zero points must be whole numbers of scales in [0, 15]");
  return packed;
}

// q (KVH, G, D) float32; k, v (KVH, S, D) float32 with unit stride along D -> (KVH, G, D).
// Or q (T, KVH, G, D), T consecutive new tokens (a speculative verify) -> (T, KVH, G, D): token t
// sees the first S - T + 1 + t keys, and each token's result is bit for bit that of a call with
// its keys alone (the same chunks, sums and merge), in one parallel region for all of them.
at::Tensor attend_decode(const at::Tensor& q_in, const at::Tensor& k, const at::Tensor& v, double scale, c10::string_view isa) {
  const bool rows = q_in.dim() == 4;
  const at::Tensor q = (rows ? q_in : q_in.unsqueeze(0)).contiguous();
  TORCH_CHECK(q.dim() == 4 && k.dim() == 3 && v.sizes() == k.sizes() && k.size(0) == q.size(1) &&
                  k.size(2) == q.size(3) && k.size(1) >= q.size(0) && q.size(0) > 0,
              "q (KVH, G, D) or (T, KVH, G, D), k and v (KVH, S, D) with S >= T > 0");
  const bool half = k.scalar_type() == at::kHalf;
  TORCH_CHECK(q.scalar_type() == at::kFloat && (half || k.scalar_type() == at::kFloat) && v.scalar_type() == k.scalar_type() &&
                  k.stride(2) == 1 && v.stride(2) == 1 && q.size(3) % 32 == 0,
              "q float32, k and v float32 or float16, unit stride along D, D a multiple of 32");
  const int64_t T = q.size(0), KVH = q.size(1), G = q.size(2), D = q.size(3), S = k.size(1);
  const int64_t task_floats = G * (D + 2);
  std::vector<AttendArgs> args;
  std::vector<int64_t> first_task{0};  // token t's tasks are [first_task[t], first_task[t + 1])
  for (int64_t t = 0; t < T; ++t) {
    const int64_t keys = S - T + 1 + t;
    // Enough chunks for every thread to have two (one head's keys alone feed them all), each long
    // enough (>= 64 keys) that its partial results cost little beside it.
    const int64_t wanted = std::max<int64_t>(1, std::min((2 * at::get_num_threads() + KVH - 1) / KVH, keys / 64));
    const int64_t chunk = (keys + wanted - 1) / wanted;
    const int64_t chunks = (keys + chunk - 1) / chunk;  // rounding may leave fewer than wanted
    args.push_back(AttendArgs{q.data_ptr<float>() + t * KVH * G * D, k.data_ptr(), v.data_ptr(), G, keys, D,
                              k.stride(0), k.stride(1), v.stride(0), v.stride(1), chunk, chunks, float(scale), nullptr});
    first_task.push_back(first_task.back() + KVH * chunks);
  }
  std::vector<float> partial(first_task.back() * task_floats);
  for (int64_t t = 0; t < T; ++t) args[t].partial = partial.data() + first_task[t] * task_floats;
  const Kernels run = kernels_for(isa);
  at::parallel_for(0, first_task.back(), 1, [&](int64_t b, int64_t e) {
    for (int64_t t = 0; t < T && b < e; ++t)  // the part of [b, e) that is token t's
      if (b < first_task[t + 1]) {
        const int64_t end = std::min(e, first_task[t + 1]);
        (half ? run.attend_half : run.attend)(args[t], b - first_task[t], end - first_task[t]);
        b = end;
      }
  });
  at::Tensor y = at::zeros({T, KVH, G, D}, q.options());
  for (int64_t t = 0; t < T; ++t) {
    const int64_t chunks = args[t].chunks;
    const float* token_partial = args[t].partial;
    float* out = y.data_ptr<float>() + t * KVH * G * D;
    for (int64_t h = 0; h < KVH; ++h)  // merge the chunks: rescale each to the largest maximum
      for (int64_t g = 0; g < G; ++g) {
        float largest = -INFINITY, total = 0.f;
        for (int64_t c = 0; c < chunks; ++c) largest = std::max(largest, token_partial[(h * chunks + c) * task_floats + g]);
        float* row = out + (h * G + g) * D;
        for (int64_t c = 0; c < chunks; ++c) {
          const float* task = token_partial + (h * chunks + c) * task_floats;
          const float factor = std::exp(task[g] - largest);
          total += factor * task[G + g];
          const float* acc = task + 2 * G + g * D;
          for (int64_t d = 0; d < D; ++d) row[d] += factor * acc[d];
        }
        for (int64_t d = 0; d < D; ++d) row[d] /= total;
      }
  }
  return rows ? y : y.squeeze(0);
}

// A decode step's attention with its cache write: the new token's k, v (KVH x D float32 numbers, in
// any shape and strides that reshape to that) stored at row `position` of the layer's k_cache, v_cache
// ((1,) KVH, capacity, D; float32, or float16 rounded to nearest as copy_ rounds), then q (H x D) over
// rows [0, position] as attend_decode -> (1, 1, H * D), as the output projection reads it. One op for
// the ~10 of PyTorch's and their Python around a decode step's attention (cache slices, writes, views):
// the demo model's decode steps 4-7 % faster (benchmarks/cached_attention.py).
at::Tensor attend_decode_cached(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                                at::Tensor& v_cache, int64_t position, double scale, c10::string_view isa) {
  const at::Tensor keys = k_cache.dim() == 4 ? k_cache.select(0, 0) : k_cache;
  const at::Tensor values = v_cache.dim() == 4 ? v_cache.select(0, 0) : v_cache;
  TORCH_CHECK(keys.dim() == 3 && values.sizes() == keys.sizes() && values.scalar_type() == keys.scalar_type() &&
                  0 <= position && position < keys.size(1),
              "k_cache, v_cache: (KVH, capacity, D) alike, position within capacity");
  const int64_t KVH = keys.size(0), D = keys.size(2);
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat &&
                  k.numel() == KVH * D && v.numel() == KVH * D && q.numel() > 0 && q.numel() % (KVH * D) == 0,
              "q (H x D), k and v (KVH x D) float32 for a cache of KVH heads of D");
  TORCH_CHECK((keys.scalar_type() == at::kFloat || keys.scalar_type() == at::kHalf) && keys.stride(2) == 1 && values.stride(2) == 1 &&
                  D % 32 == 0, "the cache float32 or float16, unit stride along D, D a multiple of 32");
  kernels_for(isa);  // an instruction set this CPU lacks is refused before anything is written
  keys.select(1, position).copy_(k.reshape({KVH, D}));
  values.select(1, position).copy_(v.reshape({KVH, D}));
  const int64_t H = q.numel() / D;
  const at::Tensor y = attend_decode(q.reshape({KVH, H / KVH, D}), keys.narrow(1, 0, position + 1), values.narrow(1, 0, position + 1), scale, isa);
  return y.view({1, 1, H * D});
}

// A prefill chunk's attention: q (1, H, T, D) float32 over k, v (1, KVH, S, D) float32 or float16
// (H a multiple of KVH, S >= T, unit stride along D), token i seeing keys [0, S - T + i] -> y
// (1, H, T, D), laid out (T, H, D) in memory as the attention's output projection reads it.
at::Tensor attend_prefill(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale, c10::string_view isa) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes() && q.size(0) == 1 && k.size(0) == 1 &&
                  q.size(1) % k.size(1) == 0 && k.size(3) == q.size(3) && k.size(2) >= q.size(2) && q.size(2) > 0,
              "q (1, H, T, D), k and v (1, KVH, S, D) with H a multiple of KVH and S >= T > 0");
  const bool half = k.scalar_type() == at::kHalf;
  TORCH_CHECK(q.scalar_type() == at::kFloat && (half || k.scalar_type() == at::kFloat) && v.scalar_type() == k.scalar_type() &&
                  q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1 && q.size(3) % 16 == 0,
              "q float32, k and v float32 or float16, unit stride along D, D a multiple of 16");
  const int64_t H = q.size(1), T = q.size(2), D = q.size(3), KVH = k.size(1), S = k.size(2), G = H / KVH;
  const Kernels run = kernels_for(isa);
  at::Tensor y = at::empty({1, T, H, D}, q.options());
  // Full blocks of rows, smaller where a head has fewer rows (a keystroke's few tokens).
  const int64_t block_rows = G * T <= run.lanes ? run.lanes : G * T <= 2 * run.lanes ? 2 * run.lanes : prefill_registers(run.lanes) * run.lanes;
  const PrefillArgs a{q.data_ptr<float>(), k.data_ptr(), v.data_ptr(), y.data_ptr<float>(), G, T, S, D, q.stride(1), q.stride(2),
                      k.stride(1), k.stride(2), v.stride(1), v.stride(2), D, H * D, block_rows, (G * T + block_rows - 1) / block_rows,
                      float(scale)};
  at::parallel_for(0, KVH * a.blocks, 1, [&](int64_t b, int64_t e) { (half ? run.attend_prefill_half : run.attend_prefill)(a, b, e); });
  return y.transpose(1, 2);
}

}  // namespace

TORCH_LIBRARY(codegen_lsp_cpu, m) {
  m.def("isas() -> str", &isas);
  m.def("amx() -> bool", &amx);
  m.def("float_matvec(Tensor x, Tensor weight, Tensor? bias, str isa) -> Tensor");
  m.def("int8_matvec(Tensor x, Tensor weight, Tensor scales, Tensor? bias, str isa) -> Tensor");
  m.def("int8_matvec_i16(Tensor x, Tensor weight, Tensor scales, Tensor? bias, str isa) -> Tensor");
  m.def("int8_matmul(Tensor x, Tensor weight, Tensor scales, Tensor? bias, str isa) -> Tensor");
  m.def("int4_matvec(Tensor x, Tensor weight, int out_features, int group_size, Tensor? bias, str isa) -> Tensor");
  m.def("int4_matvec_i8(Tensor x, Tensor weight, int out_features, int group_size, Tensor? bias, str isa) -> Tensor");
  m.def("int4_matmul(Tensor x, Tensor weight, int out_features, int group_size, Tensor? bias, str isa) -> Tensor");
  m.def("attend_decode(Tensor q, Tensor k, Tensor v, float scale, str isa) -> Tensor");
  m.def("attend_prefill(Tensor q, Tensor k, Tensor v, float scale, str isa) -> Tensor");
  m.def("attend_decode_cached(Tensor q, Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, int position, float scale, str isa) -> Tensor");
  m.def("gelu_tanh(Tensor x, str isa) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps, str isa) -> Tensor");
  m.def("rotary(Tensor x, Tensor sin, Tensor cos, int position_dim, bool interleaved) -> Tensor");
  m.def("pack_int8(Tensor weight) -> Tensor");
  m.def("pack_int4(Tensor q, Tensor scales_and_zeros, int group_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(codegen_lsp_cpu, CPU, m) {
  m.impl("float_matvec", &float_matvec);
  m.impl("int8_matvec", &int8_matvec);
  m.impl("int8_matvec_i16", &int8_matvec_i16);
  m.impl("int8_matmul", &int8_matmul);
  m.impl("int4_matvec", &int4_matvec);
  m.impl("int4_matvec_i8", &int4_matvec_i8);
  m.impl("int4_matmul", &int4_matmul);
  m.impl("attend_decode", &attend_decode);
  m.impl("attend_prefill", &attend_prefill);
  m.impl("attend_decode_cached", &attend_decode_cached);
  m.impl("gelu_tanh", &gelu_tanh);
  m.impl("rms_norm", &rms_norm);
  m.impl("rotary", &rotary);
  m.impl("pack_int8", &pack_int8);
  m.impl("pack_int4", &pack_int4);
}
