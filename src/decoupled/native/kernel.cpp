// One fused pass of the Adam update over parameters whose state is stored in a format
// (decoupled.formats): load to float32, update, store back.
//
// The arithmetic is decoupled.rule.adam_update as PyTorch's CPU kernels evaluate it (float32,
// the scalars rounded to float32 first; torch's AVX2/AVX-512 kernels fuse the multiply-adds
// written as fma below), with one exception: sqrt is correctly rounded here (as in torch's
// fused Adam kernel), while torch.sqrt on CPU is MKL's, which differs by one ulp for about a
// fifth of float32 inputs. Given a correctly rounded sqrt, the loop backend computes the
// same bits:
//   g  = -g                                  (maximize)
//   g  = fma(theta, l2, g)                   (coupled L2; torch's add(alpha=))
//   m  = fma(w, g - m, m)  if w < 0.5  else  fma(w - 1, g - m, g)     (torch's lerp, w = 1 - beta1)
//   v  = fma((1 - beta2) * g, g, v * beta2)  (torch's mul_ then addcmul_)
//   vmax = max(vmax, v)                      (amsgrad; then vmax replaces v)
//   d  = sqrt(v) / sqrt(1 - beta2^t) + eps
//   theta = theta * rho + (s * m) / d        (s = -lr / (1 - beta1^t); rho where the decay applies)
// The decay applies everywhere (decoupled conventions), nowhere (coupled L2, no weight decay),
// or where m * theta >= 0 (cautious decay: m_new has the sign of the Adam update u).
//
// Work is cut into chunks of 1024 elements, taken 64 at a time by torch's intra-op threads.
// Dense moments: one loop per chunk loads, updates and stores float32, bf16 and
// float16-in-buffers values directly, vectorized by the compiler (-O3 -march=native). 8-bit
// float moments of fp32 and bf16 parameters: one loop per 256-element block (one scale) decodes
// the codes, updates, keeps the new moments in L1 with their absmax, and encodes the previous
// block's, in explicit vectors (simd.h). The 8-bit tree code and float16 parameters go through
// float32 buffers (L1) around the dense loop. Compiled with -ffp-contract=off: the only fused
// multiply-adds are the explicit fma calls. Every instruction set stores the same bits.

#ifdef DECOUPLED_KERNEL_STANDALONE  // the loops without Python or torch (benchmarks/kernel_micro.cpp)
#include <omp.h>
namespace at {
inline int get_num_threads() { return omp_get_max_threads(); }
}  // namespace at
#else
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "codes.h"
#include "simd.h"

