// Element and block encodings of the state formats (decoupled.formats), for kernel.cpp.
//
// Every conversion here is bit for bit the one the Python side (torch) performs, so the kernel
// and the formats' float32 arena store the same bytes:
//   bf16 nearest      c10::BFloat16 (round to nearest even, NaN -> 0x7FC0)
//   bf16 stochastic   decoupled.formats.rounding: (bits + noise) >> 16, noise uniform in [0, 2^16)
//   float16           F16C round to nearest even (torch's cast)
//   e4m3fn, e5m3      the blockwise float8 format's codes (decoupled.formats.float8), rounded
//                     through float16 as described there
//   tree              the dynamic-tree codebook of decoupled.formats.blockwise8 (16-bit bucket tables)
#pragma once

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstring>

namespace decoupled_codes {

constexpr int QBLOCK = 256;  // elements per 8-bit block (one float32 scale)

inline uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

inline float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// ---- bf16 ----------------------------------------------------------------------------------------

inline float from_bf16(uint16_t h) { return float_of(uint32_t(h) << 16); }

inline uint16_t bf16_nearest(float x) {
  const uint32_t u = bits_of(x);
  const uint16_t r = uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return x != x ? uint16_t(0x7FC0) : r;
}

// Adding noise uniform in [0, 2^16) to the bit pattern and keeping the high half rounds the
// magnitude up with probability equal to the discarded fraction of an ulp: unbiased.
inline uint16_t bf16_stochastic(float x, uint32_t noise) { return uint16_t((bits_of(x) + noise) >> 16); }

// ---- float16, through float32 buffers (F16C converts 8 at a time) ----------------------------------

struct Half {
  uint16_t bits;
};

#if defined(__F16C__)
inline void half_to_float(const Half* __restrict src, float* __restrict out, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) out[i] = _cvtsh_ss(src[i].bits);
}

inline void float_to_half(const float* __restrict x, Half* __restrict dst, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) dst[i].bits = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}
#else
inline void half_to_float(const Half* __restrict src, float* __restrict out, int n) {
  for (int i = 0; i < n; ++i) {
    _Float16 h;
    std::memcpy(&h, &src[i].bits, 2);
    out[i] = float(h);
  }
}

inline void float_to_half(const float* __restrict x, Half* __restrict dst, int n) {
  for (int i = 0; i < n; ++i) {
    _Float16 h = _Float16(x[i]);
    std::memcpy(&dst[i].bits, &h, 2);
  }
}
#endif

// Kahan store: hi = round(x), comp = round(x - hi) (torch: copy_, then sub_ and copy_).
inline void store_kahan_f16(const float* __restrict x, Half* __restrict hi, Half* __restrict comp, int n) {
  alignas(64) float rest[QBLOCK];
  for (int s = 0; s < n; s += QBLOCK) {
    const int m = std::min(QBLOCK, n - s);
    float_to_half(x + s, hi + s, m);
    half_to_float(hi + s, rest, m);
    for (int i = 0; i < m; ++i) rest[i] = x[s + i] - rest[i];
    float_to_half(rest, comp + s, m);
  }
}

// ---- 8-bit floats, through float16 ---------------------------------------------------------------
// e5m3 (5 exponent bits, bias 15, 3 mantissa bits) is the top byte of a non-negative float16,
// subnormals included, so a code c is the float16 with bits c << 7. e4m3 (4 exponent bits,
// bias 7) is, with a sign, the top byte of the float16 of y * 2^-8: its magnitude code m is the
// float16 with bits m << 7, times 2^8. Encoding rounds to float16 (round to nearest even, as
// torch's cast; subnormals too), then to the code's 3 mantissa bits (nearest even on the bits):
// a value within half a float16 step of a midpoint between two codes may take either.

inline float half_bits_to_float(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  _Float16 x;
  std::memcpy(&x, &h, 2);
  return float(x);
#endif
}

inline uint16_t float_to_half_bits(float x) {
#if defined(__F16C__)
  return _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT);
#else
  _Float16 h = _Float16(x);
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
#endif
}

