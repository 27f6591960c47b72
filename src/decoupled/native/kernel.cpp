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
// Work is cut into chunks of 1024 elements. One loop per chunk loads, updates and stores
// float32, bf16 and float16-in-buffers values directly; 8-bit moments are decoded into float32
// buffers (L1) before it and encoded after it, 256 elements (one scale) at a time. The loops
// are vectorized by the compiler (-O3 -march=native); chunks of all tensors of a call are
// shared out over torch's intra-op threads (see run). Compiled with -ffp-contract=off: the
// only fused multiply-adds are the explicit std::fma calls.

#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "codes.h"

namespace {

using namespace decoupled_codes;

constexpr int64_t BLOCK = 1024;  // elements per chunk of work (a multiple of QBLOCK)
static_assert(BLOCK % QBLOCK == 0, "a chunk holds whole 8-bit blocks");

enum ParamType { P_F32 = 0, P_BF16 = 1, P_F16 = 2 };
enum MomentKind { M_F32 = 0, M_BF16 = 1, M_BF16_SR = 2, M_F16 = 3, M_TREE = 4, M_FLOAT8 = 5 };
enum Rounding { R_NEAREST = 0, R_KAHAN = 1, R_STOCHASTIC = 2 };

// A bijection of 32-bit integers with good avalanche (Wellons' "lowbias32").
inline uint32_t mix32(uint32_t x) {
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

// ---- the fused loop ---------------------------------------------------------------------------
// One loop over a chunk: load, update, store. It reads and writes float32 (in place, or
// buffers that float16 or 8-bit values are converted to and from around it) or bf16 bits.
// R: how a bf16 parameter is written; S: how moments are written (float32, bf16 nearest, bf16
// stochastic).

enum LoopMoments { L_F32 = 0, L_BF16 = 1, L_BF16_SR = 2 };

inline float load_elem(float x) { return x; }
inline float load_elem(uint16_t x) { return from_bf16(x); }

// Stochastic-rounding noise of one element: the top 16 bits of mix32(index ^ key), masked to 0
// for truncation (tests).
inline uint32_t noise_at(uint32_t key, uint32_t index, uint32_t mask) { return (mix32(index ^ key) >> 16) & mask; }

template <int S, typename T>
inline void store_moment(T* __restrict dst, int i, float x, uint32_t key, uint32_t index, uint32_t mask) {
  if constexpr (S == L_F32) dst[i] = x;
  else if constexpr (S == L_BF16) dst[i] = bf16_nearest(x);
  else dst[i] = bf16_stochastic(x, noise_at(key, index, mask));
}

struct Keys {
  uint32_t k[4];  // this chunk's keys of the parameter's and the moments' noise streams
  uint32_t mask;
};

template <typename PS, int R, int S, bool AMS>
void fused(int n, uint32_t first, PS* __restrict pp, PS* __restrict cp, const PS* __restrict gp, void* m0, void* m1,
           void* m2, const Coefficients& k, float step_size, float bc2_sqrt, const Keys& keys) {
  using MT = std::conditional_t<S == L_F32, float, uint16_t>;
  MT* __restrict mp = static_cast<MT*>(m0);
  MT* __restrict vp = static_cast<MT*>(m1);
  MT* __restrict xp = static_cast<MT*>(m2);
  // Every coefficient in a local, and the uniform choices as bit masks or constants: GCC 12
  // vectorizes neither masked scalar loads from `k` nor selects on a scalar bool.
  const uint32_t mask = keys.mask, key0 = keys.k[0], key1 = keys.k[1], key2 = keys.k[2], key3 = keys.k[3];
  const float l2 = k.l2, one_minus_beta2 = k.one_minus_beta2, beta2 = k.beta2, eps = k.eps;
  const uint32_t negate = k.maximize ? 0x80000000u : 0u;      // -g flips the sign bit
  const uint32_t coupled = k.coupled ? 0xFFFFFFFFu : 0u;      // take g + l2 * theta
  const uint32_t from_m = k.w_small ? 0xFFFFFFFFu : 0u;       // lerp's base: m (small weight) or g
  const float weight = k.w_small ? k.w : k.w_minus_1;
  const float rho = k.decays ? k.rho : 1.0f;                  // theta * 1 is theta, bit for bit
  // decay where m * theta >= 0 (cautious) or everywhere (-inf; a NaN product decays in neither)
  const float threshold = k.cautious ? 0.0f : -std::numeric_limits<float>::infinity();
#pragma GCC ivdep
  for (int i = 0; i < n; ++i) {
    const uint32_t index = first + uint32_t(i);
    float p = load_elem(pp[i]);
    if constexpr (R == R_KAHAN) p += load_elem(cp[i]);
    float g = float_of(bits_of(load_elem(gp[i])) ^ negate);
    float m = load_elem(mp[i]), v = load_elem(vp[i]);
    g = float_of((bits_of(std::fma(p, l2, g)) & coupled) | (bits_of(g) & ~coupled));
    const float base = float_of((bits_of(m) & from_m) | (bits_of(g) & ~from_m));
    m = std::fma(weight, g - m, base);
    v = std::fma(one_minus_beta2 * g, g, v * beta2);
    float second = v;
    if constexpr (AMS) {
      const float x = load_elem(xp[i]);
      second = (x > v || x != x) ? x : v;  // torch.maximum: NaN wins
      store_moment<S>(xp, i, second, key3, index, mask);
    }
    const float kept = m * p >= threshold ? p * rho : p;
    p = kept + (step_size * m) / (std::sqrt(second) / bc2_sqrt + eps);
    if constexpr (std::is_same_v<PS, float>) {
      pp[i] = p;
    } else if constexpr (R == R_KAHAN) {
      const uint16_t hi = bf16_nearest(p);
      pp[i] = hi;
      cp[i] = bf16_nearest(p - from_bf16(hi));
    } else if constexpr (R == R_STOCHASTIC) {
      pp[i] = bf16_stochastic(p, noise_at(key0, index, mask));
    } else {
      pp[i] = bf16_nearest(p);
    }
    store_moment<S>(mp, i, m, key1, index, mask);
    store_moment<S>(vp, i, v, key2, index, mask);
  }
}

// ---- one chunk of one tensor --------------------------------------------------------------------

constexpr int PAD = 16;  // floats between buffers, so that they do not alias each other modulo 4 KiB

template <typename PS, int R, int S, bool AMS>
void run_chunk(const Call& call, const Tensor& t, int64_t lo) {
  const int n = int(std::min<int64_t>(BLOCK, t.numel - lo));
  const int nm = call.n_moments;
  const int kind = call.kind[0];
  const bool half = call.param_type == P_F16;
  alignas(64) float buf[5][BLOCK + PAD];  // param, grad, moments: those that are not float32/bf16
  Keys keys;
  keys.mask = call.noise_mask;
  const uint32_t high = mix32(uint32_t(uint64_t(lo) >> 32));  // a new key per 2^32 elements
  for (int s = 0; s < 4; ++s) keys.k[s] = t.key[s] ^ high;
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
      mom[j] = static_cast<char*>(t.moment[j]) + lo * (kind == M_F32 ? 4 : 2);
    }
  }
  fused<PS, R, S, AMS>(n, uint32_t(lo), pp, cp, gp, mom[0], mom[1], mom[2], call.k, t.step_size, t.bc2_sqrt, keys);
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

constexpr int64_t GRAB = 64;  // chunks a thread takes at a time (64K elements)

// Chunks of all tensors in one numbering, taken GRAB at a time by torch's intra-op threads
// (OpenMP, dynamic schedule: a thread slowed by other work on its core takes fewer, where
// a static split would wait for it).
template <typename PS, int R, int S, bool AMS>
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
    for (int64_t b = b0; b < b1; ++b) {
      while (b >= first[i + 1]) ++i;
      run_chunk<PS, R, S, AMS>(call, call.tensors[i], (b - first[i]) * BLOCK);
    }
  }
}