namespace {

using namespace decoupled_codes;

constexpr int64_t BLOCK = 1024;  // elements per chunk of work (a multiple of QBLOCK)
static_assert(BLOCK % QBLOCK == 0, "a chunk holds whole 8-bit blocks");

enum ParamType { P_F32 = 0, P_BF16 = 1, P_F16 = 2 };
enum MomentKind { M_F32 = 0, M_BF16 = 1, M_BF16_SR = 2, M_F16 = 3, M_TREE = 4, M_FLOAT8 = 5 };
enum Rounding { R_NEAREST = 0, R_KAHAN = 1, R_STOCHASTIC = 2 };

// A bijection of 32-bit integers with good avalanche (Wellons' "lowbias32"); U is uint32_t or
// a vector of them.
template <typename U>
inline U mix32(U x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// SplitMix64's finalizer: a bijection of 64-bit integers.
inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// The key of one noise stream of one tensor in one call: for a fixed (tensor, stream), a
// bijection of the call's seed, so a uniformly drawn seed gives a uniform key.
inline uint32_t stream_key(int64_t seed, int64_t tensor, int stream) {
  return uint32_t(mix64(uint64_t(seed) ^ mix64(4 * uint64_t(tensor) + uint64_t(stream))));
}

struct Coefficients {
  float beta2, one_minus_beta2, w, w_minus_1, eps, rho, l2;
  bool w_small, maximize, coupled, decays, cautious, amsgrad;
};

struct Tensor {
  void* param;
  const void* grad;
  void* comp;                 // Kahan compensation (parameter dtype) or null
  void* moment[3];            // exp_avg, exp_avg_sq, max_exp_avg_sq storage
  float* scale[3];            // their per-block scales (8-bit) or null
  int64_t numel;
  float step_size;            // -lr / (1 - beta1^t)
  float bc2_sqrt;             // sqrt(1 - beta2^t)
  uint32_t key[4];            // noise keys of param, exp_avg, exp_avg_sq, max_exp_avg_sq
};

struct Call {
  int param_type, rounding, n_moments;
  int kind[3];
  uint32_t noise_mask;        // 0xFFFF: stochastic rounding; 0: truncation (tests)
  Coefficients k;
  Codebook book[3];           // per moment (signed for exp_avg)
  std::vector<Tensor> tensors;
};

// ---- the update of one element ------------------------------------------------------------------
// Every coefficient in a local, and the uniform choices as bit masks or constants: GCC 12
// vectorizes neither masked scalar loads from `Coefficients` nor selects on a scalar bool.

struct Rule {
  float l2, one_minus_beta2, beta2, eps, weight, rho, threshold;
  uint32_t negate, coupled, from_m;
};

inline Rule rule_of(const Coefficients& k) {
  Rule r;
  r.l2 = k.l2;
  r.one_minus_beta2 = k.one_minus_beta2;
  r.beta2 = k.beta2;
  r.eps = k.eps;
  r.negate = k.maximize ? 0x80000000u : 0u;    // -g flips the sign bit
  r.coupled = k.coupled ? 0xFFFFFFFFu : 0u;    // take g + l2 * theta
  r.from_m = k.w_small ? 0xFFFFFFFFu : 0u;     // lerp's base: m (small weight) or g
  r.weight = k.w_small ? k.w : k.w_minus_1;
  r.rho = k.decays ? k.rho : 1.0f;             // theta * 1 is theta, bit for bit
  // decay where m * theta >= 0 (cautious) or everywhere (-inf; a NaN product decays in neither)
  r.threshold = k.cautious ? 0.0f : -std::numeric_limits<float>::infinity();
  return r;
}

// AdamW's usual options: no maximize, no coupled L2, beta1 > 0.5, no cautious decay. Their
// rule is the general one with the masks and threshold constant; a loop compiled for them
// (PLAIN) drops those operations, which the vector units (the bottleneck in cache) would run:
// on one core of the 2-core AMD EPYC, 64K parameters, 8-bit 0.86 -> 0.78 ns per element, bf16
// weights with Kahan compensation 0.72 -> 0.62, stochastic rounding 0.52 -> 0.46.
inline bool plain(const Coefficients& k) { return !k.maximize && !k.coupled && k.w_small && !k.cautious; }

// One element of the rule (header comment), or LANES of them (F = VF, simd.h): updates m, v
// and, with amsgrad, x (max_exp_avg_sq) in place and returns the new parameter. PLAIN: the
// coefficients are plain (above).
template <bool AMS, bool PLAIN = false, typename F>
inline F update(const Rule& r, F p, F g, F& m, F& v, F& x, float step_size, float bc2_sqrt) {
  F base = m;
  if constexpr (!PLAIN) {
    g = float_of(bits_of(g) ^ r.negate);
    g = float_of((bits_of(fma_(p, splat<F>(r.l2), g)) & r.coupled) | (bits_of(g) & ~r.coupled));
    base = float_of((bits_of(m) & r.from_m) | (bits_of(g) & ~r.from_m));
  }
  m = fma_(splat<F>(r.weight), g - m, base);
  v = fma_(r.one_minus_beta2 * g, g, v * r.beta2);
  F second = v;
  if constexpr (AMS) {
    second = (x > v) | (x != x) ? x : v;  // torch.maximum: NaN wins
    x = second;
  }
  F kept = p * r.rho;
  if constexpr (!PLAIN) kept = m * p >= r.threshold ? kept : p;
  return kept + (step_size * m) / (sqrt_(second) / bc2_sqrt + r.eps);
}

// ---- loads and stores -------------------------------------------------------------------------
// Parameters are float32 (in place, or a buffer that float16 values are converted to and from)
// or bf16 bits; R: how a bf16 parameter is written. Dense moments are float32 or bf16 bits;
// S: how they are written (float32, bf16 nearest, bf16 stochastic).

enum LoopMoments { L_F32 = 0, L_BF16 = 1, L_BF16_SR = 2 };

inline float load_elem(float x) { return x; }
inline float load_elem(uint16_t x) { return from_bf16(x); }

// Stochastic-rounding noise, 16 bits uniform in [0, 2^16) per element (or lanes) and stream,
// masked to 0 for truncation (tests): the high half of mix32(index ^ key) under the stream's
// key for the parameter (stream 0) and max_exp_avg_sq (3); exp_avg (1) and exp_avg_sq (2) take
// the high and the low half of one hash under stream 1's key (one hash per element instead of
// two: bf16 moments 0.54 -> 0.48 ns per element on one core of the AMD EPYC).
template <typename U>
inline U noise_at(uint32_t key, U index, uint32_t mask) { return (mix32<U>(index ^ key) >> 16) & mask; }

inline uint32_t low_noise(uint32_t hash, uint32_t mask) { return hash & 0xFFFFu & mask; }

template <int S, typename T>
inline void store_moment(T* __restrict dst, int i, float x, uint32_t key, uint32_t index, uint32_t mask) {
  if constexpr (S == L_F32) dst[i] = x;
  else if constexpr (S == L_BF16) dst[i] = bf16_nearest(x);
  else dst[i] = bf16_stochastic(x, noise_at(key, index, mask));
}

template <typename F, typename PS>
inline F load_as(const PS* __restrict p) {
  if constexpr (std::is_same_v<PS, float>) return Load<F>::f32(p);
  else return Load<F>::bf16(p);
}

template <typename F, typename PS, int R>
inline F load_param(const PS* __restrict pp, const PS* __restrict cp, int i) {
  F p = load_as<F>(pp + i);
  if constexpr (R == R_KAHAN) p += load_as<F>(cp + i);
  return p;
}

// Elements i, i + 1, ... (lanes<F>) of the parameter; `index`: their numbers in the tensor
template <typename F, typename PS, int R, typename U>
inline void store_param(PS* __restrict pp, PS* __restrict cp, int i, F p, uint32_t key, U index, uint32_t mask) {
  if constexpr (std::is_same_v<PS, float>) {
    store_f32(pp + i, p);
  } else if constexpr (R == R_KAHAN) {
    const U hi = bf16_nearest_bits(p, bits_of(p));
    store_u16(pp + i, hi);
    const F rest = p - float_of(hi << 16);
    store_u16(cp + i, bf16_nearest_bits(rest, bits_of(rest)));
  } else if constexpr (R == R_STOCHASTIC) {
    store_u16(pp + i, (bits_of(p) + noise_at(key, index, mask)) >> 16);
  } else {
    store_u16(pp + i, bf16_nearest_bits(p, bits_of(p)));
  }
}

struct Keys {
  uint32_t k[4];  // this chunk's keys of the parameter's and the moments' noise streams
  uint32_t mask;
};

// The keys of elements lo, lo + 1, ... (below the next multiple of 2^32) of tensor t
inline Keys keys_at(const Call& call, const Tensor& t, int64_t lo) {
  Keys keys;
  keys.mask = call.noise_mask;
  const uint32_t high = mix32(uint32_t(uint64_t(lo) >> 32));  // a new key per 2^32 elements
  for (int s = 0; s < 4; ++s) keys.k[s] = t.key[s] ^ high;
  return keys;
}

// ---- the fused loop over dense moments -----------------------------------------------------------
// One loop over a chunk: load, update, store, on float32 (in place, or buffers that float16 or
// the 8-bit tree's values are converted to and from around it) or bf16 bits.

template <typename PS, int R, int S, bool AMS, bool PLAIN>
void fused(int n, uint32_t first, PS* __restrict pp, PS* __restrict cp, const PS* __restrict gp, void* m0, void* m1,
           void* m2, const Rule rule, float step_size, float bc2_sqrt, const Keys& keys) {
  using MT = std::conditional_t<S == L_F32, float, uint16_t>;
  MT* __restrict mp = static_cast<MT*>(m0);
  MT* __restrict vp = static_cast<MT*>(m1);
  MT* __restrict xp = static_cast<MT*>(m2);
  const uint32_t mask = keys.mask, key0 = keys.k[0], key1 = keys.k[1], key3 = keys.k[3];
#pragma GCC ivdep
  for (int i = 0; i < n; ++i) {
    const uint32_t index = first + uint32_t(i);
    float m = load_elem(mp[i]), v = load_elem(vp[i]), x = 0.0f;
    if constexpr (AMS) x = load_elem(xp[i]);
    const float p = update<AMS, PLAIN>(rule, load_param<float, PS, R>(pp, cp, i), load_elem(gp[i]), m, v, x, step_size, bc2_sqrt);
    store_param<float, PS, R>(pp, cp, i, p, key0, index, mask);
    if constexpr (S == L_BF16_SR) {  // one hash, two streams
      const uint32_t hash = mix32(index ^ key1);
      mp[i] = bf16_stochastic(m, (hash >> 16) & mask);
      vp[i] = bf16_stochastic(v, low_noise(hash, mask));
    } else {
      store_moment<S>(mp, i, m, key1, index, mask);
      store_moment<S>(vp, i, v, key1, index, mask);
    }
    if constexpr (AMS) store_moment<S>(xp, i, x, key3, index, mask);
  }
}

// ---- the fused loop over 8-bit float moments ------------------------------------------------------
// Block b's loop (QBLOCK elements, one scale per moment) decodes b's codes, updates, keeps the
// new moments in float32 in L1 with their absmax, and encodes block b - 1's new moments, whose
// scales are known by then: one pass instead of decode, update, absmax and encode passes (one
// core of the 2-core AMD EPYC, 64K parameters: 0.95 ns per element in passes, 0.77 in one).
// F is VF (simd.h) for whole blocks, float for a ragged last one.

struct Float8Block {
  const uint8_t* codes[3];  // this block's codes, read
  float scale[3];           // and scales
  float* out[3];            // its new moments, written (float32, L1)
  uint8_t* prev_codes[3];   // the previous block's codes, written
  const float* prev[3];     // from its new moments
  BlockScale prev_scale[3]; // and how they are encoded (prescale applied already: 1)
};

template <typename F, typename PS, int R, bool AMS, bool PLAIN, bool ENCODE>
void fused_float8(int n, uint32_t first, PS* __restrict pp, PS* __restrict cp, const PS* __restrict gp,
                  const Float8Block& b, uint32_t* top, const Rule rule, float step_size, float bc2_sqrt,
                  const Keys& keys) {
  using U = decltype(bits_of(F{}));
  const uint8_t* __restrict mc = b.codes[0];
  const uint8_t* __restrict vc = b.codes[1];
  const uint8_t* __restrict xc = b.codes[2];
  const float ms = b.scale[0] * 256.0f, vs = b.scale[1], xs = b.scale[2];
  float* __restrict mo = b.out[0];
  float* __restrict vo = b.out[1];
  float* __restrict xo = b.out[2];
  uint8_t* __restrict mq = b.prev_codes[0];
  uint8_t* __restrict vq = b.prev_codes[1];
  uint8_t* __restrict xq = b.prev_codes[2];
  const float* __restrict mprev = b.prev[0];
  const float* __restrict vprev = b.prev[1];
  const float* __restrict xprev = b.prev[2];
  const float mi = b.prev_scale[0].inverse, vi = b.prev_scale[1].inverse, xi = b.prev_scale[2].inverse;
  const uint32_t mask = keys.mask, key0 = keys.k[0];
  U mtop{}, vtop{}, xtop{};
  for (int i = 0; i < n; i += lanes<F>) {
    F m = Load<F>::e4m3(mc + i) * ms, v = Load<F>::e5m3(vc + i) * vs, x{};  // ms: exp_avg's scale * 256
    if constexpr (AMS) x = Load<F>::e5m3(xc + i) * xs;
    const F p = update<AMS, PLAIN>(rule, load_param<F, PS, R>(pp, cp, i), load_as<F>(gp + i), m, v, x, step_size, bc2_sqrt);
    store_param<F, PS, R>(pp, cp, i, p, key0, Load<F>::index(first + uint32_t(i)), mask);
    store_f32(mo + i, m);
    store_f32(vo + i, v);
    mtop = absmax_bits(m, mtop);
    vtop = absmax_bits(v, vtop);
    if constexpr (AMS) {
      store_f32(xo + i, x);
      xtop = absmax_bits(x, xtop);
    }
    if constexpr (ENCODE) {  // the previous block is whole, and so is this one
      encode_e4m3(mq + i, Load<F>::f32(mprev + i) * mi);
      encode_e5m3(vq + i, Load<F>::f32(vprev + i) * vi);
      if constexpr (AMS) encode_e5m3(xq + i, Load<F>::f32(xprev + i) * xi);
    }
  }
  top[0] = reduce_max(mtop);
  top[1] = reduce_max(vtop);
  top[2] = reduce_max(xtop);
}

// ---- software prefetch --------------------------------------------------------------------------
// Two distances, each measured on the 2-core Intel Xeon at 64M parameters, 2 threads, ns per
// element (benchmarks/kernel_micro.py --elements 64M --threads 2 --rounds 2, --flags=-DDECOUPLED_PREFETCH=0
// or --flags=-DDECOUPLED_PAGE_AHEAD=0 against --flags=, the default; benchmarks/RESULTS.md):
// - The 8-bit loop asks for every cache line of the elements PREFETCH_AHEAD ahead, in every
//   array, once per 256-element block: the hardware prefetchers alone left a core waiting for
//   memory between its compute-heavy blocks (0.71 -> 0.52).
// - The dense loops ask for one line of each array PAGE_AHEAD elements ahead, once per 1024-element
//   chunk: each array's next 4 KiB page is then mapped (TLB) and its first line on the way before
//   the loop reaches it, where the hardware prefetchers stop at page boundaries (bf16 moments
//   0.565 -> 0.507-0.546, stochastic 0.563-0.595 -> 0.532-0.538; Kahan within 2%). Not for float32 parameters with
//   float32 moments: that loop moves torch's bytes at torch's speed without it, and with 2 MiB
//   pages (transparent huge pages) it was slower with it (0.61 -> 0.67-0.72). Every line, as in
//   the 8-bit loop, made the dense loops slower (fp32 0.57 -> 0.72): near the memory bound, the
//   requests compete.
// On the 2-core AMD EPYC (Zen 4) both made every loop slower but one, at every distance tried
// (256 to 32768 elements, one line or every line): 8-bit moments 0.56-0.67 -> 0.43-0.53, bf16
// moments (stochastic) 0.49-0.53 -> 0.43-0.48, Kahan 0.66-0.77 -> 0.59-0.66, at 64M, 2 threads,
// the distances switched at run time between interleaved steps (medians of 30). Its hardware
// prefetchers keep these streams fed; the extra requests only queue behind them. The exception
// is the 8-bit loop over bf16 parameters (10 bytes per element, the most arithmetic per byte),
// which the prefetch keeps faster there too (0.70 -> 0.61). build.py therefore sets
// DECOUPLED_PAGE_AHEAD and DECOUPLED_PREFETCH_F32 (the 8-bit loop over float32 parameters) to 0
// on AMD CPUs.

#ifndef DECOUPLED_PREFETCH
#define DECOUPLED_PREFETCH 1024
#endif
#ifndef DECOUPLED_PREFETCH_F32
#define DECOUPLED_PREFETCH_F32 DECOUPLED_PREFETCH
#endif
#ifndef DECOUPLED_PAGE_AHEAD
#define DECOUPLED_PAGE_AHEAD 2048
#endif
constexpr int64_t PREFETCH_AHEAD = DECOUPLED_PREFETCH;          // elements, 16-bit parameters (0: none)
constexpr int64_t PREFETCH_AHEAD_F32 = DECOUPLED_PREFETCH_F32;  // elements, float32 parameters
constexpr int64_t PAGE_AHEAD = DECOUPLED_PAGE_AHEAD;    // elements (0: none)

inline int64_t moment_bytes(int kind) { return kind == M_F32 ? 4 : (kind == M_TREE || kind == M_FLOAT8) ? 1 : 2; }

// f(array, bytes per element, written) for each array of tensor t
template <typename Fn>
inline void for_each_array(const Call& call, const Tensor& t, Fn f) {
  const int64_t ps = call.param_type == P_F32 ? 4 : 2;
  f(t.grad, ps, false);
  f(t.param, ps, true);
  if (t.comp != nullptr) f(t.comp, ps, true);
  for (int j = 0; j < call.n_moments; ++j) f(t.moment[j], moment_bytes(call.kind[j]), true);
}

// `lines` cache lines from byte `offset` of array p
inline void prefetch_lines(const void* p, int64_t offset, int64_t lines, bool written) {
  // GCC 12 counts __builtin_prefetch as free of side effects, finds this function so, and drops
  // its calls: the empty volatile asm keeps them (no instruction; not a memory barrier).
  asm volatile("");
  const char* at = static_cast<const char*>(p) + offset;
  for (int64_t k = 0; k < lines; ++k) {
    if (written) __builtin_prefetch(at + 64 * k, 1, 3);
    else __builtin_prefetch(at + 64 * k, 0, 3);
  }
}

// The cache lines of elements [at, at + n) of tensor t's arrays, if they lie below `hi`, a few
// lines of each array at a time (the 8-bit loop).
inline void prefetch(const Call& call, const Tensor& t, int64_t at, int64_t n, int64_t hi) {
  if (at + n > hi) return;
  for (int64_t e = at; e < at + n; e += 64)  // 64 elements: a line of 8-bit codes, 2 of bf16, 4 of float32
    for_each_array(call, t, [e](const void* p, int64_t bytes, bool written) { prefetch_lines(p, e * bytes, bytes, written); });
}

// The line of element `at` in each of tensor t's arrays, if below `hi` (the dense loops).
inline void prefetch_page(const Call& call, const Tensor& t, int64_t at, int64_t hi) {
  if (PAGE_AHEAD == 0 || at >= hi) return;
  for_each_array(call, t, [at](const void* p, int64_t bytes, bool written) { prefetch_lines(p, at * bytes, 1, written); });
}

// ---- one chunk of one tensor --------------------------------------------------------------------

constexpr int PAD = 16;  // floats between buffers, so that they do not alias each other modulo 4 KiB

// Dense moments, and the float16 or 8-bit tree formats through float32 buffers.
template <typename PS, int R, int S, bool AMS, bool PLAIN>
void run_chunk(const Call& call, const Tensor& t, int64_t lo) {
  const int n = int(std::min<int64_t>(BLOCK, t.numel - lo));
  const int nm = call.n_moments;
  const int kind = call.kind[0];
  const bool half = call.param_type == P_F16;
  alignas(64) float buf[5][BLOCK + PAD];  // param, grad, moments: those that are not float32/bf16
  const Keys keys = keys_at(call, t, lo);
  PS *pp, *cp = nullptr;
  const PS* gp;
  if (half) {  // PS is float: through buffers, the compensation added on load
    half_to_float(static_cast<const Half*>(t.param) + lo, buf[0], n);
    if (t.comp != nullptr) {
      half_to_float(static_cast<const Half*>(t.comp) + lo, buf[1], n);
      for (int i = 0; i < n; ++i) buf[0][i] += buf[1][i];
    }
    half_to_float(static_cast<const Half*>(t.grad) + lo, buf[1], n);
    pp = reinterpret_cast<PS*>(buf[0]);
    gp = reinterpret_cast<const PS*>(buf[1]);
  } else {
    pp = static_cast<PS*>(t.param) + lo;
    gp = static_cast<const PS*>(t.grad) + lo;
    if (t.comp != nullptr) cp = static_cast<PS*>(t.comp) + lo;
  }
  void* mom[3] = {nullptr, nullptr, nullptr};
  for (int j = 0; j < nm; ++j) {
    const uint8_t* codes = static_cast<const uint8_t*>(t.moment[j]) + lo;
    if (kind == M_TREE) {
      load_tree(codes, t.scale[j] + lo / QBLOCK, call.book[j].values, buf[2 + j], n);
      mom[j] = buf[2 + j];
    } else if (kind == M_FLOAT8) {
      load_float8(codes, t.scale[j] + lo / QBLOCK, j == 0, buf[2 + j], n);
      mom[j] = buf[2 + j];
    } else if (kind == M_F16) {
      half_to_float(static_cast<const Half*>(t.moment[j]) + lo, buf[2 + j], n);
      mom[j] = buf[2 + j];
    } else {
      mom[j] = static_cast<char*>(t.moment[j]) + lo * moment_bytes(kind);
    }
  }
  fused<PS, R, S, AMS, PLAIN>(n, uint32_t(lo), pp, cp, gp, mom[0], mom[1], mom[2], rule_of(call.k), t.step_size, t.bc2_sqrt,
                       keys);
  if (half) {
    Half* dst = static_cast<Half*>(t.param) + lo;
    if (t.comp != nullptr) store_kahan_f16(buf[0], dst, static_cast<Half*>(t.comp) + lo, n);
    else float_to_half(buf[0], dst, n);
  }
  for (int j = 0; j < nm; ++j) {
    uint8_t* codes = static_cast<uint8_t*>(t.moment[j]) + lo;
    if (kind == M_TREE)
      store_tree(buf[2 + j], call.book[j], codes, t.scale[j] + lo / QBLOCK, n);
    else if (kind == M_FLOAT8)
      store_float8(buf[2 + j], j == 0, codes, t.scale[j] + lo / QBLOCK, n);
    else if (kind == M_F16)
      float_to_half(buf[2 + j], static_cast<Half*>(t.moment[j]) + lo, n);
  }
}

// 8-bit float moments of a float32 or bf16 parameter: elements [lo, hi) of tensor t (lo a
// multiple of BLOCK), block after block, each block's codes written during the next one's loop;
// whole blocks in LANES-wide vectors where simd.h has them.
#ifdef DECOUPLED_SIMD
using Lane = VF;
#else
using Lane = float;
#endif

template <typename PS, int R, bool AMS, bool PLAIN>
void run_float8(const Call& call, const Tensor& t, int64_t lo, int64_t hi) {
  const int nm = call.n_moments;
  const Rule rule = rule_of(call.k);
  alignas(64) float buf[2][3][QBLOCK + PAD];  // new moments of this block and of the previous one
  Float8Block b{};
  for (int j = 0; j < 3; ++j) b.prev[j] = b.out[j] = buf[0][j];  // read or written only for j < nm
  int prev_n = 0;
  Keys keys = keys_at(call, t, lo);
  for (int64_t at = lo; at < hi; at += QBLOCK) {
    const int n = int(std::min<int64_t>(QBLOCK, hi - at));
    const int64_t block = at / QBLOCK;
    if ((uint64_t(at) & 0xFFFFFFFFu) == 0) keys = keys_at(call, t, at);
    for (int j = 0; j < nm; ++j) {
      b.codes[j] = static_cast<const uint8_t*>(t.moment[j]) + at;
      b.scale[j] = t.scale[j][block];
      b.out[j] = buf[block & 1][j];
    }
    PS* pp = static_cast<PS*>(t.param) + at;
    PS* cp = t.comp != nullptr ? static_cast<PS*>(t.comp) + at : nullptr;
    const PS* gp = static_cast<const PS*>(t.grad) + at;
    constexpr int64_t ahead = std::is_same_v<PS, float> ? PREFETCH_AHEAD_F32 : PREFETCH_AHEAD;
    if constexpr (ahead != 0) prefetch(call, t, at + ahead, QBLOCK, hi);
    uint32_t top[3];
    if (n == QBLOCK && prev_n > 0) {
      fused_float8<Lane, PS, R, AMS, PLAIN, true>(n, uint32_t(at), pp, cp, gp, b, top, rule, t.step_size, t.bc2_sqrt, keys);
    } else if (n == QBLOCK) {
      fused_float8<Lane, PS, R, AMS, PLAIN, false>(n, uint32_t(at), pp, cp, gp, b, top, rule, t.step_size, t.bc2_sqrt, keys);
    } else {
      for (int j = 0; j < nm && prev_n > 0; ++j)  // a short last block: the previous one first
        encode_block(b.prev[j], j == 0, b.prev_scale[j], b.prev_codes[j], prev_n);
      fused_float8<float, PS, R, AMS, PLAIN, false>(n, uint32_t(at), pp, cp, gp, b, top, rule, t.step_size, t.bc2_sqrt, keys);
    }
    for (int j = 0; j < nm; ++j) {
      BlockScale s = block_scale(top[j], j == 0);
      t.scale[j][block] = s.scale;
      if (s.prescale != 1.0f) {  // rare: a tiny block, scaled in L1 before its codes are written
        for (int i = 0; i < n; ++i) b.out[j][i] *= s.prescale;
        s.prescale = 1.0f;
      }
      b.prev_codes[j] = static_cast<uint8_t*>(t.moment[j]) + at;
      b.prev[j] = b.out[j];
      b.prev_scale[j] = s;
    }
    prev_n = n;
  }
  for (int j = 0; j < nm && prev_n > 0; ++j) encode_block(b.prev[j], j == 0, b.prev_scale[j], b.prev_codes[j], prev_n);
}

// Elements [lo, hi) of tensor t (lo a multiple of BLOCK).
template <typename PS, int R, int S, bool AMS, bool PLAIN>
void run_piece(const Call& call, const Tensor& t, int64_t lo, int64_t hi) {
  if constexpr (S == L_F32) {
    if (call.kind[0] == M_FLOAT8 && call.param_type != P_F16)
      return run_float8<PS, R, AMS, PLAIN>(call, t, lo, hi);
  }
  const bool pages = !(call.param_type == P_F32 && call.kind[0] == M_F32);  // (above)
  for (int64_t at = lo; at < hi; at += BLOCK) {
    if (pages) prefetch_page(call, t, at + PAGE_AHEAD, hi);
    run_chunk<PS, R, S, AMS, PLAIN>(call, t, at);
  }
}

constexpr int64_t GRAB = 64;  // chunks a thread takes at a time (64K elements)

// Chunks of all tensors in one numbering, taken GRAB at a time by torch's intra-op threads
// (OpenMP, dynamic schedule: a thread slowed by other work on its core takes fewer, where
// a static split would wait for it).
template <typename PS, int R, int S, bool AMS, bool PLAIN>
void run(const Call& call) {
  const int64_t T = int64_t(call.tensors.size());
  std::vector<int64_t> first(T + 1, 0);  // first chunk of each tensor
  for (int64_t i = 0; i < T; ++i) first[i + 1] = first[i] + (call.tensors[i].numel + BLOCK - 1) / BLOCK;
  const int64_t grabs = (first[T] + GRAB - 1) / GRAB;
  const int threads = int(std::min<int64_t>(at::get_num_threads(), grabs));
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
  for (int64_t grab = 0; grab < grabs; ++grab) {
    const int64_t b0 = grab * GRAB, b1 = std::min(b0 + GRAB, first[T]);
    int64_t i = std::upper_bound(first.begin(), first.end(), b0) - first.begin() - 1;
    for (int64_t b = b0; b < b1; ++i) {  // the pieces of tensors i, i + 1, ... in [b0, b1)
      const int64_t end = std::min(b1, first[i + 1]);
      const Tensor& t = call.tensors[i];
      if (end > b) run_piece<PS, R, S, AMS, PLAIN>(call, t, (b - first[i]) * BLOCK, std::min(t.numel, (end - first[i]) * BLOCK));
      b = std::max(b, end);
    }
  }
}

template <typename PS, int R, int S>
void dispatch_amsgrad(const Call& call) {
  const bool usual = plain(call.k);
  if (call.k.amsgrad) usual ? run<PS, R, S, true, true>(call) : run<PS, R, S, true, false>(call);
  else usual ? run<PS, R, S, false, true>(call) : run<PS, R, S, false, false>(call);
}

template <typename PS, int R>
void dispatch_moments(const Call& call) {
  switch (call.kind[0]) {
    case M_BF16: dispatch_amsgrad<PS, R, L_BF16>(call); break;
    case M_BF16_SR: dispatch_amsgrad<PS, R, L_BF16_SR>(call); break;
    default: dispatch_amsgrad<PS, R, L_F32>(call); break;  // float32, or float16 / 8-bit through buffers
  }
}

void dispatch(const Call& call) {
  if (call.param_type == P_BF16) {
    switch (call.rounding) {
      case R_KAHAN: dispatch_moments<uint16_t, R_KAHAN>(call); break;
      case R_STOCHASTIC: dispatch_moments<uint16_t, R_STOCHASTIC>(call); break;
      default: dispatch_moments<uint16_t, R_NEAREST>(call); break;
    }
  } else {
    dispatch_moments<float, R_NEAREST>(call);  // float32, or float16 through buffers
  }
}

#ifndef DECOUPLED_KERNEL_STANDALONE
// ---- the Python entry point ----------------------------------------------------------------

using Ptrs = std::vector<uintptr_t>;

template <typename T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

void step(int param_type, int rounding, const std::vector<int>& kinds, const Ptrs& params, const Ptrs& grads,
          const Ptrs& comps, const std::vector<Ptrs>& moments, const std::vector<Ptrs>& scales,
          const std::vector<int64_t>& numels, const std::vector<int64_t>& ids, const std::vector<double>& step_sizes,
          const std::vector<double>& bc2_sqrts, const std::vector<double>& coefficients,
          const std::vector<bool>& flags, int64_t seed, bool random_noise, const Ptrs& tables) {
  // coefficients: beta1, beta2, eps, decay_factor, l2 (float64, rounded to float32 as torch does)
  // flags: maximize, coupled, decays, cautious, amsgrad
  // tables: (base, threshold, values) per moment, 0 for dense moments
  // ids: each tensor's number in the step (its noise streams' keys depend on it)
  const size_t T = params.size();
  const int nm = int(kinds.size());
  if (nm < 2 || nm > 3 || moments.size() != size_t(nm) || scales.size() != size_t(nm) || tables.size() != 3 * size_t(nm))
    throw std::invalid_argument("decoupled native step: 2 or 3 moments, each with storage, scales and tables");
  if (grads.size() != T || comps.size() != T || numels.size() != T || ids.size() != T || step_sizes.size() != T ||
      bc2_sqrts.size() != T)
    throw std::invalid_argument("decoupled native step: one grad, comp, numel and step coefficient per tensor");
  for (int j = 0; j < nm; ++j)
    if (moments[j].size() != T || scales[j].size() != T)
      throw std::invalid_argument("decoupled native step: one storage and scale per tensor and moment");
  if (coefficients.size() != 5 || flags.size() != 5)
    throw std::invalid_argument("decoupled native step: 5 coefficients and 5 flags");
  Call call;
  call.param_type = param_type;
  call.rounding = rounding;
  call.n_moments = nm;
  call.noise_mask = random_noise ? 0xFFFFu : 0u;
  const double beta1 = coefficients[0], beta2 = coefficients[1];
  Coefficients& k = call.k;
  k.beta2 = float(beta2);
  k.one_minus_beta2 = float(1.0 - beta2);
  k.w = float(1.0 - beta1);
  k.w_minus_1 = k.w - 1.0f;
  k.w_small = std::fabs(k.w) < 0.5f;
  k.eps = float(coefficients[2]);
  k.rho = float(coefficients[3]);
  k.l2 = float(coefficients[4]);
  k.maximize = flags[0];
  k.coupled = flags[1];
  k.decays = flags[2];
  k.cautious = flags[3];
  k.amsgrad = flags[4];
  if (k.amsgrad != (nm == 3)) throw std::invalid_argument("decoupled native step: amsgrad needs exactly 3 moments");
  for (int j = 0; j < nm; ++j) {
    call.kind[j] = kinds[j];
    call.book[j] = {ptr<const int32_t>(tables[3 * j]), ptr<const float>(tables[3 * j + 1]),
                    ptr<const float>(tables[3 * j + 2])};
    if (kinds[j] == M_TREE && (tables[3 * j] == 0 || tables[3 * j + 1] == 0 || tables[3 * j + 2] == 0))
      throw std::invalid_argument("decoupled native step: an 8-bit moment needs its codebook tables");
  }
  call.tensors.resize(T);
  for (size_t i = 0; i < T; ++i) {
    Tensor& t = call.tensors[i];
    t.param = ptr<void>(params[i]);
    t.grad = ptr<const void>(grads[i]);
    t.comp = ptr<void>(comps[i]);
    for (int j = 0; j < 3; ++j) {
      t.moment[j] = j < nm ? ptr<void>(moments[j][i]) : nullptr;
      t.scale[j] = j < nm ? ptr<float>(scales[j][i]) : nullptr;
    }
    t.numel = numels[i];
    t.step_size = float(step_sizes[i]);
    t.bc2_sqrt = float(bc2_sqrts[i]);
    for (int s = 0; s < 4; ++s) t.key[s] = stream_key(seed, ids[i], s);
  }
  if (param_type < P_F32 || param_type > P_F16 || rounding < R_NEAREST || rounding > R_STOCHASTIC)
    throw std::invalid_argument("decoupled native step: unknown parameter type or rounding");
  for (int j = 1; j < nm; ++j)
    if (kinds[j] != kinds[0]) throw std::invalid_argument("decoupled native step: all moments in one format");
  pybind11::gil_scoped_release release;
  dispatch(call);
}

// Adds 1 to each step count (a 0-d float32 tensor's element, or float64 where `wide`), in its
// own precision as torch's add_ does, and returns the new counts: one call for every tensor of
// a step instead of torch._foreach_add_, which costs about 1 us per 0-d CPU tensor.
std::vector<double> count_steps(const Ptrs& counts, const std::vector<bool>& wide) {
  if (wide.size() != counts.size()) throw std::invalid_argument("decoupled native count_steps: one flag per count");
  std::vector<double> out(counts.size());
  for (size_t i = 0; i < counts.size(); ++i) {
    if (wide[i]) out[i] = *ptr<double>(counts[i]) += 1.0;
    else out[i] = *ptr<float>(counts[i]) += 1.0f;
  }
  return out;
}

#endif

// Noise of one stream as the kernel draws it (for tests of its distribution).
// (stream: 0 param, 1 exp_avg, 2 exp_avg_sq, 3 max_exp_avg_sq; elements first .. first + n)
std::vector<uint32_t> noise_of(int64_t seed, int64_t tensor, int stream, int64_t first, int64_t n) {
  std::vector<uint32_t> out(n);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t index = uint64_t(first + i);
    const uint32_t key = stream_key(seed, tensor, stream == 2 ? 1 : stream) ^ mix32(uint32_t(index >> 32));
    out[i] = stream == 2 ? low_noise(mix32(uint32_t(index) ^ key), 0xFFFFu) : noise_at(key, uint32_t(index), 0xFFFFu);
  }
  return out;
}

// Checks of the 8-bit codes over the float32 bit patterns first, first + stride, ... < 2^32
// (and all 256 codes): the number of inputs where the scalar arithmetic of codes.h, the vectors
// of simd.h (where built) and the CPU's float16 instructions (F16C, where present) disagree.
int64_t code_mismatches(int64_t first, int64_t stride) {
  int64_t bad = 0;
  for (int c = 0; c < 256; ++c) {
    const uint8_t code = uint8_t(c);
    uint32_t e4 = bits_of(from_e4m3(code)), e5 = bits_of(from_e5m3(code));
#if defined(__F16C__)
    const uint32_t magnitude = bits_of(_cvtsh_ss(uint16_t((c & 0x7F) << 7)) * 256.0f) | (uint32_t(c & 0x80) << 24);
    bad += e4 != ((c & 0x7F) == 0x7F ? 0x7FC00000u | (uint32_t(c & 0x80) << 24) : magnitude);
    bad += e5 != bits_of(_cvtsh_ss(uint16_t(c << 7)));
#endif
#ifdef DECOUPLED_SIMD
    alignas(64) uint8_t codes[LANES];
    for (int i = 0; i < LANES; ++i) codes[i] = code;
    bad += e4 != bits_of(Load<VF>::e4m3(codes) * 256.0f)[0] || e5 != bits_of(Load<VF>::e5m3(codes))[0];
    bad += e4 != bits_of(Load<float>::e4m3(codes) * 256.0f);
#endif
  }
  const int64_t n = ((int64_t(1) << 32) - first + stride - 1) / stride;
#pragma omp parallel for reduction(+ : bad) schedule(static, 1)
  for (int64_t chunk = 0; chunk < (n + 4095) / 4096; ++chunk) {
    alignas(64) float y[4096];
    alignas(64) uint8_t a[4096], b[4096], c4[4096], d[4096];
    const int64_t lo = chunk * 4096, m = std::min<int64_t>(4096, n - lo);
    for (int64_t i = 0; i < m; ++i) y[i] = float_of(uint32_t(first + (lo + i) * stride));
    for (int64_t i = 0; i < m; ++i) {
      a[i] = to_e4m3(y[i]);
      b[i] = to_e5m3(y[i]);
    }
#ifdef DECOUPLED_SIMD
    int64_t i = 0;
    for (; i + LANES <= m; i += LANES) {
      encode_e4m3(c4 + i, Load<VF>::f32(y + i));
      encode_e5m3(d + i, Load<VF>::f32(y + i));
    }
    for (; i < m; ++i) {
      c4[i] = a[i];
      d[i] = b[i];
    }
    for (int64_t k = 0; k < m; ++k) bad += (a[k] != c4[k]) + (b[k] != d[k]);
#endif
#if defined(__F16C__)
    for (int64_t k = 0; k < m; ++k) {
      const float x = std::fabs(y[k]) < 65520.0f || y[k] != y[k] ? y[k] : 0.0f;  // half_bits' domain
      bad += half_bits(x) != _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT);
    }
#endif
    (void)c4;
    (void)d;
  }
  return bad;
}


}  // namespace

#ifndef DECOUPLED_KERNEL_STANDALONE
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "decoupled: fused CPU Adam step over formatted state";
  m.attr("BLOCK") = BLOCK;
  m.def("to_e4m3", [](std::vector<float> x) { std::vector<uint8_t> r; for (float v : x) r.push_back(to_e4m3(v)); return r; });
  m.def("to_e5m3", [](std::vector<float> x) { std::vector<uint8_t> r; for (float v : x) r.push_back(to_e5m3(v)); return r; });
  m.def("step", &step);
  m.def("count_steps", &count_steps);
  m.def("noise", &noise_of);
  m.def("code_mismatches", &code_mismatches);
#ifdef DECOUPLED_SIMD
  m.attr("LANES") = LANES;
#else
  m.attr("LANES") = 1;
#endif
}
#endif
