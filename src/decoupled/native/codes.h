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

#if defined(__F16C__)
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
//
// Every function here is plain integer and float arithmetic with selects (no intrinsics): the
// codes on any CPU, and the reference for the vectors of simd.h, which use the CPU's float16
// instructions. All three agree bit for bit on all 2^32 float32 inputs and all 256 codes
// (code_mismatches in kernel.cpp, run by tests/test_native.py).

// float16 bits of x (round to nearest even; subnormals; NaN quieted with its top payload bits),
// for |x| < 65520 (the kernel clamps to the codes' ranges first), as VCVTPS2PH computes them
inline uint32_t half_bits(float x) {
  const uint32_t u = bits_of(x), sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
  // normal: rebias the exponent (-112 << 23), round the 13 dropped bits to nearest even
  const uint32_t normal = (a + 0xC8000FFFu + ((a >> 13) & 1u)) >> 13;
  // below 2^-14: 0.5 + |x| rounds |x| to a multiple of 2^-24 (float16's subnormal step), and the
  // low bits of that sum are the subnormal's
  const uint32_t subnormal = bits_of(float_of(a) + 0.5f) - 0x3F000000u;
  const uint32_t nan = 0x7E00u | ((a >> 13) & 0x3FFu);
  return (a > 0x7F800000u ? nan : a < 0x38800000u ? subnormal : normal) | sign;
}

// the value of a non-negative float16's bits: exact, as float32 subnormal bits times 2^112
inline float half_value(uint32_t h) {
  const float finite = float_of(h << 13) * 0x1p112f;
  const uint32_t special = (h << 13) | 0x7F800000u | ((h & 0x3FFu) != 0 ? 0x00400000u : 0u);  // inf, quiet NaN
  return (h & 0x7C00u) == 0x7C00u ? float_of(special) : finite;
}

// the top byte of a non-negative float16's bits, rounded to nearest even
inline uint32_t round_top_byte(uint32_t h) { return (h + 0x3Fu + ((h >> 7) & 1u)) >> 7; }

constexpr float E4M3_MAX = 448.0f;    // the largest e4m3fn value
constexpr float E5M3_MAX = 61440.0f;  // the largest e5m3 value, 1.875 * 2^15 (exponent 30: float16's largest)

// min(|y|, top), a NaN staying NaN (as std::min(|y|, top))
inline float clamp_magnitude(float y, float top) {
  const float a = std::fabs(y);
  return top < a ? top : a;
}

inline float from_e4m3(uint8_t c) {
  const uint32_t m = c & 0x7Fu;
  const float magnitude = m == 0x7Fu ? float_of(0x7FC00000u) : float_of(m << 20) * 0x1p120f;  // e4m3fn's NaN
  return float_of(bits_of(magnitude) | ((uint32_t(c) & 0x80u) << 24));
}

inline uint8_t to_e4m3(float y) {
  const uint32_t code = round_top_byte(half_bits(clamp_magnitude(y, E4M3_MAX) * 0x1p-8f));
  return uint8_t((code < 0x7Eu ? code : 0x7Eu) | ((bits_of(y) >> 24) & 0x80u));
}

inline float from_e5m3(uint8_t c) { return half_value(uint32_t(c) << 7); }

inline uint8_t to_e5m3(float y) { return uint8_t(round_top_byte(half_bits(clamp_magnitude(y, E5M3_MAX)))); }

inline float from_float8(uint8_t c, bool signed_) { return signed_ ? from_e4m3(c) : from_e5m3(c); }
inline uint8_t to_float8(float y, bool signed_) { return signed_ ? to_e4m3(y) : to_e5m3(y); }

// The block's absmax as torch's amax computes it (NaN if any element is NaN): on |x|'s bits,
// the integer order is the float order and every NaN lies above +inf.
inline uint32_t absmax_bits(float x, uint32_t top) {
  const uint32_t a = bits_of(x) & 0x7FFFFFFFu;
  return a > top ? a : top;
}

// A block's scale, absmax / MAX, and how its values become codes: code((x * prescale) * inverse),
// inverse = 1 / (scale * prescale), one division per block and a multiply per element; an
// all-zero block takes scale 1 there. prescale is 1, or 2^64 for a scale below
// 2^-64, whose reciprocal would overflow (absmax below about 1.3e-36: the second moment of a
// weight that has had no gradient for long; x * inf made its zeros NaN). Both products are exact
// scalings, so a block of the usual range gets the bits of x * (1 / scale).
// `signed_` chooses e4m3fn (exp_avg) or e5m3 (second moments). decoupled.formats.float8 and the
// Triton kernel compute the same.
constexpr float TINY_SCALE = 0x1p-64f, PRESCALE = 0x1p64f;

struct BlockScale {
  float scale, prescale, inverse;
};

inline BlockScale block_scale(uint32_t absmax, bool signed_) {
  const float s = float_of(absmax) / (signed_ ? E4M3_MAX : E5M3_MAX);
  const float pre = s < TINY_SCALE ? PRESCALE : 1.0f;
  return {s, pre, 1.0f / ((s > 0.0f ? s : 1.0f) * pre)};
}

inline void encode_block(const float* __restrict x, bool signed_, const BlockScale& b, uint8_t* __restrict codes, int n) {
  if (signed_)
    for (int i = 0; i < n; ++i) codes[i] = to_e4m3((x[i] * b.prescale) * b.inverse);
  else
    for (int i = 0; i < n; ++i) codes[i] = to_e5m3((x[i] * b.prescale) * b.inverse);
}

// Whole moments through float32 buffers (the float16-parameter path; fp32 and bf16 parameters
// decode and encode inside the fused loop).
inline void load_float8(const uint8_t* __restrict codes, const float* scale, bool signed_, float* __restrict out, int n) {
  for (int s = 0; s < n; s += QBLOCK) {
    const int m = std::min(QBLOCK, n - s);
    const float a = scale[s / QBLOCK];
    if (signed_)
      for (int i = s; i < s + m; ++i) out[i] = from_e4m3(codes[i]) * a;
    else
      for (int i = s; i < s + m; ++i) out[i] = from_e5m3(codes[i]) * a;
  }
}

inline void store_float8(const float* __restrict x, bool signed_, uint8_t* __restrict codes, float* scale, int n) {
  for (int s = 0; s < n; s += QBLOCK) {
    const int m = std::min(QBLOCK, n - s);
    uint32_t top = 0;
    for (int i = 0; i < m; ++i) top = absmax_bits(x[s + i], top);
    const BlockScale b = block_scale(top, signed_);
    scale[s / QBLOCK] = b.scale;
    encode_block(x + s, signed_, b, codes + s, m);
  }
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
    uint32_t top = 0;
    for (int i = s; i < s + m; ++i) top = absmax_bits(x[i], top);
    const float amax = float_of(top);
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