template <typename PS, int R, int S>
void dispatch_amsgrad(const Call& call) {
  if (call.k.amsgrad) run<PS, R, S, true>(call);
  else run<PS, R, S, false>(call);
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

// Noise of one stream as the kernel draws it (for tests of its distribution).
// (stream: 0 param, 1 exp_avg, 2 exp_avg_sq, 3 max_exp_avg_sq; elements first .. first + n)
std::vector<uint32_t> noise_of(int64_t seed, int64_t tensor, int stream, int64_t first, int64_t n) {
  std::vector<uint32_t> out(n);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t index = uint64_t(first + i);
    const uint32_t key = stream_key(seed, tensor, stream) ^ mix32(uint32_t(index >> 32));
    out[i] = noise_at(key, uint32_t(index), 0xFFFFu);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "decoupled: fused CPU Adam step over formatted state";
  m.attr("BLOCK") = BLOCK;
  m.def("to_e4m3", [](std::vector<float> x) { std::vector<uint8_t> r; for (float v : x) r.push_back(to_e4m3(v)); return r; });
  m.def("to_e5m3", [](std::vector<float> x) { std::vector<uint8_t> r; for (float v : x) r.push_back(to_e5m3(v)); return r; });
  m.def("step", &step);
  m.def("noise", &noise_of);
}
