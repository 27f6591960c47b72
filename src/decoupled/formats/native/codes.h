// Element and block encodings of the state formats (decoupled.formats), for kernel.cpp.
//
// Every conversion here is bit for bit the one the Python side (torch) performs, so the kernel
// and the formats' float32 arena store the same bytes:
//   bf16 nearest      c10::BFloat16 (round to nearest even, NaN -> 0x7FC0)
//   bf16 stochastic   decoupled.formats.rounding: (bits + noise) >> 16, noise uniform in [0, 2^16)
//   float16           F16C round to nearest even (torch's cast)
//   float8 e4m3fn     c10::Float8_e4m3fn's cast (the exp_avg codes of the blockwise float8 format)
//   e5m3              an unsigned 8-bit float: 5 exponent bits (bias 15), 3 mantissa bits,
//                     subnormals, no sign/inf/NaN; round to nearest even (its second moments)
//   tree              the dynamic-tree codebook of decoupled.formats.blockwise8 (16-bit bucket tables)
#pragma once

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
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

// ---- 8-bit floats -----------------------------------------------------------------------------

// (written with integer masks instead of branches, which GCC 12 does not vectorize here)
inline uint32_t select(bool take_a, uint32_t a, uint32_t b) {
  const uint32_t mask = 0u - uint32_t(take_a);
  return (a & mask) | (b & ~mask);
}

inline float from_e4m3(uint8_t c) {
  const uint32_t e = (c >> 3) & 15u, f = c & 7u;
  const uint32_t sub = bits_of(float(int32_t(f)) * 0x1p-9f), normal = ((e + 120u) << 23) | (f << 20);
  const uint32_t magnitude = select((c & 0x7Fu) == 0x7Fu, 0x7FC00000u, select(e == 0, sub, normal));
  return float_of(magnitude | (uint32_t(c & 0x80u) << 24));
}

// torch's cast to float8_e4m3fn: round to nearest even, saturating at +-448 (infinities too);
// NaN -> 0x7F; subnormals (below 2^-6) rounded by adding 2^14, whose ulp is their step 2^-9.
inline uint8_t to_e4m3(float x) {
  uint32_t b = bits_of(x);
  const uint32_t sign = b & 0x80000000u;
  b ^= sign;
  const uint32_t sub = bits_of(float_of(std::min(b, 121u << 23)) + 0x1p14f) - (141u << 23);
  const uint32_t normal = (std::min(b, 0x7F800000u) + (uint32_t(7 - 127) << 23) + 0x7FFFFu + ((b >> 20) & 1u)) >> 20;
  const uint32_t r = select(b > 0x7F800000u, 0x7Fu, select(b < (121u << 23), sub, std::min(normal, 0x7Eu)));
  return uint8_t(r | (sign >> 24));
}

inline float from_e5m3(uint8_t c) {
  const uint32_t e = c >> 3, f = c & 7u;
  return float_of(select(e == 0, bits_of(float(int32_t(f)) * 0x1p-17f), ((e + 112u) << 23) | (f << 20)));
}

// |x| rounded to nearest even; subnormals (below 2^-14) rounded by adding 2^6; saturates at 255.
inline uint8_t to_e5m3(float x) {
  const uint32_t b = bits_of(x) & 0x7FFFFFFFu;
  const uint32_t sub = bits_of(float_of(b) + 0x1p6f) - (133u << 23);
  const uint32_t normal = (b + (uint32_t(15 - 127) << 23) + 0x7FFFFu + ((b >> 20) & 1u)) >> 20;
  return uint8_t(std::min(select(b < (113u << 23), sub, normal), 255u));
}

constexpr float E4M3_MAX = 448.0f;     // the largest e4m3fn value
constexpr float E5M3_MAX = 122880.0f;  // the largest e5m3 value, 1.875 * 2^16

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

// One block of the float8 format: scale = absmax / MAX, codes of x / scale (an all-zero block
// divides by 1). `signed_` chooses e4m3fn (exp_avg) or e5m3 (second moments).
#if defined(__AVX512F__) && defined(__AVX512BW__)
// The same conversions, 16 at a time with AVX-512 (GCC's own vectorization of the byte loops
// above spends most of its time shuffling 64 bytes into four float vectors).
inline __m512i set1(uint32_t x) { return _mm512_set1_epi32(int(x)); }