// the top byte of a non-negative float16's bits, rounded to nearest even
inline uint32_t round_top_byte(uint32_t h) { return (h + 0x3Fu + ((h >> 7) & 1u)) >> 7; }

constexpr float E4M3_MAX = 448.0f;    // the largest e4m3fn value
constexpr float E5M3_MAX = 61440.0f;  // the largest e5m3 value, 1.875 * 2^15 (exponent 30: float16's largest)

inline float from_e4m3(uint8_t c) {
  const float magnitude = half_bits_to_float(uint16_t((c & 0x7Fu) << 7)) * 256.0f;
  const float value = (c & 0x7Fu) == 0x7Fu ? float_of(0x7FC00000u) : magnitude;  // e4m3fn's NaN
  return float_of(bits_of(value) | (uint32_t(c & 0x80u) << 24));
}

inline uint8_t to_e4m3(float y) {
  const uint32_t h = float_to_half_bits(std::min(std::fabs(y), E4M3_MAX) * 0x1p-8f);
  return uint8_t(std::min(round_top_byte(h), 0x7Eu) | ((bits_of(y) >> 24) & 0x80u));
}

inline float from_e5m3(uint8_t c) { return half_bits_to_float(uint16_t(c << 7)); }

inline uint8_t to_e5m3(float y) {
  return uint8_t(round_top_byte(float_to_half_bits(std::min(std::fabs(y), E5M3_MAX))));
}

// The block's absmax as torch's amax computes it (NaN if any element is NaN): on |x|'s bits,
// the integer order is the float order and every NaN lies above +inf.
inline float block_absmax(const float* __restrict x, int n) {
  uint32_t top = 0;
  for (int i = 0; i < n; ++i) {
    const uint32_t a = bits_of(x[i]) & 0x7FFFFFFFu;
    top = a > top ? a : top;
  }
  return float_of(top);
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// 16 at a time: float16 conversions in hardware, the byte arithmetic on 16-bit lanes.
inline __m256i round_top_byte_16(__m256i h) {
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi16(h, 7), _mm256_set1_epi16(1));
  return _mm256_srli_epi16(_mm256_add_epi16(_mm256_add_epi16(h, _mm256_set1_epi16(0x3F)), odd), 7);
}

inline __m128i to_e4m3_16(__m512 y) {
  const __m512 magnitude = _mm512_min_ps(_mm512_set1_ps(E4M3_MAX), _mm512_abs_ps(y));  // a NaN stays, as with std::min
  const __m256i h = _mm512_cvtps_ph(_mm512_mul_ps(magnitude, _mm512_set1_ps(0x1p-8f)), _MM_FROUND_TO_NEAREST_INT);
  const __m256i code = _mm256_min_epu16(round_top_byte_16(h), _mm256_set1_epi16(0x7E));
  const __m256i sign = _mm256_and_si256(_mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(y), 24)),
                                        _mm256_set1_epi16(0x80));
  return _mm256_cvtepi16_epi8(_mm256_or_si256(code, sign));
}

inline __m128i to_e5m3_16(__m512 y) {
  const __m512 magnitude = _mm512_min_ps(_mm512_set1_ps(E5M3_MAX), _mm512_abs_ps(y));
  return _mm256_cvtepi16_epi8(round_top_byte_16(_mm512_cvtps_ph(magnitude, _MM_FROUND_TO_NEAREST_INT)));
}

inline __m512 from_e4m3_16(__m128i bytes) {
  const __m256i c = _mm256_cvtepu8_epi16(bytes);
  const __m256i magnitude = _mm256_and_si256(c, _mm256_set1_epi16(0x7F));
  const __m512 value = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_slli_epi16(magnitude, 7)), _mm512_set1_ps(256.0f));
  const __m512i sign = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_and_si256(c, _mm256_set1_epi16(0x80))), 24);
  const __mmask16 nan = _mm256_cmpeq_epi16_mask(magnitude, _mm256_set1_epi16(0x7F));
  const __m512i bits = _mm512_mask_blend_epi32(nan, _mm512_castps_si512(value), _mm512_set1_epi32(0x7FC00000));
  return _mm512_castsi512_ps(_mm512_or_si512(bits, sign));
}

