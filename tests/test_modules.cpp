// The element-wise, shape, pooling and upsampling modules (elementwise.hpp, pooling.hpp,
// upsample.hpp) against deliberately naive references written here: loops over NCHW in double,
// straight from the definitions (PyTorch's), sharing no code with the library.
//
// Every table case runs in float and in double
//   - through Module::forward on NCHW (Tensor4) and NHWC (NhwcTensor) inputs (one input), and
//   - through run() on Contexts of 1, 2 and 3 threads with min_parallel_madds(0) (every sample
//     split over the pool) and 3 threads at the default (samples whole), with several PostOps
//     {act, residual, after}; the outputs of every context must be bitwise equal, and run()
//     must not allocate (counted by a replaced operator new, in builds without sanitizers).
// Tolerances: max|ours - reference| / max(1, max|reference|) <= 1e-12 (double), 1e-5 (float);
// the reference runs on the inputs rounded to T.
//
// The PyTorch parity cases read the data of tools/make_module_parity_data.py from the
// directory in DYNCONV_MODULE_PARITY_DIR (skipped when it is not set) and compare at 1e-12
// (double, against torch's float64 output) and 1e-5 (float, against torch's float32 output).
#include <dynconv/elementwise.hpp>
#include <dynconv/module.hpp>
#include <dynconv/pooling.hpp>
#include <dynconv/safetensors.hpp>
#include <dynconv/upsample.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "parity_data.hpp"

// ---------------------------------------------------------------------------------------------
// Allocation counting: every call to the C allocator (so operator new too) is counted while a
// CountAllocations is alive, as in test_alloc.cpp: glibc lets a program replace malloc and
// friends and reach the originals as __libc_*. Not under sanitizers (which replace them) or
// another C library: the tests then do not count.

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define DYNCONV_TEST_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define DYNCONV_TEST_SANITIZED 1
#endif

namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocations{0};
}  // namespace

#if defined(__GLIBC__) && !defined(DYNCONV_TEST_SANITIZED)
#define DYNCONV_TEST_COUNT_ALLOCATIONS 1
namespace {
void count_allocation() {
  if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void* malloc(std::size_t n) {
  count_allocation();
  return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t s) {
  count_allocation();
  return __libc_calloc(n, s);
}
void* realloc(void* p, std::size_t n) {
  count_allocation();
  return __libc_realloc(p, n);
}
void* memalign(std::size_t a, std::size_t n) {
  count_allocation();
  return __libc_memalign(a, n);
}
void* aligned_alloc(std::size_t a, std::size_t n) {
  count_allocation();
  return __libc_memalign(a, n);
}
int posix_memalign(void** out, std::size_t a, std::size_t n) {
  count_allocation();
  *out = __libc_memalign(a, n);
  return *out ? 0 : 12;  // ENOMEM
}
}
#else
#define DYNCONV_TEST_COUNT_ALLOCATIONS 0
#endif

namespace {

using dynconv::Activation;
using dynconv::concat;
using dynconv::Context;
using dynconv::Index;
using dynconv::Inputs;
using dynconv::Module;
using dynconv::NhwcShape;
using dynconv::NhwcTensor;
using dynconv::NhwcView;
using dynconv::OptionsError;
using dynconv::Pair;
using dynconv::Pool2dOptions;
using dynconv::PostOps;
using dynconv::SafeTensors;
using dynconv::ShapeError;
using dynconv::Tensor2;
using dynconv::Tensor4;
using dynconv::UpsampleMode;
using dynconv::UpsampleOptions;
using ::testing::HasSubstr;

class CountAllocations {
 public:
  CountAllocations() {
    g_allocations.store(0);
    g_counting.store(true);
  }
  ~CountAllocations() { g_counting.store(false); }
  long count() const { return g_allocations.load(); }
};

TEST(AllocationCounter, Counts) {
  if (!DYNCONV_TEST_COUNT_ALLOCATIONS) GTEST_SKIP() << "needs glibc and no sanitizer (they replace malloc themselves)";
  long counted = 0;
  {
    CountAllocations count;
    void* volatile probe = std::malloc(64);
    counted = count.count();
    std::free(probe);
  }
  EXPECT_EQ(counted, 1) << "malloc is not being counted: the no-allocation checks would prove nothing";
}

template <typename T>
constexpr double tolerance() {
  return std::is_same<T, float>::value ? 1e-5 : 1e-12;
}
template <typename T>
const char* type_name() {
  return std::is_same<T, float>::value ? "float" : "double";
}

// ---------------------------------------------------------------------------------------------
// NCHW values in double, and conversions

struct Nchw {
  Index n = 0, c = 0, h = 0, w = 0;
  std::vector<double> v;

