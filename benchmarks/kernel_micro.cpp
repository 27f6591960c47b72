// The native kernel's loops on their own: ns per element of one step for each state format,
// without Python or torch (kernel.cpp built with DECOUPLED_KERNEL_STANDALONE), so that compiler
// flags and instruction sets can be compared on one machine. Built and run by
// benchmarks/kernel_micro.py, which prints the table; the state after the timed steps is hashed,
// so builds for different instruction sets can be checked to compute the same bits.
//
// usage: kernel_micro ELEMENTS STEPS  (OMP_NUM_THREADS sets the threads)

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <random>
#include <vector>

#include "kernel.cpp"

namespace {

struct Case {
  const char* name;
  int param_type, rounding, kind;
  bool amsgrad = false, maximize = false, coupled = false, cautious = false;
};

// Arrays start on a cache line, as torch's CPU allocator places tensors (64-byte alignment), so
// that a 16-lane vector is one line. std::vector's large blocks start 16 bytes into a page: every
// AVX-512 load and store of the loops then spans two lines, which no tensor of the optimizer does.
#ifndef MICRO_ALIGN
#define MICRO_ALIGN 64
#endif
template <typename T>
struct Aligned {
  using value_type = T;
  Aligned() = default;
  template <typename U>
  Aligned(const Aligned<U>&) {}
  T* allocate(size_t n) {
    const size_t bytes = (n * sizeof(T) + MICRO_ALIGN - 1) / MICRO_ALIGN * MICRO_ALIGN;
    void* p = std::aligned_alloc(MICRO_ALIGN, bytes);
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  template <typename U>
  bool operator==(const Aligned<U>&) const { return true; }
  template <typename U>
  bool operator!=(const Aligned<U>&) const { return false; }
};
template <typename T>
using Array = std::vector<T, Aligned<T>>;

// FNV-1a over bytes
struct Hash {
  uint64_t h = 1469598103934665603ull;
  void add(const void* data, size_t bytes) {
    const uint8_t* b = static_cast<const uint8_t*>(data);
    for (size_t k = 0; k < bytes; ++k) h = (h ^ b[k]) * 1099511628211ull;
  }
};

template <typename T>
void add(Hash& h, const Array<T>& v) {
  h.add(v.data(), v.size() * sizeof(T));
}

// The memory floor of a step: a loop with the traffic of the step for moments of `bytes`
// bytes each (float32 parameter and gradient; 4: float32, 2: bf16 bits, 1: bytes) and almost
// no arithmetic, cut into chunks and shared out among the threads as the kernel's loops are
// (dynamic grabs of GRAB chunks of BLOCK elements), without software prefetch. Its time is
// what the step's bytes cost on this machine; a loop's distance from it is arithmetic, or
// memory parallelism that the arithmetic costs.
template <typename M>
void traffic(float* __restrict p, const float* __restrict g, M* __restrict m, M* __restrict v, int64_t n) {
  const int64_t grabs = (n + GRAB * BLOCK - 1) / (GRAB * BLOCK);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t grab = 0; grab < grabs; ++grab) {
    const int64_t end = std::min(n, (grab + 1) * GRAB * BLOCK);
    for (int64_t lo = grab * GRAB * BLOCK; lo < end; lo += BLOCK) {
      const int k = int(std::min<int64_t>(BLOCK, end - lo));
      float* pp = p + lo;
      const float* gp = g + lo;
      M* mp = m + lo;
      M* vp = v + lo;
      for (int i = 0; i < k; ++i) {
        float a, b;
        if constexpr (sizeof(M) == 4) {
          a = mp[i] + gp[i], b = vp[i] + gp[i];
          mp[i] = a, vp[i] = b;
        } else if constexpr (sizeof(M) == 2) {
          a = from_bf16(mp[i]) + gp[i], b = from_bf16(vp[i]) + gp[i];
          mp[i] = uint16_t(bits_of(a) >> 16), vp[i] = uint16_t(bits_of(b) >> 16);
        } else {
          a = float(mp[i]) + gp[i], b = float(vp[i]) + gp[i];
          mp[i] = uint8_t(int(a)), vp[i] = uint8_t(int(b));
        }
        pp[i] += a * b * 1e-9f;
      }
    }
  }
}

// ns per element of `steps` timed calls of f (the median) after one untimed call
template <typename Fn>
double time_steps(Fn f, int steps, int64_t n) {
  f();
  std::vector<double> seconds;
  for (int s = 0; s < steps; ++s) {
    const auto start = std::chrono::steady_clock::now();
    f();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  return seconds[seconds.size() / 2] * 1e9 / double(n);
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : (int64_t(1) << 16);
  const int steps = argc > 2 ? std::atoi(argv[2]) : 1000;
  const Case cases[] = {
      {"fp32 moments", P_F32, R_NEAREST, M_F32},
      {"bf16 moments, nearest", P_F32, R_NEAREST, M_BF16},
      {"bf16 moments (stochastic)", P_F32, R_NEAREST, M_BF16_SR},
      {"8bit moments", P_F32, R_NEAREST, M_FLOAT8},
      {"bf16 weights+moments, kahan", P_BF16, R_KAHAN, M_BF16},
      {"bf16 weights+moments, stochastic", P_BF16, R_STOCHASTIC, M_BF16},
      {"bf16 weights, stochastic, 8bit", P_BF16, R_STOCHASTIC, M_FLOAT8},
      {"8bit, amsgrad, maximize", P_F32, R_NEAREST, M_FLOAT8, true, true},
      {"8bit, coupled L2", P_F32, R_NEAREST, M_FLOAT8, false, false, true},
      {"8bit, kahan, cautious, amsgrad", P_BF16, R_KAHAN, M_FLOAT8, true, false, false, true},
  };
  std::printf("%-32s %10s  %s\n", "case", "ns/elem", "state hash");
  for (const Case& c : cases) {
    std::mt19937 rng(0);
    std::normal_distribution<float> normal;
    Array<float> p(n), g(n), m(n), v(n), x(n);
    for (int64_t i = 0; i < n; ++i) {
      p[i] = normal(rng) * 0.02f;
      g[i] = normal(rng) * 1e-3f;
      m[i] = g[i] * 0.1f;
      v[i] = x[i] = g[i] * g[i] * 1e-3f;
    }
    const bool bf16_param = c.param_type == P_BF16;
    Array<uint16_t> pb(n), gb(n), cb(n, 0), mb(n), vb(n), xb(n);
    for (int64_t i = 0; i < n; ++i) {
      pb[i] = bf16_nearest(p[i]);
      gb[i] = bf16_nearest(g[i]);
      mb[i] = bf16_nearest(m[i]);
      vb[i] = xb[i] = bf16_nearest(v[i]);
    }
    const int64_t blocks = (n + QBLOCK - 1) / QBLOCK;
    Array<uint8_t> mq(n), vq(n), xq(n);
    Array<float> ms(blocks), vs(blocks), xs(blocks);
    store_float8(m.data(), true, mq.data(), ms.data(), int(n));
    store_float8(v.data(), false, vq.data(), vs.data(), int(n));
    store_float8(x.data(), false, xq.data(), xs.data(), int(n));

    Call call;
    call.param_type = c.param_type;
    call.rounding = c.rounding;
    call.n_moments = c.amsgrad ? 3 : 2;
    call.noise_mask = 0xFFFFu;
    call.kind[0] = call.kind[1] = call.kind[2] = c.kind;
    Coefficients& k = call.k;
    k.beta2 = 0.999f;
    k.one_minus_beta2 = 1.0f - 0.999f;
    k.w = 0.1f;
    k.w_minus_1 = -0.9f;
    k.w_small = true;
    k.eps = 1e-8f;
    k.rho = 1.0f - 1e-5f;
    k.l2 = c.coupled ? 1e-2f : 0.0f;
    k.maximize = c.maximize;
    k.coupled = c.coupled;
    k.decays = !c.coupled;
    k.cautious = c.cautious;
    k.amsgrad = c.amsgrad;
    Tensor t{};
    t.numel = n;
    t.step_size = -1e-3f;
    t.bc2_sqrt = 0.05f;
    for (int s = 0; s < 4; ++s) t.key[s] = stream_key(1, 0, s);
    t.param = bf16_param ? static_cast<void*>(pb.data()) : static_cast<void*>(p.data());
    t.grad = bf16_param ? static_cast<const void*>(gb.data()) : static_cast<const void*>(g.data());
    t.comp = c.rounding == R_KAHAN ? cb.data() : nullptr;
    void* dense[3][3] = {{m.data(), v.data(), x.data()}, {mb.data(), vb.data(), xb.data()}, {mq.data(), vq.data(), xq.data()}};
    const int which = c.kind == M_F32 ? 0 : c.kind == M_FLOAT8 ? 2 : 1;
    float* scales[3] = {ms.data(), vs.data(), xs.data()};
    for (int j = 0; j < 3; ++j) {
      t.moment[j] = dense[which][j];
      t.scale[j] = c.kind == M_FLOAT8 ? scales[j] : nullptr;
    }
    call.tensors.push_back(t);

    const double ns = time_steps([&] { dispatch(call); }, steps, n);
    Hash h;
    if (bf16_param) add(h, pb), add(h, cb);
    else add(h, p);
    if (which == 0) add(h, m), add(h, v), add(h, x);
    if (which == 1) add(h, mb), add(h, vb), add(h, xb);
    if (which == 2) add(h, mq), add(h, vq), add(h, xq), add(h, ms), add(h, vs), add(h, xs);
    std::printf("%-32s %10.3f  %016llx\n", c.name, ns, static_cast<unsigned long long>(h.h));
  }
  // the floors: float32 parameters, moments of 4, 2 and 1 bytes (the 8-bit format's scales,
  // 4 bytes per 256 elements and moment, left out)
  Array<float> p(n, 0.0f), g(n, 1e-3f), m4(n, 0.0f), v4(n, 0.0f);
  Array<uint16_t> m2(n, 0), v2(n, 0);
  Array<uint8_t> m1(n, 0), v1(n, 0);
  const double f4 = time_steps([&] { traffic(p.data(), g.data(), m4.data(), v4.data(), n); }, steps, n);
  const double f2 = time_steps([&] { traffic(p.data(), g.data(), m2.data(), v2.data(), n); }, steps, n);
  const double f1 = time_steps([&] { traffic(p.data(), g.data(), m1.data(), v1.data(), n); }, steps, n);
  Hash h;
  add(h, p), add(h, m4), add(h, v4), add(h, m2), add(h, v2), add(h, m1), add(h, v1);
  const unsigned long long digest = h.h;
  std::printf("%-32s %10.3f  %016llx\n", "floor: 28 B (fp32 moments)", f4, digest);
  std::printf("%-32s %10.3f  %016llx\n", "floor: 20 B (bf16 moments)", f2, digest);
  std::printf("%-32s %10.3f  %016llx\n", "floor: 16 B (8-bit moments)", f1, digest);
  return 0;
}