inline __m512 from_e5m3_16(__m128i bytes) {
  return _mm512_cvtph_ps(_mm256_slli_epi16(_mm256_cvtepu8_epi16(bytes), 7));
}
#endif

// One block of the float8 format: scale = absmax / MAX, codes of x * (1 / scale) (an all-zero
// block multiplies by 1; a multiply, not a division: the divider is the step's bottleneck).
// `signed_` chooses e4m3fn (exp_avg) or e5m3 (second moments).
inline void store_float8_block(const float* __restrict x, bool signed_, uint8_t* __restrict codes, float* scale, int n) {
  const float s = block_absmax(x, n) / (signed_ ? E4M3_MAX : E5M3_MAX);
  *scale = s;
  const float inv = 1.0f / (s > 0.0f ? s : 1.0f);
  int i = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  const __m512 iv = _mm512_set1_ps(inv);
  for (; i + 16 <= n; i += 16) {
    const __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x + i), iv);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), signed_ ? to_e4m3_16(y) : to_e5m3_16(y));
  }
#endif
  if (signed_)
    for (; i < n; ++i) codes[i] = to_e4m3(x[i] * inv);
  else
    for (; i < n; ++i) codes[i] = to_e5m3(x[i] * inv);
}

inline void load_float8(const uint8_t* __restrict codes, const float* scale, bool signed_, float* __restrict out, int n) {
  for (int s = 0; s < n; s += QBLOCK) {
    const int m = std::min(QBLOCK, n - s);
    const float a = scale[s / QBLOCK];
    int i = s;
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    const __m512 av = _mm512_set1_ps(a);
    for (; i + 16 <= s + m; i += 16) {
      const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i));
      _mm512_storeu_ps(out + i, _mm512_mul_ps(signed_ ? from_e4m3_16(c) : from_e5m3_16(c), av));
    }
#endif
    if (signed_)
      for (; i < s + m; ++i) out[i] = from_e4m3(codes[i]) * a;
    else
      for (; i < s + m; ++i) out[i] = from_e5m3(codes[i]) * a;
  }
}

inline void store_float8(const float* __restrict x, bool signed_, uint8_t* __restrict codes, float* scale, int n) {
  for (int s = 0; s < n; s += QBLOCK)
    store_float8_block(x + s, signed_, codes + s, scale + s / QBLOCK, std::min(QBLOCK, n - s));
}

// ---- the dynamic tree (blockwise8): table lookups ------------------------------------------------

struct Codebook {
  const int32_t* base;     // 65536: code of the values below bucket b
  const float* threshold;  // 65536: the midpoint inside bucket b, or +inf
  const float* values;     // 256: the codebook, ascending
};

inline void load_tree(const uint8_t* __restrict codes, const float* absmax, const float* __restrict values,
                      float* __restrict out, int n) {
  for (int s = 0; s < n; s += QBLOCK) {
    const int m = std::min(QBLOCK, n - s);
    const float a = absmax[s / QBLOCK];
    for (int i = s; i < s + m; ++i) out[i] = values[codes[i]] * a;
  }
}

// y = x / absmax rounded to the nearest codebook value: code = base[b] + (y > threshold[b]),
// b the top 16 bits of y (decoupled.formats.blockwise8.Codebook.lookup).
inline void store_tree(const float* __restrict x, const Codebook& book, uint8_t* __restrict codes, float* absmax, int n) {
  for (int s = 0; s < n; s += QBLOCK) {
    const int m = std::min(QBLOCK, n - s);
    const float amax = block_absmax(x + s, m);
    absmax[s / QBLOCK] = amax;
    const float d = amax > 0.0f ? amax : 1.0f;  // an all-zero block (or a NaN) divides by 1, as torch.where
    for (int i = s; i < s + m; ++i) {
      const float y = x[i] / d;
      const uint32_t b = bits_of(y) >> 16;
      codes[i] = uint8_t(book.base[b] + (y > book.threshold[b] ? 1 : 0));
    }
  }
}

}  // namespace decoupled_codes