inline __m128i to_e4m3_16(__m512 y) {
  const __m512i all = _mm512_castps_si512(y), sign = _mm512_and_si512(all, set1(0x80000000u));
  const __m512i b = _mm512_xor_si512(all, sign);
  const __m512 small = _mm512_castsi512_ps(_mm512_min_epu32(b, set1(121u << 23)));
  const __m512i sub = _mm512_sub_epi32(_mm512_castps_si512(_mm512_add_ps(small, _mm512_set1_ps(0x1p14f))), set1(141u << 23));
  __m512i normal = _mm512_add_epi32(_mm512_min_epu32(b, set1(0x7F800000u)), set1((uint32_t(7 - 127) << 23) + 0x7FFFFu));
  normal = _mm512_add_epi32(normal, _mm512_and_si512(_mm512_srli_epi32(b, 20), set1(1)));
  normal = _mm512_min_epu32(_mm512_srli_epi32(normal, 20), set1(0x7E));
  __m512i r = _mm512_mask_blend_epi32(_mm512_cmplt_epu32_mask(b, set1(121u << 23)), normal, sub);
  r = _mm512_mask_blend_epi32(_mm512_cmpgt_epu32_mask(b, set1(0x7F800000u)), r, set1(0x7F));
  return _mm512_cvtepi32_epi8(_mm512_or_si512(r, _mm512_srli_epi32(sign, 24)));
}

inline __m128i to_e5m3_16(__m512 y) {
  const __m512i b = _mm512_and_si512(_mm512_castps_si512(y), set1(0x7FFFFFFFu));
  const __m512 x = _mm512_castsi512_ps(b);
  const __m512i sub = _mm512_sub_epi32(_mm512_castps_si512(_mm512_add_ps(x, _mm512_set1_ps(0x1p6f))), set1(133u << 23));
  __m512i normal = _mm512_add_epi32(b, set1((uint32_t(15 - 127) << 23) + 0x7FFFFu));
  normal = _mm512_srli_epi32(_mm512_add_epi32(normal, _mm512_and_si512(_mm512_srli_epi32(b, 20), set1(1))), 20);
  const __m512i r = _mm512_mask_blend_epi32(_mm512_cmplt_epu32_mask(b, set1(113u << 23)), normal, sub);
  return _mm512_cvtepi32_epi8(_mm512_min_epu32(r, set1(255)));
}

inline __m512 from_e4m3_16(__m128i bytes) {
  const __m512i c = _mm512_cvtepu8_epi32(bytes);
  const __m512i e = _mm512_and_si512(_mm512_srli_epi32(c, 3), set1(15)), f = _mm512_and_si512(c, set1(7));
  const __m512i normal = _mm512_or_si512(_mm512_slli_epi32(_mm512_add_epi32(e, set1(120)), 23), _mm512_slli_epi32(f, 20));
  const __m512i sub = _mm512_castps_si512(_mm512_mul_ps(_mm512_cvtepi32_ps(f), _mm512_set1_ps(0x1p-9f)));
  __m512i m = _mm512_mask_blend_epi32(_mm512_cmpeq_epi32_mask(e, _mm512_setzero_si512()), normal, sub);
  m = _mm512_mask_blend_epi32(_mm512_cmpeq_epi32_mask(_mm512_and_si512(c, set1(0x7F)), set1(0x7F)), m, set1(0x7FC00000u));
  return _mm512_castsi512_ps(_mm512_or_si512(m, _mm512_slli_epi32(_mm512_and_si512(c, set1(0x80)), 24)));
}

inline __m512 from_e5m3_16(__m128i bytes) {
  const __m512i c = _mm512_cvtepu8_epi32(bytes);
  const __m512i e = _mm512_srli_epi32(c, 3), f = _mm512_and_si512(c, set1(7));
  const __m512i normal = _mm512_or_si512(_mm512_slli_epi32(_mm512_add_epi32(e, set1(112)), 23), _mm512_slli_epi32(f, 20));
  const __m512i sub = _mm512_castps_si512(_mm512_mul_ps(_mm512_cvtepi32_ps(f), _mm512_set1_ps(0x1p-17f)));
  return _mm512_castsi512_ps(_mm512_mask_blend_epi32(_mm512_cmpeq_epi32_mask(e, _mm512_setzero_si512()), normal, sub));
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
#if defined(__AVX512F__) && defined(__AVX512BW__)
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
#if defined(__AVX512F__) && defined(__AVX512BW__)
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