  Nchw() = default;
  Nchw(Index n_, Index c_, Index h_, Index w_, double fill = 0)
      : n(n_), c(c_), h(h_), w(w_), v(static_cast<std::size_t>(n_ * c_ * h_ * w_), fill) {}
  double& operator()(Index b, Index ch, Index i, Index j) { return v[static_cast<std::size_t>(((b * c + ch) * h + i) * w + j)]; }
  double operator()(Index b, Index ch, Index i, Index j) const {
    return v[static_cast<std::size_t>(((b * c + ch) * h + i) * w + j)];
  }
  NhwcShape shape() const { return {n, h, w, c}; }
  std::string str() const { return shape().str(); }
};

Nchw random_nchw(Index n, Index c, Index h, Index w, unsigned seed, double spread = 2.5) {
  Nchw x(n, c, h, w);
  std::mt19937 gen(seed);
  std::normal_distribution<double> dist(0.0, spread);
  for (double& e : x.v) e = dist(gen);
  return x;
}

template <typename T>
Nchw rounded(Nchw x) {
  for (double& e : x.v) e = static_cast<double>(static_cast<T>(e));
  return x;
}

template <typename T>
Tensor4<T> to_tensor(const Nchw& x) {
  Tensor4<T> t(x.n, x.c, x.h, x.w);
  for (std::size_t i = 0; i < x.v.size(); ++i) t.data()[i] = static_cast<T>(x.v[i]);
  return t;
}
template <typename T>
Nchw from_tensor(const Tensor4<T>& t) {
  Nchw x(t.dimension(0), t.dimension(1), t.dimension(2), t.dimension(3));
  for (std::size_t i = 0; i < x.v.size(); ++i) x.v[i] = static_cast<double>(t.data()[i]);
  return x;
}
/// NHWC values of x, in T.
template <typename T>
std::vector<T> to_nhwc(const Nchw& x) {
  std::vector<T> out(x.v.size());
  for (Index b = 0; b < x.n; ++b)
    for (Index ch = 0; ch < x.c; ++ch)
      for (Index i = 0; i < x.h; ++i)
        for (Index j = 0; j < x.w; ++j)
          out[static_cast<std::size_t>(((b * x.h + i) * x.w + j) * x.c + ch)] = static_cast<T>(x(b, ch, i, j));
  return out;
}
template <typename T>
Nchw from_nhwc(const T* p, const NhwcShape& s) {
  Nchw x(s.n, s.c, s.h, s.w);
  for (Index b = 0; b < s.n; ++b)
    for (Index ch = 0; ch < s.c; ++ch)
      for (Index i = 0; i < s.h; ++i)
        for (Index j = 0; j < s.w; ++j) x(b, ch, i, j) = static_cast<double>(p[((b * s.h + i) * s.w + j) * s.c + ch]);
  return x;
}

/// max |got - want| / max(1, max |want|) over finite values; +inf if the shapes differ or a
/// non-finite value (NaN, +-inf) of one is not the same in the other.
double error(const Nchw& got, const Nchw& want) {
  if (got.n != want.n || got.c != want.c || got.h != want.h || got.w != want.w) return HUGE_VAL;
  double diff = 0, scale = 1;
  for (std::size_t i = 0; i < want.v.size(); ++i) {
    const double a = got.v[i], b = want.v[i];
    if (!std::isfinite(b) || !std::isfinite(a)) {
      const bool same = (std::isnan(a) && std::isnan(b)) || a == b;
      if (!same) return HUGE_VAL;
      continue;
    }
    diff = std::max(diff, std::abs(a - b));
    scale = std::max(scale, std::abs(b));
  }
  return diff / scale;
}

/// "first difference at [b, c, h, w]: got .., want .." for failure messages.
std::string first_difference(const Nchw& got, const Nchw& want, double tol) {
  if (got.n != want.n || got.c != want.c || got.h != want.h || got.w != want.w)
    return "shape " + got.str() + " vs " + want.str();
  double scale = 1;
  for (double e : want.v)
    if (std::isfinite(e)) scale = std::max(scale, std::abs(e));
  for (Index b = 0; b < want.n; ++b)
    for (Index ch = 0; ch < want.c; ++ch)
      for (Index i = 0; i < want.h; ++i)
        for (Index j = 0; j < want.w; ++j) {
          const double a = got(b, ch, i, j), e = want(b, ch, i, j);
          const bool same = (std::isnan(a) && std::isnan(e)) || a == e;
          if (!same && !(std::abs(a - e) <= tol * scale)) {
            std::ostringstream os;
            os.precision(17);
            os << "first difference at [" << b << ", " << ch << ", " << i << ", " << j << "]: got " << a << ", want "
               << e;
            return os.str();
          }
        }
  return "no difference";
}

#define EXPECT_CLOSE(got, want, tol, what)                                                             \
  do {                                                                                                 \
    const double err_ = error(got, want);                                                              \
    EXPECT_LE(err_, tol) << what << ": " << first_difference(got, want, tol);                          \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Naive references (double, NCHW)

double ref_activation(Activation a, double x) {
  const auto relu6 = [](double v) { return std::isnan(v) ? v : std::min(std::max(v, 0.0), 6.0); };
  switch (a) {
    case Activation::Identity: return x;
    case Activation::ReLU: return std::isnan(x) ? x : std::max(x, 0.0);
    case Activation::ReLU6: return relu6(x);
    case Activation::HardSigmoid: return relu6(x + 3) / 6;
    case Activation::HardSwish: return x * relu6(x + 3) / 6;
    case Activation::Sigmoid: return 1 / (1 + std::exp(-x));
    case Activation::SiLU: return x / (1 + std::exp(-x));
    case Activation::Tanh: return std::tanh(x);
    case Activation::GELU: return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
  }
  return x;
}

Nchw ref_map(const Nchw& x, Activation a) {
  Nchw y = x;
  for (double& e : y.v) e = ref_activation(a, e);
  return y;
}

/// y = after(act(y) + residual)
Nchw ref_post(Nchw y, Activation act, const Nchw* residual, Activation after) {
  for (std::size_t i = 0; i < y.v.size(); ++i) {
    double v = ref_activation(act, y.v[i]);
    if (residual) v += residual->v[i];
    y.v[i] = ref_activation(after, v);
  }
  return y;
}

enum class BinaryOp { Add, Sub, Mul };

Nchw ref_binary(BinaryOp op, const Nchw& a, const Nchw& b) {
  const Nchw& full = (a.h * a.w >= b.h * b.w) ? a : b;
  Nchw y(full.n, full.c, full.h, full.w);
  for (Index n = 0; n < y.n; ++n)
    for (Index c = 0; c < y.c; ++c)
      for (Index i = 0; i < y.h; ++i)
        for (Index j = 0; j < y.w; ++j) {
          const double u = a(n, c, a.h == 1 && a.w == 1 ? 0 : i, a.h == 1 && a.w == 1 ? 0 : j);
          const double v = b(n, c, b.h == 1 && b.w == 1 ? 0 : i, b.h == 1 && b.w == 1 ? 0 : j);
          y(n, c, i, j) = op == BinaryOp::Add ? u + v : op == BinaryOp::Sub ? u - v : u * v;
        }
  return y;
}

Nchw ref_concat(const std::vector<Nchw>& in) {
  Index c = 0;
  for (const Nchw& x : in) c += x.c;
  Nchw y(in[0].n, c, in[0].h, in[0].w);
  Index at = 0;
  for (const Nchw& x : in) {
    for (Index n = 0; n < x.n; ++n)
      for (Index ch = 0; ch < x.c; ++ch)
        for (Index i = 0; i < x.h; ++i)
          for (Index j = 0; j < x.w; ++j) y(n, at + ch, i, j) = x(n, ch, i, j);
    at += x.c;
  }
  return y;
}

/// torch.flatten(x, 1) of NCHW x, as [N, C*H*W, 1, 1].
Nchw ref_flatten(const Nchw& x) {
  Nchw y(x.n, x.c * x.h * x.w, 1, 1);
  for (Index n = 0; n < x.n; ++n)
    for (Index k = 0; k < x.c * x.h * x.w; ++k) y(n, k, 0, 0) = x.v[static_cast<std::size_t>(n * x.c * x.h * x.w + k)];
  return y;
}

/// exp(x) / sum exp(x) over channels, or its log: in long double without subtracting the
/// maximum (e^1000 fits in long double), i.e. from the definition.
Nchw ref_softmax(const Nchw& x, bool log) {
  Nchw y = x;
  for (Index n = 0; n < x.n; ++n)
    for (Index i = 0; i < x.h; ++i)
      for (Index j = 0; j < x.w; ++j) {
        long double sum = 0;
        for (Index c = 0; c < x.c; ++c) sum += std::exp(static_cast<long double>(x(n, c, i, j)));
        for (Index c = 0; c < x.c; ++c) {
          const long double e = static_cast<long double>(x(n, c, i, j));
          y(n, c, i, j) = static_cast<double>(log ? e - std::log(sum) : std::exp(e) / sum);
        }
      }
  return y;
}

struct PoolSpec {
  bool max = true;
  Index kh = 2, kw = 2, sh = 2, sw = 2, ph = 0, pw = 0, dh = 1, dw = 1;
  bool ceil_mode = false, count_include_pad = true;
};

/// Output size along an axis, by walking the windows: window o starts at o*s in padded
/// coordinates [0, L + 2p). Floor mode: its last tap must lie inside them. Ceil mode: it may
/// overhang them by less than one stride, but must start inside the input or the left padding.
Index ref_pool_size(Index in, Index k, Index s, Index p, Index d, bool ceil_mode) {
  Index out = 0;
  for (Index o = 0;; ++o) {
    const Index start = o * s, last = start + d * (k - 1);
    const bool fits = ceil_mode ? (last < in + 2 * p + s - 1 && start < in + p) : last <= in + 2 * p - 1;
    if (!fits) break;
    out = o + 1;
  }
  return out;
}

Nchw ref_pool(const Nchw& x, const PoolSpec& s) {
  const Index oh = ref_pool_size(x.h, s.kh, s.sh, s.ph, s.dh, s.ceil_mode);
  const Index ow = ref_pool_size(x.w, s.kw, s.sw, s.pw, s.dw, s.ceil_mode);
  Nchw y(x.n, x.c, oh, ow);
  for (Index n = 0; n < x.n; ++n)
    for (Index c = 0; c < x.c; ++c)
      for (Index r = 0; r < oh; ++r)
        for (Index q = 0; q < ow; ++q) {
          double best = -HUGE_VAL, sum = 0;
          bool nan = false;
          Index inside = 0, padded = 0;
          for (Index i = 0; i < s.kh; ++i)
            for (Index j = 0; j < s.kw; ++j) {
              const Index ih = r * s.sh - s.ph + i * s.dh, iw = q * s.sw - s.pw + j * s.dw;
              if (ih >= -s.ph && ih < x.h + s.ph && iw >= -s.pw && iw < x.w + s.pw) ++padded;
              if (ih < 0 || ih >= x.h || iw < 0 || iw >= x.w) continue;
              ++inside;
              const double v = x(n, c, ih, iw);
              nan = nan || std::isnan(v);
              best = std::max(best, v);
              sum += v;
            }
          if (s.max)
            y(n, c, r, q) = nan ? std::numeric_limits<double>::quiet_NaN() : best;
          else
            y(n, c, r, q) = sum / static_cast<double>(s.count_include_pad ? padded : inside);
        }
  return y;
}

Nchw ref_adaptive(const Nchw& x, Index oh, Index ow) {
  Nchw y(x.n, x.c, oh, ow);
  for (Index n = 0; n < x.n; ++n)
    for (Index c = 0; c < x.c; ++c)
      for (Index r = 0; r < oh; ++r)
        for (Index q = 0; q < ow; ++q) {
          const Index h0 = static_cast<Index>(std::floor(static_cast<double>(r * x.h) / static_cast<double>(oh)));
          const Index h1 = static_cast<Index>(std::ceil(static_cast<double>((r + 1) * x.h) / static_cast<double>(oh)));
          const Index w0 = static_cast<Index>(std::floor(static_cast<double>(q * x.w) / static_cast<double>(ow)));
          const Index w1 = static_cast<Index>(std::ceil(static_cast<double>((q + 1) * x.w) / static_cast<double>(ow)));
          double sum = 0;
          for (Index i = h0; i < h1; ++i)
            for (Index j = w0; j < w1; ++j) sum += x(n, c, i, j);
          y(n, c, r, q) = sum / static_cast<double>((h1 - h0) * (w1 - w0));
        }
  return y;
}

struct UpsampleSpec {
  UpsampleMode mode = UpsampleMode::Nearest;
  std::optional<std::array<Index, 2>> size;
  std::optional<std::array<double, 2>> scale;
  bool align_corners = false;
};

/// PyTorch 1.13's source coordinate of output index d along an axis in -> out (upsample.hpp),
/// computed in T as PyTorch does; nearest rounds the product to float before the floor.
/// factor 0: a size was given.
template <typename T>
double ref_source(const UpsampleSpec& s, Index in, Index out, double factor, Index d) {
  if (s.mode == UpsampleMode::Nearest) {
    const T scale = factor > 0 ? static_cast<T>(1.0 / factor) : static_cast<T>(in) / static_cast<T>(out);
    return std::min<double>(std::floor(static_cast<float>(scale * static_cast<T>(d))), static_cast<double>(in - 1));
  }
  if (s.align_corners) {
    const T scale = out > 1 ? static_cast<T>(in - 1) / static_cast<T>(out - 1) : T(0);
    return static_cast<double>(scale * static_cast<T>(d));
  }
  if (in == out) return static_cast<double>(d);
  const T scale = factor > 0 ? static_cast<T>(1.0 / factor) : static_cast<T>(in) / static_cast<T>(out);
  return static_cast<double>(std::max(T(0), scale * (static_cast<T>(d) + T(0.5)) - T(0.5)));
}

template <typename T>
Nchw ref_upsample(const Nchw& x, const UpsampleSpec& s) {
  const Index oh = s.size ? (*s.size)[0] : static_cast<Index>(std::floor(static_cast<double>(x.h) * (*s.scale)[0]));
  const Index ow = s.size ? (*s.size)[1] : static_cast<Index>(std::floor(static_cast<double>(x.w) * (*s.scale)[1]));
  const double fh = s.scale ? (*s.scale)[0] : 0.0, fw = s.scale ? (*s.scale)[1] : 0.0;
  Nchw y(x.n, x.c, oh, ow);
  for (Index n = 0; n < x.n; ++n)
    for (Index c = 0; c < x.c; ++c)
      for (Index r = 0; r < oh; ++r)
        for (Index q = 0; q < ow; ++q) {
          const double sr = ref_source<T>(s, x.h, oh, fh, r), sq = ref_source<T>(s, x.w, ow, fw, q);
          if (s.mode == UpsampleMode::Nearest) {
            y(n, c, r, q) = x(n, c, static_cast<Index>(sr), static_cast<Index>(sq));
            continue;
          }
          const Index r0 = static_cast<Index>(std::floor(sr)), q0 = static_cast<Index>(std::floor(sq));
          const Index r1 = std::min(r0 + 1, x.h - 1), q1 = std::min(q0 + 1, x.w - 1);
          const double fr = sr - static_cast<double>(r0), fq = sq - static_cast<double>(q0);
          y(n, c, r, q) = (1 - fr) * ((1 - fq) * x(n, c, r0, q0) + fq * x(n, c, r0, q1)) +
                          fr * ((1 - fq) * x(n, c, r1, q0) + fq * x(n, c, r1, q1));
        }
  return y;
}

// ---------------------------------------------------------------------------------------------
// The harness: one module, its inputs and its reference, through every path

struct PostCase {
  const char* name;
  Activation act;
  bool residual;
  Activation after;
};
const PostCase kPosts[] = {
    {"none", Activation::Identity, false, Activation::Identity},
    {"relu+residual", Activation::ReLU, true, Activation::Identity},
    {"residual+hardswish", Activation::Identity, true, Activation::HardSwish},
    {"tanh,sigmoid", Activation::Tanh, false, Activation::Sigmoid},
    {"gelu+residual+relu6", Activation::GELU, true, Activation::ReLU6},
};

struct RunConfig {
  int threads;
  bool force_split;
};
const RunConfig kRuns[] = {{1, true}, {2, true}, {3, true}, {3, false}};

/// Checks module m on `inputs` (double NCHW; rounded to T first) against reference(inputs).
template <typename T>
void check_module(const Module<T>& m, const std::vector<Nchw>& raw_inputs,
                  const std::function<Nchw(const std::vector<Nchw>&)>& reference) {
  std::vector<Nchw> inputs;
  for (const Nchw& x : raw_inputs) inputs.push_back(rounded<T>(x));
  const Nchw want = reference(inputs);
  const double tol = tolerance<T>();
  SCOPED_TRACE(std::string(type_name<T>()) + " " + m.description());

  std::vector<NhwcShape> shapes;
  for (const Nchw& x : inputs) shapes.push_back(x.shape());
  const NhwcShape out = m.output_shape(shapes);
  ASSERT_EQ(out, want.shape()) << out.str() << " vs " << want.str();

  if (inputs.size() == 1) {
    EXPECT_CLOSE(from_tensor(m.forward(to_tensor<T>(inputs[0]))), want, tol, "forward(NCHW)");
    NhwcTensor<T> x(inputs[0].shape());
    const std::vector<T> v = to_nhwc<T>(inputs[0]);
    std::copy(v.begin(), v.end(), x.data());
    const NhwcTensor<T> y = m.forward(x);
    EXPECT_CLOSE(from_nhwc(y.data(), y.shape()), want, tol, "forward(NHWC)");
  }

  std::vector<std::vector<T>> data;
  std::vector<NhwcView<const T>> views;
  for (const Nchw& x : inputs) data.push_back(to_nhwc<T>(x));
  for (std::size_t i = 0; i < inputs.size(); ++i) views.emplace_back(data[i].data(), inputs[i].shape());
  const Inputs<T> in(views.data(), static_cast<int>(views.size()));
  const Nchw residual = rounded<T>(random_nchw(want.n, want.c, want.h, want.w, 99));
  const std::vector<T> residual_nhwc = to_nhwc<T>(residual);

  // Residual sources: a separate tensor, and (when the shapes allow) the first input itself.
  struct Residual {
    const char* name;
    const Nchw* values;
    const T* data;
  };
  std::vector<Residual> residuals{{"residual", &residual, residual_nhwc.data()}};
  if (inputs[0].shape() == out) residuals.push_back({"residual=input 0", &inputs[0], data[0].data()});

  for (const PostCase& pc : kPosts)
    for (const Residual& res : pc.residual ? residuals : std::vector<Residual>{{"", nullptr, nullptr}}) {
      const Nchw want_post = ref_post(want, pc.act, res.values, pc.after);
      std::vector<T> first;
      for (const RunConfig& rc : kRuns) {
        Context<T> ctx(rc.threads);
        if (rc.force_split) ctx.min_parallel_madds(0);
        const PostOps<T> post{pc.act, res.data, pc.after};
        std::vector<T> y(static_cast<std::size_t>(out.size()), std::numeric_limits<T>::quiet_NaN());
        const NhwcView<T> yv(y.data(), out);
        m.run(in, yv, ctx, post);  // warm-up (nothing should need it)
        std::fill(y.begin(), y.end(), std::numeric_limits<T>::quiet_NaN());
        long allocations = 0;
        {
          CountAllocations count;
          m.run(in, yv, ctx, post);
          allocations = count.count();
        }
        const std::string what = concat(rc.threads, " thread(s)", rc.force_split ? " split" : "", ", post ", pc.name,
                                        res.name[0] ? std::string(" (") + res.name + ")" : std::string());
        EXPECT_CLOSE(from_nhwc(y.data(), out), want_post, tol, "run, " + what);
        if (DYNCONV_TEST_COUNT_ALLOCATIONS) {
          EXPECT_EQ(allocations, 0) << "run() allocated, " << what;
        }
        if (first.empty()) {
          first = y;
        } else {
          EXPECT_EQ(0, std::memcmp(first.data(), y.data(), y.size() * sizeof(T)))
              << "run() differs from the 1-thread run bitwise, " << what;
        }
      }
    }
}


// ---------------------------------------------------------------------------------------------
// Activations

struct ActivationCase {
  std::string name;
  Activation a;
};

std::vector<ActivationCase> activation_cases() {
  std::vector<ActivationCase> v;
  for (Activation a : {Activation::Identity, Activation::ReLU, Activation::ReLU6, Activation::HardSigmoid,
                       Activation::HardSwish, Activation::Sigmoid, Activation::SiLU, Activation::Tanh, Activation::GELU})
    v.push_back({dynconv::activation_name(a), a});
  return v;
}

template <typename T>
std::unique_ptr<dynconv::ActivationLayer<T>> named_activation(Activation a) {
  switch (a) {
    case Activation::ReLU: return std::make_unique<dynconv::ReLU<T>>();
    case Activation::ReLU6: return std::make_unique<dynconv::ReLU6<T>>();
    case Activation::HardSigmoid: return std::make_unique<dynconv::HardSigmoid<T>>();
    case Activation::HardSwish: return std::make_unique<dynconv::HardSwish<T>>();
    case Activation::Sigmoid: return std::make_unique<dynconv::Sigmoid<T>>();
    case Activation::SiLU: return std::make_unique<dynconv::SiLU<T>>();
    case Activation::Tanh: return std::make_unique<dynconv::Tanh<T>>();
    case Activation::GELU: return std::make_unique<dynconv::GELU<T>>();
    case Activation::Identity: break;
  }
  return std::make_unique<dynconv::ActivationLayer<T>>(a);
}

class ActivationTable : public ::testing::TestWithParam<ActivationCase> {
 protected:
  template <typename T>
  void check() {
    const Activation a = GetParam().a;
    const std::unique_ptr<dynconv::ActivationLayer<T>> named = named_activation<T>(a);
    const dynconv::ActivationLayer<T> plain(a);
    const std::array<const dynconv::ActivationLayer<T>*, 2> both{named.get(), &plain};
    for (const dynconv::ActivationLayer<T>* m : both) {
      EXPECT_EQ(m->description(), dynconv::activation_name(a));
      EXPECT_EQ(m->activation(), a);
      // Values around every kink (HardSwish at -3 and 3, ReLU6 at 0 and 6) and far out.
      Nchw x = random_nchw(2, 5, 7, 9, 1, 3.5);
      x.v[0] = -3, x.v[1] = 3, x.v[2] = 0, x.v[3] = 6, x.v[4] = -40, x.v[5] = 40;
      check_module<T>(*m, {x}, [&](const std::vector<Nchw>& in) { return ref_map(in[0], a); });
    }
    // NaN stays NaN.
    Nchw x(1, 2, 1, 1, std::numeric_limits<double>::quiet_NaN());
    const Nchw y = from_tensor(plain.forward(to_tensor<T>(x)));
    EXPECT_TRUE(std::isnan(y.v[0]) && std::isnan(y.v[1]));
    // A large single sample splits over its pixels.
    check_module<T>(plain, {random_nchw(1, 7, 33, 31, 2)}, [&](const std::vector<Nchw>& in) { return ref_map(in[0], a); });
  }
};
TEST_P(ActivationTable, Float) { check<float>(); }
TEST_P(ActivationTable, Double) { check<double>(); }
INSTANTIATE_TEST_SUITE_P(Table, ActivationTable, ::testing::ValuesIn(activation_cases()),
                         [](const ::testing::TestParamInfo<ActivationCase>& p) { return p.param.name; });

TEST(Activation, NamedDescription) {
  EXPECT_EQ(dynconv::ReLU<float>("features.2").description(), "features.2: ReLU");
  EXPECT_EQ(dynconv::GELU<double>().description(), "GELU");
  EXPECT_FALSE(dynconv::ReLU<float>().fuses_post_ops());
  EXPECT_TRUE(dynconv::ReLU<float>().parameters().empty());
  EXPECT_EQ(dynconv::ReLU<float>().cost({NhwcShape{1, 8, 8, 4}}).params, 0);
  EXPECT_EQ(dynconv::ReLU<float>().cost({NhwcShape{1, 8, 8, 4}}).madds(), 0);
}

// ---------------------------------------------------------------------------------------------
// Add, Sub, Mul

struct BinaryCase {
  std::string name;
  BinaryOp op;
  std::array<Index, 4> a, b;  // NCHW
};

std::vector<BinaryCase> binary_cases() {
  std::vector<BinaryCase> v;
  const std::pair<const char*, BinaryOp> ops[] = {{"Add", BinaryOp::Add}, {"Sub", BinaryOp::Sub}, {"Mul", BinaryOp::Mul}};
  for (const auto& op : ops) {
    const std::string n = op.first;
    v.push_back({n + "_same", op.second, {2, 5, 7, 9}, {2, 5, 7, 9}});
    v.push_back({n + "_broadcast_second", op.second, {2, 5, 7, 9}, {2, 5, 1, 1}});
    v.push_back({n + "_broadcast_first", op.second, {2, 5, 1, 1}, {2, 5, 7, 9}});
    v.push_back({n + "_both_1x1", op.second, {3, 4, 1, 1}, {3, 4, 1, 1}});
    v.push_back({n + "_se_gate_300ch", op.second, {1, 300, 5, 3}, {1, 300, 1, 1}});
    v.push_back({n + "_one_sample_large", op.second, {1, 3, 40, 37}, {1, 3, 40, 37}});
  }
  return v;
}

template <typename T>
std::unique_ptr<Module<T>> make_binary(BinaryOp op, const std::string& name = {}) {
  switch (op) {
    case BinaryOp::Add: return std::make_unique<dynconv::Add<T>>(name);
    case BinaryOp::Sub: return std::make_unique<dynconv::Sub<T>>(name);
    case BinaryOp::Mul: return std::make_unique<dynconv::Mul<T>>(name);
  }
  return nullptr;
}

class BinaryTable : public ::testing::TestWithParam<BinaryCase> {
 protected:
  template <typename T>
  void check() {
    const BinaryCase& c = GetParam();
    const std::unique_ptr<Module<T>> m = make_binary<T>(c.op);
    EXPECT_EQ(m->arity(), 2);
    const Nchw a = random_nchw(c.a[0], c.a[1], c.a[2], c.a[3], 3);
    const Nchw b = random_nchw(c.b[0], c.b[1], c.b[2], c.b[3], 4);
    check_module<T>(*m, {a, b}, [&](const std::vector<Nchw>& in) { return ref_binary(c.op, in[0], in[1]); });
  }
};
TEST_P(BinaryTable, Float) { check<float>(); }
TEST_P(BinaryTable, Double) { check<double>(); }
INSTANTIATE_TEST_SUITE_P(Table, BinaryTable, ::testing::ValuesIn(binary_cases()),
                         [](const ::testing::TestParamInfo<BinaryCase>& p) { return p.param.name; });

TEST(Binary, Descriptions) {
  EXPECT_EQ(dynconv::Add<float>().description(), "Add");
  EXPECT_EQ(dynconv::Sub<float>().description(), "Sub");
  EXPECT_EQ(dynconv::Mul<double>("blocks.3.se.mul").description(), "blocks.3.se.mul: Mul");
}

// ---------------------------------------------------------------------------------------------
// Concat

struct ConcatCase {
  std::string name;
  std::vector<std::array<Index, 4>> shapes;  // NCHW
};

std::vector<ConcatCase> concat_cases() {
  return {
      {"one_input", {{2, 3, 5, 7}}},
      {"two_inputs", {{2, 3, 5, 7}, {2, 4, 5, 7}}},
      {"three_inputs", {{2, 3, 5, 7}, {2, 1, 5, 7}, {2, 5, 5, 7}}},
      {"three_inputs_1x1", {{3, 2, 1, 1}, {3, 7, 1, 1}, {3, 1, 1, 1}}},
      {"two_inputs_one_sample_large", {{1, 3, 30, 41}, {1, 2, 30, 41}}},
  };
}

class ConcatTable : public ::testing::TestWithParam<ConcatCase> {
 protected:
  template <typename T>
  void check() {
    const dynconv::Concat<T> m;
    EXPECT_EQ(m.arity(), Module<T>::kVariadic);
    std::vector<Nchw> in;
    unsigned seed = 10;
    for (const auto& s : GetParam().shapes) in.push_back(random_nchw(s[0], s[1], s[2], s[3], seed++));
    check_module<T>(m, in, ref_concat);
  }
};
TEST_P(ConcatTable, Float) { check<float>(); }
TEST_P(ConcatTable, Double) { check<double>(); }
INSTANTIATE_TEST_SUITE_P(Table, ConcatTable, ::testing::ValuesIn(concat_cases()),
                         [](const ::testing::TestParamInfo<ConcatCase>& p) { return p.param.name; });

// ---------------------------------------------------------------------------------------------
// Identity, Flatten

struct ShapeCase {
  std::string name;
  std::array<Index, 4> shape;  // NCHW
};
std::vector<ShapeCase> shape_cases() {
  return {{"2x3x4x5", {2, 3, 4, 5}},
          {"1x1x1x1", {1, 1, 1, 1}},
          {"3x7x1x1", {3, 7, 1, 1}},
          {"2x1x5x3", {2, 1, 5, 3}},
          {"1x6x21x19_large", {1, 6, 21, 19}}};
}

class FlattenTable : public ::testing::TestWithParam<ShapeCase> {
 protected:
  template <typename T>
  void check() {
    const auto& s = GetParam().shape;
    const Nchw x = random_nchw(s[0], s[1], s[2], s[3], 20);
    check_module<T>(dynconv::Flatten<T>(), {x}, [](const std::vector<Nchw>& in) { return ref_flatten(in[0]); });
    check_module<T>(dynconv::Identity<T>(), {x}, [](const std::vector<Nchw>& in) { return in[0]; });
  }
};
TEST_P(FlattenTable, Float) { check<float>(); }
TEST_P(FlattenTable, Double) { check<double>(); }
INSTANTIATE_TEST_SUITE_P(Table, FlattenTable, ::testing::ValuesIn(shape_cases()),
                         [](const ::testing::TestParamInfo<ShapeCase>& p) { return "s" + p.param.name; });

TEST(Flatten, PyTorchOrder) {
  // x[0, c, h, w] = 100c + 10h + w over C=2, H=2, W=3: flatten lists c, then h, then w.
  Tensor4<double> x(1, 2, 2, 3);
  for (Index c = 0; c < 2; ++c)
    for (Index h = 0; h < 2; ++h)
      for (Index w = 0; w < 3; ++w) x(0, c, h, w) = static_cast<double>(100 * c + 10 * h + w);
  const Tensor4<double> y = dynconv::Flatten<double>().forward(x);
  ASSERT_EQ(y.dimension(1), 12);
  const double want[] = {0, 1, 2, 10, 11, 12, 100, 101, 102, 110, 111, 112};
  for (Index k = 0; k < 12; ++k) EXPECT_EQ(y(0, k, 0, 0), want[k]) << k;
  EXPECT_EQ(dynconv::Flatten<float>().description(), "Flatten");
  EXPECT_EQ(dynconv::Identity<float>("skip").description(), "skip: Identity");
}

// ---------------------------------------------------------------------------------------------
// Softmax, LogSoftmax

struct SoftmaxCase {
  std::string name;
  std::array<Index, 4> shape;
  double spread;
};
std::vector<SoftmaxCase> softmax_cases() {
  return {{"2x6x5x7", {2, 6, 5, 7}, 3.0},
          {"one_channel", {2, 1, 4, 3}, 3.0},
          {"large_logits", {2, 6, 5, 7}, 300.0},  // up to ~1000: exp overflows without the max
          {"classifier_1000", {2, 1000, 1, 1}, 5.0},
          {"one_sample_large", {1, 5, 30, 30}, 3.0}};
}

class SoftmaxTable : public ::testing::TestWithParam<SoftmaxCase> {
 protected:
  template <typename T>
  void check() {
    const SoftmaxCase& c = GetParam();
    const Nchw x = random_nchw(c.shape[0], c.shape[1], c.shape[2], c.shape[3], 30, c.spread);
    const dynconv::Softmax<T> sm;
    const dynconv::LogSoftmax<T> lsm;
    check_module<T>(sm, {x}, [](const std::vector<Nchw>& in) { return ref_softmax(in[0], false); });
    check_module<T>(lsm, {x}, [](const std::vector<Nchw>& in) { return ref_softmax(in[0], true); });
    // Every pixel's softmax sums to 1; the exponentials of its log-softmax too (logsumexp 0).
    const Nchw p = from_tensor(sm.forward(to_tensor<T>(x))), lp = from_tensor(lsm.forward(to_tensor<T>(x)));
    for (Index n = 0; n < x.n; ++n)
      for (Index i = 0; i < x.h; ++i)
        for (Index j = 0; j < x.w; ++j) {
          double s = 0, ls = 0;
          for (Index ch = 0; ch < x.c; ++ch) {
            ASSERT_TRUE(std::isfinite(p(n, ch, i, j)) && std::isfinite(lp(n, ch, i, j)));
            s += p(n, ch, i, j);
            ls += std::exp(lp(n, ch, i, j));
          }
          EXPECT_NEAR(s, 1.0, 10 * tolerance<T>());
          EXPECT_NEAR(ls, 1.0, 10 * tolerance<T>());
        }
  }
};
TEST_P(SoftmaxTable, Float) { check<float>(); }
TEST_P(SoftmaxTable, Double) { check<double>(); }
INSTANTIATE_TEST_SUITE_P(Table, SoftmaxTable, ::testing::ValuesIn(softmax_cases()),
                         [](const ::testing::TestParamInfo<SoftmaxCase>& p) { return p.param.name; });

TEST(Softmax, DescriptionsAndNaN) {
  EXPECT_EQ(dynconv::Softmax<float>().description(), "Softmax(dim=1)");
  EXPECT_EQ(dynconv::LogSoftmax<double>("head").description(), "head: LogSoftmax(dim=1)");
  Tensor4<float> x(1, 3, 1, 2);
  x.setValues({{{{1.f, 2.f}}, {{std::nanf(""), 0.f}}, {{3.f, 4.f}}}});
  const Tensor4<float> y = dynconv::Softmax<float>().forward(x);
  for (Index c = 0; c < 3; ++c) EXPECT_TRUE(std::isnan(y(0, c, 0, 0))) << "a NaN makes its pixel NaN";
  EXPECT_FALSE(std::isnan(y(0, 0, 0, 1)));
}

// ---------------------------------------------------------------------------------------------
// MaxPool2d, AvgPool2d

struct PoolCase {
  std::string name;
  PoolSpec spec;
  std::array<Index, 4> shape;  // NCHW
};

PoolSpec pool_spec(bool max, Pair k, Pair s, Pair p = {0, 0}, Pair d = {1, 1}, bool ceil = false, bool cip = true) {
  PoolSpec ps;
  ps.max = max;
  ps.kh = k[0], ps.kw = k[1], ps.sh = s[0], ps.sw = s[1], ps.ph = p[0], ps.pw = p[1], ps.dh = d[0], ps.dw = d[1];
  ps.ceil_mode = ceil, ps.count_include_pad = cip;
  return ps;
}

std::vector<PoolCase> pool_cases() {
  std::vector<PoolCase> v;
  for (bool max : {true, false}) {
    const std::string k = max ? "max_" : "avg_";
    const auto add = [&](const std::string& name, PoolSpec s, std::array<Index, 4> shape) {
      v.push_back({k + name, s, shape});
    };
    add("k2_8x8", pool_spec(max, {2, 2}, {2, 2}), {2, 3, 8, 8});
    add("k3_s2_p1_7x9", pool_spec(max, {3, 3}, {2, 2}, {1, 1}), {2, 3, 7, 9});
    add("k3_s2_p1_ceil_7x9", pool_spec(max, {3, 3}, {2, 2}, {1, 1}, {1, 1}, true), {2, 3, 7, 9});
    add("k3_s2_p1_ceil_8x8", pool_spec(max, {3, 3}, {2, 2}, {1, 1}, {1, 1}, true), {2, 3, 8, 8});
    add("k3_s2_ceil_8x8", pool_spec(max, {3, 3}, {2, 2}, {0, 0}, {1, 1}, true), {2, 3, 8, 8});
    add("k2_ceil_7x9", pool_spec(max, {2, 2}, {2, 2}, {0, 0}, {1, 1}, true), {2, 3, 7, 9});
    // The last ceil-mode window would start in the right padding: dropped.
    add("k3_s3_p1_ceil_drop_5x5", pool_spec(max, {3, 3}, {3, 3}, {1, 1}, {1, 1}, true), {2, 3, 5, 5});
    add("k2_s3_p1_ceil_drop_4x7", pool_spec(max, {2, 2}, {3, 3}, {1, 1}, {1, 1}, true), {2, 3, 4, 7});
    add("k3x2_s21_p10_7x9", pool_spec(max, {3, 2}, {2, 1}, {1, 0}), {2, 3, 7, 9});
    add("k3x2_s12_p11_ceil_7x9", pool_spec(max, {3, 2}, {1, 2}, {1, 1}, {1, 1}, true), {2, 3, 7, 9});
    add("k7x9_1x1_output", pool_spec(max, {7, 9}, {7, 9}), {2, 3, 7, 9});
    add("k2_s3_8x8", pool_spec(max, {2, 2}, {3, 3}), {2, 3, 8, 8});
    add("k1_1x1", pool_spec(max, {1, 1}, {1, 1}), {2, 3, 1, 1});
    add("k4_s3_p2_ceil_9x10", pool_spec(max, {4, 4}, {3, 3}, {2, 2}, {1, 1}, true), {2, 3, 9, 10});
    add("c300_k3_s2_p1", pool_spec(max, {3, 3}, {2, 2}, {1, 1}), {1, 300, 5, 5});
    add("one_sample_large", pool_spec(max, {3, 3}, {1, 1}, {1, 1}), {1, 4, 29, 31});
    if (max) {
      add("k3_d2_p1_9x11", pool_spec(max, {3, 3}, {1, 1}, {1, 1}, {2, 2}), {2, 3, 9, 11});
      add("k3x2_s21_p10_d12_7x9", pool_spec(max, {3, 2}, {2, 1}, {1, 0}, {1, 2}), {2, 3, 7, 9});
      add("k3_d2_s2_p1_ceil_8x9", pool_spec(max, {3, 3}, {2, 2}, {1, 1}, {2, 2}, true), {2, 3, 8, 9});
      // Taps at -1 and 1 of a 1-pixel axis: padding only, so -inf.
      add("padding_only_window", pool_spec(max, {2, 2}, {1, 1}, {1, 1}, {2, 2}), {2, 3, 1, 1});
    } else {
      add("k3_s2_p1_nopad_7x9", pool_spec(max, {3, 3}, {2, 2}, {1, 1}, {1, 1}, false, false), {2, 3, 7, 9});
      add("k3_s2_p1_ceil_nopad_8x8", pool_spec(max, {3, 3}, {2, 2}, {1, 1}, {1, 1}, true, false), {2, 3, 8, 8});
      add("k4_s3_p2_ceil_nopad_9x10", pool_spec(max, {4, 4}, {3, 3}, {2, 2}, {1, 1}, true, false), {2, 3, 9, 10});
      add("c300_nopad", pool_spec(max, {3, 3}, {2, 2}, {1, 1}, {1, 1}, false, false), {1, 300, 5, 5});
    }
  }
  return v;
}


Pool2dOptions options_of(const PoolSpec& s) {
  return Pool2dOptions(Pair{s.kh, s.kw})
      .stride(s.sh, s.sw)
      .padding(s.ph, s.pw)
      .dilation(s.dh, s.dw)
      .ceil_mode(s.ceil_mode)
      .count_include_pad(s.count_include_pad);
}

template <typename T>
std::unique_ptr<Module<T>> make_pool(const PoolSpec& s) {
  if (s.max) return std::make_unique<dynconv::MaxPool2d<T>>(options_of(s));
  return std::make_unique<dynconv::AvgPool2d<T>>(options_of(s));
}

class PoolTable : public ::testing::TestWithParam<PoolCase> {
 protected:
  template <typename T>
  void check() {
    const PoolCase& c = GetParam();
    const std::unique_ptr<Module<T>> m = make_pool<T>(c.spec);
    const Nchw x = random_nchw(c.shape[0], c.shape[1], c.shape[2], c.shape[3], 40);
    check_module<T>(*m, {x}, [&](const std::vector<Nchw>& in) { return ref_pool(in[0], c.spec); });
  }
};
TEST_P(PoolTable, Float) { check<float>(); }
TEST_P(PoolTable, Double) { check<double>(); }
INSTANTIATE_TEST_SUITE_P(Table, PoolTable, ::testing::ValuesIn(pool_cases()),
                         [](const ::testing::TestParamInfo<PoolCase>& p) { return p.param.name; });

TEST(Pool, Descriptions) {
  EXPECT_EQ(dynconv::MaxPool2d<float>(Pool2dOptions(3).stride(2).padding(1)).description(),
            "MaxPool2d(3x3, stride 2, padding 1)");
  EXPECT_EQ(dynconv::MaxPool2d<float>(Pool2dOptions(3).stride(2).padding(1).name("features.3")).description(),
            "features.3: MaxPool2d(3x3, stride 2, padding 1)");
  EXPECT_EQ(dynconv::MaxPool2d<double>(Pool2dOptions(Pair{3, 2}).stride(2, 1).padding(1, 0).dilation(2, 1).ceil_mode(true))
                .description(),
            "MaxPool2d(3x2, stride (2, 1), padding (1, 0), dilation (2, 1), ceil_mode)");
  EXPECT_EQ(dynconv::AvgPool2d<float>(Pool2dOptions(2)).description(), "AvgPool2d(2x2, stride 2)");
  EXPECT_EQ(dynconv::AvgPool2d<float>(Pool2dOptions(3).stride(1).padding(1).count_include_pad(false)).description(),
            "AvgPool2d(3x3, stride 1, padding 1, count_include_pad=false)");
  // The stride defaults to the kernel, as in PyTorch.
  EXPECT_EQ(Pool2dOptions(Pair{3, 2}).stride(), (Pair{3, 2}));
}

TEST(Pool, MaxPropagatesNaN) {
  Tensor4<double> x(1, 1, 2, 4);
  x.setValues({{{{1, std::nan(""), 5, 2}, {3, 4, 6, std::nan("")}}}});
  const Tensor4<double> y = dynconv::MaxPool2d<double>(Pool2dOptions(2)).forward(x);
  EXPECT_TRUE(std::isnan(y(0, 0, 0, 0)));
  EXPECT_TRUE(std::isnan(y(0, 0, 0, 1)));
  Tensor4<float> z(1, 1, 1, 3);
  z.setValues({{{{std::nanf(""), 1.f, 2.f}}}});
  EXPECT_TRUE(std::isnan(dynconv::MaxPool2d<float>(Pool2dOptions(Pair{1, 3})).forward(z)(0, 0, 0, 0)))
      << "a NaN first in the window";
}

// ---------------------------------------------------------------------------------------------
// AdaptiveAvgPool2d, global_avg_pool

struct AdaptiveCase {
  std::string name;
  Index oh, ow;
  std::array<Index, 4> shape;
};
std::vector<AdaptiveCase> adaptive_cases() {
  return {{"7_to_3", 3, 3, {2, 3, 7, 7}},       {"5_to_4", 4, 4, {2, 3, 5, 5}},
          {"7x9_to_3x4", 3, 4, {2, 3, 7, 9}},   {"to_1", 1, 1, {2, 3, 7, 9}},
          {"identity_7x9", 7, 9, {2, 3, 7, 9}}, {"3x3_to_5x7_larger", 5, 7, {2, 3, 3, 3}},
          {"1x1_to_2x2", 2, 2, {2, 3, 1, 1}},   {"c300_5_to_2", 2, 2, {1, 300, 5, 5}},
          {"one_sample_large", 5, 6, {1, 3, 33, 35}}};
}

class AdaptiveTable : public ::testing::TestWithParam<AdaptiveCase> {
 protected:
  template <typename T>
  void check() {
    const AdaptiveCase& c = GetParam();
    const dynconv::AdaptiveAvgPool2d<T> m(c.oh, c.ow);
    const Nchw x = random_nchw(c.shape[0], c.shape[1], c.shape[2], c.shape[3], 50);
    check_module<T>(m, {x}, [&](const std::vector<Nchw>& in) { return ref_adaptive(in[0], c.oh, c.ow); });
  }
};
TEST_P(AdaptiveTable, Float) { check<float>(); }
TEST_P(AdaptiveTable, Double) { check<double>(); }
INSTANTIATE_TEST_SUITE_P(Table, AdaptiveTable, ::testing::ValuesIn(adaptive_cases()),
                         [](const ::testing::TestParamInfo<AdaptiveCase>& p) { return p.param.name; });

TEST(Adaptive, Descriptions) {
  EXPECT_EQ(dynconv::AdaptiveAvgPool2d<float>(3).description(), "AdaptiveAvgPool2d(3x3)");
  EXPECT_EQ(dynconv::AdaptiveAvgPool2d<float>(3, 4, "avgpool").description(), "avgpool: AdaptiveAvgPool2d(3x4)");
  EXPECT_EQ(dynconv::AdaptiveAvgPool2d<double>(1).out_h(), 1);
}

TEST(GlobalAvgPool, NhwcMatchesNchw) {
  const Nchw x = random_nchw(2, 300, 5, 7, 60);
  const Tensor4<double> t = to_tensor<double>(x);
  NhwcTensor<double> z(x.shape());
  const std::vector<double> v = to_nhwc<double>(x);
  std::copy(v.begin(), v.end(), z.data());
  const Tensor2<double> a = dynconv::global_avg_pool(t), b = dynconv::global_avg_pool(z);
  ASSERT_EQ(b.dimension(0), 2);
  ASSERT_EQ(b.dimension(1), 300);
  for (Index n = 0; n < 2; ++n)
    for (Index c = 0; c < 300; ++c) {
      double sum = 0;
      for (Index i = 0; i < 5; ++i)
        for (Index j = 0; j < 7; ++j) sum += x(n, c, i, j);
      EXPECT_NEAR(a(n, c), sum / 35, 1e-14);
      EXPECT_NEAR(b(n, c), sum / 35, 1e-14);
    }
  try {
    dynconv::global_avg_pool(NhwcTensor<float>(1, 0, 3, 2));
    ADD_FAILURE() << "no ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_THAT(e.what(), HasSubstr("global_avg_pool: input [1, 2, 0, 3] (NCHW) has no pixels"));
  }
}

// ---------------------------------------------------------------------------------------------
// Upsample

struct UpsampleCase {
  std::string name;
  UpsampleSpec spec;
  std::array<Index, 4> shape;
};

UpsampleSpec up(UpsampleMode mode, std::optional<std::array<Index, 2>> size, std::optional<std::array<double, 2>> scale,
                bool ac = false) {
  UpsampleSpec s;
  s.mode = mode, s.size = size, s.scale = scale, s.align_corners = ac;
  return s;
}

std::vector<UpsampleCase> upsample_cases() {
  using A = std::array<Index, 2>;
  using S = std::array<double, 2>;
  std::vector<UpsampleCase> v;
  const UpsampleMode N = UpsampleMode::Nearest, B = UpsampleMode::Bilinear;
  struct Variant {
    std::string name;
    UpsampleMode mode;
    bool ac;
  };
  for (const Variant& m : {Variant{"nearest", N, false}, Variant{"bilinear", B, false}, Variant{"bilinear_ac", B, true}}) {
    const auto add = [&](const std::string& name, std::optional<A> size, std::optional<S> scale,
                         std::array<Index, 4> shape) { v.push_back({m.name + "_" + name, up(m.mode, size, scale, m.ac), shape}); };
    add("scale2", std::nullopt, S{2, 2}, {2, 3, 5, 7});
    add("scale0_5", std::nullopt, S{0.5, 0.5}, {2, 3, 7, 9});
    add("scale1_7", std::nullopt, S{1.7, 1.7}, {2, 3, 7, 9});
    add("scale2x1_7", std::nullopt, S{2, 1.7}, {2, 3, 13, 13});
    add("scale1_05_same_size", std::nullopt, S{1.05, 1.05}, {2, 3, 7, 7});
    add("size14x13", A{14, 13}, std::nullopt, {2, 3, 5, 7});
    add("size3x4_down", A{3, 4}, std::nullopt, {2, 3, 7, 9});
    add("size1", A{1, 1}, std::nullopt, {2, 3, 7, 9});
    add("from_1x1", A{3, 4}, std::nullopt, {2, 3, 1, 1});
    add("c300_scale2", std::nullopt, S{2, 2}, {1, 300, 3, 2});
    add("one_sample_large", std::nullopt, S{3, 3}, {1, 3, 12, 13});
  }
  // d * 6/74 lands near an integer: float and double round differently (see upsample.hpp).
  v.push_back({"nearest_size6x2_to_74x82", up(N, A{74, 82}, std::nullopt), {1, 2, 6, 2}});
  // d * 18/66 (26/46) lands just below an integer in double, on it once rounded to float:
  // PyTorch floors the float value, also for double.
  v.push_back({"nearest_size18x26_to_66x46", up(N, A{66, 46}, std::nullopt), {1, 2, 18, 26}});
  return v;
}

UpsampleOptions options_of(const UpsampleSpec& s) {
  UpsampleOptions o;
  o.mode(s.mode).align_corners(s.align_corners);
  if (s.size) o.size((*s.size)[0], (*s.size)[1]);
  if (s.scale) o.scale_factor((*s.scale)[0], (*s.scale)[1]);
  return o;
}

class UpsampleTable : public ::testing::TestWithParam<UpsampleCase> {
 protected:
  template <typename T>
  void check() {
    const UpsampleCase& c = GetParam();
    const dynconv::Upsample<T> m(options_of(c.spec));
    const Nchw x = random_nchw(c.shape[0], c.shape[1], c.shape[2], c.shape[3], 70);
    check_module<T>(m, {x}, [&](const std::vector<Nchw>& in) { return ref_upsample<T>(in[0], c.spec); });
  }
};
TEST_P(UpsampleTable, Float) { check<float>(); }
TEST_P(UpsampleTable, Double) { check<double>(); }
INSTANTIATE_TEST_SUITE_P(Table, UpsampleTable, ::testing::ValuesIn(upsample_cases()),
                         [](const ::testing::TestParamInfo<UpsampleCase>& p) { return p.param.name; });

TEST(Upsample, Descriptions) {
  EXPECT_EQ(dynconv::Upsample<float>(UpsampleOptions().scale_factor(2)).description(),
            "Upsample(scale_factor 2x2, nearest)");
  EXPECT_EQ(dynconv::Upsample<float>(UpsampleOptions().size(14, 13).mode(UpsampleMode::Bilinear).align_corners(true))
                .description(),
            "Upsample(size 14x13, bilinear, align_corners)");
  EXPECT_EQ(dynconv::Upsample<double>(UpsampleOptions().scale_factor(1.7, 2).name("decoder.up1")).description(),
            "decoder.up1: Upsample(scale_factor 1.7x2, nearest)");
}

TEST(Upsample, NearestScale2RepeatsPixels) {
  Tensor4<double> x(1, 1, 2, 2);
  x.setValues({{{{1, 2}, {3, 4}}}});
  const Tensor4<double> y = dynconv::Upsample<double>(UpsampleOptions().scale_factor(2)).forward(x);
  const double want[4][4] = {{1, 1, 2, 2}, {1, 1, 2, 2}, {3, 3, 4, 4}, {3, 3, 4, 4}};
  for (Index i = 0; i < 4; ++i)
    for (Index j = 0; j < 4; ++j) EXPECT_EQ(y(0, 0, i, j), want[i][j]);
}

// ---------------------------------------------------------------------------------------------
// Errors: the type, and a message naming the module, the shapes and the rule

enum class Kind { Options, Shape };

struct ErrorCase {
  std::string name;
  std::function<void()> call;
  Kind kind;
  std::vector<std::string> substrings;
};

template <typename M>
std::function<void()> shape_of(M m, std::vector<NhwcShape> in) {
  return [m = std::move(m), in = std::move(in)] { (void)m.output_shape(in); };
}
template <typename F>
std::function<void()> construct(F f) {
  return [f] { (void)f(); };
}

std::vector<ErrorCase> error_cases() {
  using dynconv::Add;
  using dynconv::AdaptiveAvgPool2d;
  using dynconv::AvgPool2d;
  using dynconv::Concat;
  using dynconv::MaxPool2d;
  using dynconv::Mul;
  using dynconv::Softmax;
  using dynconv::Sub;
  using dynconv::Upsample;
  const NhwcShape x{2, 4, 4, 3};  // [2, 3, 4, 4] (NCHW)
  return {
      // --- Add, Sub, Mul
      {"add_channels", shape_of(Add<float>(), {x, {2, 4, 4, 5}}), Kind::Shape,
       {"Add: input shapes [2, 3, 4, 4] (NCHW) and [2, 5, 4, 4] (NCHW) do not match", "[N, C, 1, 1]"}},
      {"add_spatial", shape_of(Add<double>(), {x, {2, 3, 4, 3}}), Kind::Shape,
       {"Add:", "[2, 3, 4, 4] (NCHW)", "[2, 3, 3, 4] (NCHW)"}},
      {"sub_broadcast_batch", shape_of(Sub<float>(), {x, {1, 1, 1, 3}}), Kind::Shape,
       {"Sub:", "[2, 3, 4, 4] (NCHW)", "[1, 3, 1, 1] (NCHW)", "the other's N and C"}},
      {"mul_broadcast_channels", shape_of(Mul<float>(), {{2, 1, 1, 4}, x}), Kind::Shape,
       {"Mul:", "[2, 4, 1, 1] (NCHW)", "[2, 3, 4, 4] (NCHW)"}},
      {"mul_not_1x1", shape_of(Mul<float>(), {x, {2, 1, 4, 3}}), Kind::Shape,
       {"Mul:", "[2, 3, 4, 4] (NCHW)", "[2, 3, 1, 4] (NCHW)"}},
      {"mul_named", shape_of(Mul<float>("blocks.3.se.mul"), {x, {2, 1, 1, 5}}), Kind::Shape,
       {"blocks.3.se.mul: Mul: input shapes [2, 3, 4, 4] (NCHW) and [2, 5, 1, 1] (NCHW)"}},
      {"add_one_input", shape_of(Add<float>(), {x}), Kind::Options, {"Add: takes 2 inputs, got 1"}},
      // --- Concat
      {"concat_batch", shape_of(Concat<float>(), {x, x, {3, 4, 4, 2}}), Kind::Shape,
       {"Concat: input 2 [3, 2, 4, 4] (NCHW) does not match input 0 [2, 3, 4, 4] (NCHW)", "N, H and W"}},
      {"concat_height", shape_of(Concat<double>("cat"), {x, {2, 5, 4, 3}}), Kind::Shape,
       {"cat: Concat: input 1 [2, 3, 5, 4] (NCHW) does not match input 0 [2, 3, 4, 4] (NCHW)"}},
      {"concat_no_inputs", shape_of(Concat<float>(), {}), Kind::Options, {"Concat: takes at least 1 input, got 0"}},
      // --- Softmax
      {"softmax_no_channels", shape_of(Softmax<float>(), {{1, 2, 2, 0}}), Kind::Shape,
       {"Softmax(dim=1): input [1, 0, 2, 2] (NCHW) has no channels"}},
      // --- pooling options
      {"pool_padding_over_half", construct([] { return MaxPool2d<float>(Pool2dOptions(3).padding(2)); }),
       Kind::Options,
       {"MaxPool2d(3x3, stride 3, padding 2): padding=2 with kernel 3x3: padding must be at most half the kernel size (3 / 2 = 1)"}},
      {"pool_padding_over_half_width",
       construct([] { return AvgPool2d<float>(Pool2dOptions(Pair{4, 2}).padding(2, 2)); }), Kind::Options,
       {"AvgPool2d(4x2, stride (4, 2), padding 2)", "(2 / 2 = 1) along the width"}},
      {"pool_stride_zero", construct([] { return MaxPool2d<float>(Pool2dOptions(3).stride(0)); }), Kind::Options,
       {"MaxPool2d(3x3, stride 0): stride[0]=0 must be >= 1"}},
      {"pool_kernel_zero", construct([] { return AvgPool2d<double>(Pool2dOptions(Pair{2, 0})); }), Kind::Options,
       {"AvgPool2d(2x0, stride (2, 0)): kernel_size[1]=0 must be >= 1"}},
      {"pool_negative_padding", construct([] { return MaxPool2d<float>(Pool2dOptions(3).padding(-1)); }),
       Kind::Options, {"padding[0]=-1 must be >= 0"}},
      {"pool_dilation_zero", construct([] { return MaxPool2d<float>(Pool2dOptions(3).dilation(1, 0)); }),
       Kind::Options, {"dilation[1]=0 must be >= 1"}},
      {"avg_pool_dilation", construct([] { return AvgPool2d<float>(Pool2dOptions(3).dilation(2)); }), Kind::Options,
       {"AvgPool2d(3x3, stride 3, dilation 2): dilation=2: dilation applies to max pooling only"}},
      {"max_pool_count_include_pad",
       construct([] { return MaxPool2d<float>(Pool2dOptions(3).count_include_pad(false)); }), Kind::Options,
       {"MaxPool2d(3x3, stride 3): count_include_pad=false: count_include_pad applies to average pooling only"}},
      {"pool_named", construct([] { return MaxPool2d<float>(Pool2dOptions(3).padding(2).name("features.0")); }),
       Kind::Options, {"features.0: MaxPool2d(3x3, stride 3, padding 2): padding=2"}},
      // --- pooling shapes
      {"pool_too_small", shape_of(MaxPool2d<float>(Pool2dOptions(3)), {{1, 2, 2, 2}}), Kind::Shape,
       {"MaxPool2d(3x3, stride 3): input [1, 2, 2, 2] (NCHW) is 2x2, too small for the window 3x3 after padding 0",
        "the output would be 0x0 (needs >= 1x1)"}},
      {"pool_too_small_dilated", shape_of(MaxPool2d<float>(Pool2dOptions(3).stride(1).dilation(2)), {{1, 4, 9, 1}}),
       Kind::Shape, {"input [1, 1, 4, 9] (NCHW) is 4x9, too small for the window 5x5 (kernel 3x3, dilation 2)",
                     "would be 0x5"}},
      {"pool_too_small_ceil", shape_of(AvgPool2d<float>(Pool2dOptions(3).stride(2).ceil_mode(true)), {{1, 1, 2, 1}}),
       Kind::Shape, {"AvgPool2d(3x3, stride 2, ceil_mode): input [1, 1, 1, 2] (NCHW) is 1x2"}},
      {"pool_no_pixels", shape_of(AvgPool2d<float>(Pool2dOptions(1)), {{1, 0, 3, 2}}), Kind::Shape,
       {"AvgPool2d(1x1, stride 1): input [1, 2, 0, 3] (NCHW) has no pixels"}},
      {"pool_two_inputs", shape_of(MaxPool2d<float>(Pool2dOptions(2)), {x, x}), Kind::Options,
       {"MaxPool2d(2x2, stride 2): takes 1 input, got 2"}},
      // --- adaptive
      {"adaptive_zero", construct([] { return AdaptiveAvgPool2d<float>(0, 3); }), Kind::Options,
       {"AdaptiveAvgPool2d(0x3): output height=0 must be >= 1"}},
      {"adaptive_no_pixels", shape_of(AdaptiveAvgPool2d<float>(2), {{1, 3, 0, 2}}), Kind::Shape,
       {"AdaptiveAvgPool2d(2x2): input [1, 2, 3, 0] (NCHW) has no pixels"}},
      // --- upsample options
      {"upsample_no_size", construct([] { return Upsample<float>(UpsampleOptions()); }), Kind::Options,
       {"Upsample(no size, nearest): set one of size and scale_factor"}},
      {"upsample_both", construct([] { return Upsample<float>(UpsampleOptions().size(4).scale_factor(2)); }),
       Kind::Options, {"Upsample(size 4x4, scale_factor 2x2, nearest): set only one of size and scale_factor"}},
      {"upsample_size_zero", construct([] { return Upsample<float>(UpsampleOptions().size(0, 3)); }), Kind::Options,
       {"Upsample(size 0x3, nearest): size[0]=0 must be >= 1"}},
      {"upsample_scale_zero", construct([] { return Upsample<float>(UpsampleOptions().scale_factor(2, 0)); }),
       Kind::Options, {"Upsample(scale_factor 2x0, nearest): scale_factor[1]=0 must be finite and > 0"}},
      {"upsample_scale_nan",
       construct([] { return Upsample<double>(UpsampleOptions().scale_factor(std::nan(""), 2)); }), Kind::Options,
       {"scale_factor[0]=nan must be finite and > 0"}},
      {"upsample_scale_inf",
       construct([] { return Upsample<double>(UpsampleOptions().scale_factor(HUGE_VAL)); }), Kind::Options,
       {"scale_factor[0]=inf must be finite and > 0"}},
      {"upsample_align_corners_nearest",
       construct([] { return Upsample<float>(UpsampleOptions().scale_factor(2).align_corners(true)); }),
       Kind::Options, {"Upsample(scale_factor 2x2, nearest, align_corners): align_corners applies to bilinear mode only"}},
      // --- upsample shapes
      {"upsample_scaled_to_nothing", shape_of(Upsample<float>(UpsampleOptions().scale_factor(0.1, 1).name("up")), {{1, 5, 5, 2}}),
       Kind::Shape, {"up: Upsample(scale_factor 0.1x1, nearest): input [1, 2, 5, 5] (NCHW) is 5x5, scaled by 0.1x1",
                     "= 0x5 pixels: the output needs >= 1x1"}},
      {"upsample_no_pixels", shape_of(Upsample<float>(UpsampleOptions().size(3)), {{1, 0, 5, 2}}), Kind::Shape,
       {"Upsample(size 3x3, nearest): input [1, 2, 0, 5] (NCHW) has no pixels"}},
  };
}

class ErrorTable : public ::testing::TestWithParam<ErrorCase> {};
TEST_P(ErrorTable, Throws) {
  const ErrorCase& c = GetParam();
  try {
    c.call();
    ADD_FAILURE() << "no exception";
  } catch (const ShapeError& e) {
    EXPECT_EQ(c.kind, Kind::Shape) << "ShapeError: " << e.what();
    for (const std::string& s : c.substrings) EXPECT_THAT(e.what(), HasSubstr(s));
  } catch (const OptionsError& e) {
    EXPECT_EQ(c.kind, Kind::Options) << "OptionsError: " << e.what();
    for (const std::string& s : c.substrings) EXPECT_THAT(e.what(), HasSubstr(s));
  } catch (const std::exception& e) {
    ADD_FAILURE() << "unexpected exception: " << e.what();
  }
}
INSTANTIATE_TEST_SUITE_P(Table, ErrorTable, ::testing::ValuesIn(error_cases()),
                         [](const ::testing::TestParamInfo<ErrorCase>& p) { return p.param.name; });

// ---------------------------------------------------------------------------------------------
// PyTorch parity (tools/make_module_parity_data.py)

// The data are read when a test first runs (not when tests are registered: ctest lists them at
// build time, before the data exist), and tests are parameterised by module kind, each running
// every case of its kind in the manifest.

constexpr std::size_t kMinParityCases = 50;

using ParityCase = parity::Case;
using ParityData = parity::Data;

const ParityData& parity_data() {
  static const ParityData data = parity::load("DYNCONV_MODULE_PARITY_DIR");
  return data;
}

#define DYNCONV_SKIP_WITHOUT_MODULE_PARITY_DATA()                                                      \
  do {                                                                                                 \
    if (!parity_data().problem.empty())                                                                \
      GTEST_SKIP() << "PyTorch module parity data was not generated (" << parity_data().problem        \
                   << "). Install PyTorch (Debian: apt install python3-torch) and run /usr/bin/python3 " \
                      "tools/make_module_parity_data.py --out DIR with DYNCONV_MODULE_PARITY_DIR=DIR";   \
  } while (0)

std::string meta(const std::map<std::string, std::string>& m, const std::string& key) {
  const auto it = m.find(key);
  if (it == m.end()) throw dynconv::FormatError("parity metadata: no '" + key + "'");
  return it->second;
}
Index meta_index(const std::map<std::string, std::string>& m, const std::string& key) {
  return static_cast<Index>(std::stoll(meta(m, key)));
}

Activation activation_named(const std::string& name) {
  for (const ActivationCase& c : activation_cases())
    if (c.name == name) return c.a;
  throw dynconv::FormatError("parity metadata: unknown activation '" + name + "'");
}

template <typename T>
std::unique_ptr<Module<T>> parity_module(const std::map<std::string, std::string>& m) {
  const std::string kind = meta(m, "kind");
  if (kind == "max_pool" || kind == "avg_pool") {
    Pool2dOptions o(Pair{meta_index(m, "kernel_h"), meta_index(m, "kernel_w")});
    o.stride(meta_index(m, "stride_h"), meta_index(m, "stride_w"))
        .padding(meta_index(m, "pad_h"), meta_index(m, "pad_w"))
        .ceil_mode(meta(m, "ceil_mode") == "1");
    if (kind == "max_pool")
      return std::make_unique<dynconv::MaxPool2d<T>>(o.dilation(meta_index(m, "dilation_h"), meta_index(m, "dilation_w")));
    return std::make_unique<dynconv::AvgPool2d<T>>(o.count_include_pad(meta(m, "count_include_pad") == "1"));
  }
  if (kind == "adaptive_avg_pool")
    return std::make_unique<dynconv::AdaptiveAvgPool2d<T>>(meta_index(m, "out_h"), meta_index(m, "out_w"));
  if (kind == "upsample") {
    UpsampleOptions o;
    o.mode(meta(m, "mode") == "bilinear" ? UpsampleMode::Bilinear : UpsampleMode::Nearest)
        .align_corners(meta(m, "align_corners") == "1");
    if (m.count("size_h"))
      o.size(meta_index(m, "size_h"), meta_index(m, "size_w"));
    else
      o.scale_factor(std::strtod(meta(m, "scale_h").c_str(), nullptr), std::strtod(meta(m, "scale_w").c_str(), nullptr));
    return std::make_unique<dynconv::Upsample<T>>(o);
  }
  if (kind == "softmax") return std::make_unique<dynconv::Softmax<T>>();
  if (kind == "log_softmax") return std::make_unique<dynconv::LogSoftmax<T>>();
  if (kind == "activation") return std::make_unique<dynconv::ActivationLayer<T>>(activation_named(meta(m, "activation")));
  throw dynconv::FormatError("parity metadata: unknown kind '" + kind + "'");
}

/// Case c through module m: forward (NCHW) against torch's output of T's precision, and run()
/// on 3 threads with every sample split, which must give forward's bits. Returns the error.
template <typename T>
double check_parity_case(const ParityCase& c) {
  const SafeTensors& st = c.file.front();
  const std::unique_ptr<Module<T>> m = parity_module<T>(c.meta);
  SCOPED_TRACE(c.name + ": " + m->description());
  const Nchw x = from_tensor(st.get<double, 4>("input"));
  // float compares with torch's float32 output (its nearest-mode indices are float32's).
  const Nchw want = from_tensor(st.get<double, 4>(std::is_same<T, float>::value ? "output_float32" : "output"));
  const Nchw got = from_tensor(m->forward(to_tensor<T>(x)));
  const double err = error(got, want);
  EXPECT_LE(err, tolerance<T>()) << first_difference(got, want, tolerance<T>());
  Context<T> ctx(3);
  ctx.min_parallel_madds(0);
  const std::vector<T> xn = to_nhwc<T>(x);
  const NhwcView<const T> view(xn.data(), x.shape());
  const NhwcShape out = m->output_shape({view.shape()});
  std::vector<T> y(static_cast<std::size_t>(out.size()));
  m->run(Inputs<T>(view), NhwcView<T>(y.data(), out), ctx, PostOps<T>{});
  const std::vector<T> forward_nhwc = to_nhwc<T>(got);
  EXPECT_EQ(0, std::memcmp(y.data(), forward_nhwc.data(), y.size() * sizeof(T))) << "run() on 3 threads differs";
  return err;
}

const char* const kParityKinds[] = {"max_pool", "avg_pool", "adaptive_avg_pool", "upsample",
                                    "softmax", "log_softmax", "activation"};

class PyTorchParity : public ::testing::TestWithParam<const char*> {
 protected:
  template <typename T>
  void check() {
    DYNCONV_SKIP_WITHOUT_MODULE_PARITY_DATA();
    const std::string kind = GetParam();
    int ran = 0;
    double worst = 0;
    std::string worst_case;
    for (const ParityCase& c : parity_data().cases) {
      if (!c.load_error.empty()) {
        if (kind == kParityKinds[0]) ADD_FAILURE() << c.name << ": " << c.load_error;  // once
        continue;
      }
      if (c.kind() != kind) continue;
      const double err = check_parity_case<T>(c);
      if (worst_case.empty() || err > worst) worst = err, worst_case = c.name;
      ++ran;
    }
    EXPECT_GT(ran, 0) << "the manifest has no " << kind << " case";
    RecordProperty("cases", ran);
    RecordProperty(std::string("worst_error_") + type_name<T>(), concat(worst, " (", worst_case, ')'));
    std::printf("  %s %s: %d cases, worst error %.2e (%s)\n", type_name<T>(), kind.c_str(), ran, worst,
                worst_case.c_str());
  }
};
TEST_P(PyTorchParity, Float) { check<float>(); }
TEST_P(PyTorchParity, Double) { check<double>(); }
INSTANTIATE_TEST_SUITE_P(Kinds, PyTorchParity, ::testing::ValuesIn(kParityKinds),
                         [](const ::testing::TestParamInfo<const char*>& p) { return std::string(p.param); });

TEST(PyTorchParityData, Complete) {
  DYNCONV_SKIP_WITHOUT_MODULE_PARITY_DATA();
  const ParityData& d = parity_data();
  EXPECT_GE(d.cases.size(), kMinParityCases) << "the manifest lists fewer cases than the generator writes";
  for (const ParityCase& c : d.cases) {
    if (!c.load_error.empty()) continue;  // reported by the kind tests
    bool known = false;
    for (const char* k : kParityKinds) known = known || c.kind() == k;
    EXPECT_TRUE(known) << c.name << ": unknown kind '" << c.kind() << "'";
  }
}

}  // namespace
