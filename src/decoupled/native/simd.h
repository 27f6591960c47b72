// Explicit vectors for kernel.cpp's 8-bit loop: GCC/clang vector extensions of LANES float32
// lanes (16 with AVX-512, 8 with AVX2 + F16C + FMA), and the few operations that need an
// instruction by name (fma, sqrt, float16 conversions). Every function here has a scalar
// overload of the same name in codes.h or below, so a loop written once over `F` runs with
// F = float (vectorized by the compiler, or the tail of a block) and with F = VF.
//
// Why explicit here: the loop mixes 8-bit codes with float32 lanes, and GCC 12 then vectorizes
// 64 elements per iteration (one byte vector) with four float vectors per variable, spilling
// registers (1.5 ns per element, against 0.68 with 16 float lanes, one AMD EPYC core); and it cannot vectorize the
// float16 conversion that the codes go through (no F16C without AVX512-FP16).
#pragma once

#include <cstdint>
#include <cstring>

#include "codes.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define DECOUPLED_SIMD 16
#elif defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#define DECOUPLED_SIMD 8
#endif

namespace decoupled_codes {

// ---- scalar overloads (F = float) ------------------------------------------------------------

inline float fma_(float a, float b, float c) { return std::fma(a, b, c); }
inline float sqrt_(float x) { return std::sqrt(x); }
// loads of one lane type F (float or VF) from memory; the others take F from their argument.
// e4m3 gives the code's value / 256 (the float16 it is the top byte of), so that a caller
// multiplies once, by scale * 256: the same bits as value * scale (both products are exact
// before their one rounding).
template <typename F>
struct Load {
  static float f32(const float* p) { return *p; }
  static float bf16(const uint16_t* p) { return from_bf16(*p); }
  static float e4m3(const uint8_t* c) { return from_e4m3(*c) * 0x1p-8f; }  // exact: the float16 of the code
  static float e5m3(const uint8_t* c) { return from_e5m3(*c); }
  static uint32_t index(uint32_t first) { return first; }  // the lanes' element numbers
};

inline void store_f32(float* p, float x) { *p = x; }
inline void store_u16(uint16_t* p, uint32_t x) { *p = uint16_t(x); }
inline void encode_e4m3(uint8_t* c, float y) { *c = to_e4m3(y); }
inline void encode_e5m3(uint8_t* c, float y) { *c = to_e5m3(y); }
inline uint32_t reduce_max(uint32_t x) { return x; }

template <typename F>
constexpr int lanes = 1;

template <typename F>
inline F splat(float x) {
  return x;
}

// bf16 round to nearest even of x's bits u (c10::BFloat16; NaN -> 0x7FC0), for any lane type
template <typename F, typename U>
inline U bf16_nearest_bits(F x, U u) {
  const U r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return x != x ? r * 0u + 0x7FC0u : r;
}

#ifdef DECOUPLED_SIMD
#include <immintrin.h>

constexpr int LANES = DECOUPLED_SIMD;
typedef float VF __attribute__((vector_size(4 * LANES)));
typedef uint32_t VU __attribute__((vector_size(4 * LANES)));
typedef int32_t VI __attribute__((vector_size(4 * LANES)));
typedef uint16_t VH __attribute__((vector_size(2 * LANES)));

template <>
constexpr int lanes<VF> = LANES;


inline VU bits_of(VF x) { return reinterpret_cast<VU&>(x); }
inline VF float_of(VU u) { return reinterpret_cast<VF&>(u); }

template <typename T, typename P>
inline T load_(const P* p) {
  T x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

template <typename T, typename P>
inline void store_(P* p, T x) {
  std::memcpy(p, &x, sizeof x);
}

inline VU absmax_bits(VF x, VU top) {
  const VU a = bits_of(x) & 0x7FFFFFFFu;
  return a > top ? a : top;
}

inline uint32_t reduce_max(VU x) {
  uint32_t top = 0;
  for (int i = 0; i < LANES; ++i) top = x[i] > top ? x[i] : top;
  return top;
}

#if DECOUPLED_SIMD == 16
template <>
inline VF splat<VF>(float x) { return VF(_mm512_set1_ps(x)); }
inline VF fma_(VF a, VF b, VF c) { return VF(_mm512_fmadd_ps(__m512(a), __m512(b), __m512(c))); }
inline VF sqrt_(VF x) { return VF(_mm512_sqrt_ps(__m512(x))); }
// a < b ? a : b and a > b ? a : b (so a NaN b is kept), one instruction each
inline VF min_(VF a, VF b) { return VF(_mm512_min_ps(__m512(a), __m512(b))); }
inline VF max_(VF a, VF b) { return VF(_mm512_max_ps(__m512(a), __m512(b))); }
inline VF half_to_float(VH h) { return VF(_mm512_cvtph_ps(__m256i(h))); }
inline VH float_to_half(VF x) { return VH(_mm512_cvtps_ph(__m512(x), _MM_FROUND_TO_NEAREST_INT)); }
// the low byte of each lane (as uint8_t(x)), and bytes widened
inline void store_bytes(uint8_t* c, VH x) { _mm_storeu_si128(reinterpret_cast<__m128i*>(c), _mm256_cvtepi16_epi8(__m256i(x))); }
inline VH load_bytes(const uint8_t* c) { return VH(_mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c)))); }
// 16-bit values widened, and the low 16 bits of each lane stored (GCC splits both otherwise)
inline VU load_u16(const uint16_t* p) { return VU(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))); }
inline void store_u16(uint16_t* p, VU x) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(__m512i(x))); }
#else
template <>
inline VF splat<VF>(float x) { return VF(_mm256_set1_ps(x)); }
inline VF fma_(VF a, VF b, VF c) { return VF(_mm256_fmadd_ps(__m256(a), __m256(b), __m256(c))); }
inline VF sqrt_(VF x) { return VF(_mm256_sqrt_ps(__m256(x))); }
inline VF min_(VF a, VF b) { return VF(_mm256_min_ps(__m256(a), __m256(b))); }
inline VF max_(VF a, VF b) { return VF(_mm256_max_ps(__m256(a), __m256(b))); }
inline VF half_to_float(VH h) { return VF(_mm256_cvtph_ps(__m128i(h))); }
inline VH float_to_half(VF x) { return VH(_mm256_cvtps_ph(__m256(x), _MM_FROUND_TO_NEAREST_INT)); }
inline void store_bytes(uint8_t* c, VH x) {
  const __m128i low = __m128i(x & 0xFFu);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(c), _mm_packus_epi16(low, low));
}
inline VH load_bytes(const uint8_t* c) { return VH(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c)))); }
inline VU load_u16(const uint16_t* p) { return VU(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))); }
inline void store_u16(uint16_t* p, VU x) {
  const __m256i low = __m256i(x & 0xFFFFu);  // packus saturates: keep the low 16 bits first
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(low), _mm256_extracti128_si256(low, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}
#endif

inline void store_f32(float* p, VF x) { store_<VF>(p, x); }

// min(top, x) with x's NaN kept (as the scalar `top < x ? top : x`)
inline VF min_keep_nan(float top, VF x) { return min_(splat<VF>(top), x); }

inline VH round_top_byte(VH h) { return (h + 0x3Fu + ((h >> 7) & 1u)) >> 7; }

// the codes of codes.h, on 16-bit lanes where they are float16 bits
template <>
struct Load<VF> {
  static VF f32(const float* p) { return load_<VF>(p); }
  static VF bf16(const uint16_t* p) { return float_of(load_u16(p) << 16); }
  static VF e5m3(const uint8_t* c) { return half_to_float(load_bytes(c) << 7); }
  static VU index(uint32_t first) {
    VU iota;
    for (int i = 0; i < LANES; ++i) iota[i] = uint32_t(i);
    return first + iota;
  }
  static VF e4m3(const uint8_t* c) {
    const VH code = load_bytes(c);
    const VH shifted = code << 7;                // the magnitude in float16's place, the sign at bit 14
    const VH h = shifted + (shifted & 0x4000u);  // the sign to bit 15
    const VH fixed = (code & 0x7Fu) == 0x7Fu ? (h & 0x8000u) | 0x7E00u : h;  // e4m3fn's NaN -> float16's
    return half_to_float(fixed);
  }
};

inline void encode_e5m3(uint8_t* c, VF y) {
  store_bytes(c, round_top_byte(float_to_half(min_keep_nan(E5M3_MAX, float_of(bits_of(y) & 0x7FFFFFFFu)))));
}

// as to_e4m3, with the sign carried by the float16 (half_bits(-a) is half_bits(a) | 0x8000,
// NaN included), so that no 32-bit lanes are narrowed
inline void encode_e4m3(uint8_t* c, VF y) {
  const VF clamped = min_keep_nan(E4M3_MAX, max_(splat<VF>(-E4M3_MAX), y));
  const VH h = float_to_half(clamped * 0x1p-8f);
  const VH magnitude = round_top_byte(h & 0x7FFFu);
  store_bytes(c, (magnitude < 0x7Eu ? magnitude : VH{} + 0x7Eu) | ((h >> 8) & 0x80u));
}
#endif

}  // namespace decoupled_codes
