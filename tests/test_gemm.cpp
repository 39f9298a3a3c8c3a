// The GEMM kernel table (detail/gemm.hpp): every entry's gemm, gemm_bt, pack_b (against its
// PackedLayout's offset()), gemm_packed (B: columns from a panel boundary of a wider matrix
// packed by the entry's pack_b), mixed_gemm_batch (with float, BF16 and F16 experts, with and
// without ODConv's kernel scales, over all or part of the depth) and mixed_gemm_packed (float
// experts packed by pack_b), and the expert mix (detail/mix.hpp) of the kernel set in use,
// against a naive loop in double, over sizes that reach the kernels' edges (1, odd, just above
// the register and cache blocks), with leading dimensions larger than the rows, accumulating
// into non-zero outputs. An entry this CPU does not run is skipped, unless
// DYNCONV_REQUIRE_KERNELS (comma-separated names; CI sets it) lists it: then it fails.
#define DYNCONV_DETAIL_ALLOWED  // the kernels are tested directly
#include <dynconv/detail/gemm.hpp>
#undef DYNCONV_DETAIL_ALLOWED

#include <gtest/gtest.h>

#include <iostream>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>
#include <type_traits>
#include <string>
#include <vector>

namespace {

using dynconv::Index;

template <typename T>
std::vector<T> random_values(Index n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> d(-1, 1);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (T& x : v) x = static_cast<T>(d(gen));
  return v;
}

template <typename T>
constexpr double tol() {
  return sizeof(T) == 4 ? 1e-5 : 1e-13;
}

struct Size {
  Index m, n, k;
};
// Edges of both x86 kernels: rows 1..13 (tiles of 12 and 6, balanced), columns around 16 and
// 32 (one- and two-vector panels, masks), depth above the 256-row block, more columns than one
// packed block holds (64 Ki floats / 256 rows = 256 columns).
const Size kSizes[] = {{1, 1, 1},    {1, 17, 5},    {7, 1, 3},     {13, 29, 31},  {48, 48, 48},
                       {65, 33, 17}, {3, 130, 259}, {200, 70, 9},  {129, 257, 300}, {12, 16, 7},
                       {11, 32, 2},  {25, 15, 513}, {49, 300, 260}, {6, 47, 1}};

/// Whether DYNCONV_REQUIRE_KERNELS lists `name`.
bool required(const char* name) {
  const char* env = std::getenv("DYNCONV_REQUIRE_KERNELS");
  if (!env) return false;
  const std::string list = std::string(",") + env + ",";
  return list.find(std::string(",") + name + ",") != std::string::npos;
}

/// Whether to test entry `e` here: it runs on this CPU (else a skip note, or a failure when
/// required).
template <typename T>
bool runs_here(const dynconv::detail::GemmKernels<T>& e) {
  if (e.supported()) return true;
  if (required(e.name))
    ADD_FAILURE() << "GEMM kernel " << e.name << " is required (DYNCONV_REQUIRE_KERNELS) but this CPU "
                  << "does not run it";
  else
    std::cout << "[  NOTE    ] GEMM kernel " << e.name << " not tested: this CPU does not run it\n";
  return false;
}

/// The activations of the epilogue cases: in registers (piecewise linear) and not (SiLU, Tanh).
double act_of(dynconv::Activation a, double v) {
  return dynconv::activate(a, v);
}

template <typename T>
void check_gemm(const dynconv::detail::GemmKernels<T>& kernels) {
  if (!runs_here(kernels)) return;
  dynconv::Workspace<T> ws(1);
  using dynconv::Activation;
  // No epilogue (C += A B), then epilogues C = after(act(A B + bias) + residual).
  const dynconv::detail::GemmEpilogue<T> none{};
  const struct {
    bool bias, residual;
    Activation act, after;
  } epilogues[] = {{false, false, Activation::Identity, Activation::Identity},
                   {true, false, Activation::ReLU6, Activation::Identity},
                   {true, true, Activation::Identity, Activation::ReLU},
                   {false, true, Activation::HardSwish, Activation::Identity},
                   {true, false, Activation::HardSigmoid, Activation::Identity},
                   {true, true, Activation::SiLU, Activation::Tanh}};
  dynconv::detail::GrowBuffer<T> packed_b;  // 64-byte aligned, as gemm_packed wants
  Index allocations = 0;
  for (const Size& s : kSizes)
    for (int mode = 0; mode < 3; ++mode) {
      const bool transpose_b = mode == 1, packed = mode == 2;
      for (int ei = -1; ei < 6; ++ei) {
        const bool epilogue = ei >= 0;
        SCOPED_TRACE(testing::Message() << kernels.name << " m=" << s.m << " n=" << s.n << " k=" << s.k
                                        << (transpose_b ? " B^T" : "") << (packed ? " packed B" : "") << " epilogue "
                                        << ei);
        const Index lda = s.k + 3, ldb = (transpose_b ? s.k : s.n) + 2, ldc = s.n + 5;
        const std::vector<T> a = random_values<T>(s.m * lda, 1);
        const std::vector<T> b = random_values<T>((transpose_b ? s.n : s.k) * ldb, 2);
        std::vector<T> c = random_values<T>(s.m * ldc, 3);
        const std::vector<T> bias = random_values<T>(s.n, 4), residual = random_values<T>(s.m * ldc, 5);
        std::vector<double> expected(c.begin(), c.end());
        for (Index i = 0; i < s.m; ++i)
          for (Index j = 0; j < s.n; ++j) {
            double acc = 0;
            for (Index p = 0; p < s.k; ++p)
              acc += static_cast<double>(a[i * lda + p]) * (transpose_b ? b[j * ldb + p] : b[p * ldb + j]);
            double& e = expected[i * ldc + j];
            if (!epilogue) {
              e += acc;
              continue;
            }
            const auto& ep = epilogues[ei];
            const double v = act_of(ep.act, acc + (ep.bias ? static_cast<double>(bias[j]) : 0.0)) +
                             (ep.residual ? static_cast<double>(residual[i * ldc + j]) : 0.0);
            e = act_of(ep.after, v);
          }
        dynconv::detail::GemmEpilogue<T> ge = none;
        if (epilogue) ge = {epilogues[ei].bias ? bias.data() : nullptr, epilogues[ei].residual ? residual.data() : nullptr,
                            epilogues[ei].act, epilogues[ei].after};
        if (packed) {
          // B as columns [col0, col0 + n) of a wider matrix whose other columns hold 1e3: a
          // product that reads them is far off.
          const dynconv::detail::PackedLayout& layout = kernels.packed;
          const Index col0 = layout.nr ? layout.nr : 3, width = col0 + s.n + 5;
          std::vector<T> wide(static_cast<std::size_t>(s.k * width), T(1000));
          for (Index p = 0; p < s.k; ++p)
            for (Index j = 0; j < s.n; ++j) wide[p * width + col0 + j] = b[p * ldb + j];
          T* pb = packed_b.get(layout.size(s.k, width), allocations);
          kernels.pack_b(s.k, width, wide.data(), width, pb);
          kernels.gemm_packed(s.m, s.n, s.k, a.data(), lda, pb, layout.stride(width), col0, c.data(), ldc, ws, 0,
                              epilogue ? &ge : nullptr);
        } else {
          (transpose_b ? kernels.gemm_bt : kernels.gemm)(s.m, s.n, s.k, a.data(), lda, b.data(), ldb, c.data(), ldc,
                                                        ws, 0, epilogue ? &ge : nullptr);
        }
        double worst = 0;
        for (std::size_t i = 0; i < c.size(); ++i) worst = std::max(worst, std::abs(c[i] - expected[i]));
        EXPECT_LE(worst, tol<T>() * static_cast<double>(s.k + 1));
        // Outside the n columns of each row the output is untouched.
        for (Index i = 0; i < s.m; ++i)
          for (Index j = s.n; j < ldc; ++j) EXPECT_EQ(c[i * ldc + j], static_cast<T>(expected[i * ldc + j]));
      }
    }
}

/// Experts stored as S: n random values in [-1, 1] rounded to S.
template <typename S>
std::vector<S> random_experts(Index n, unsigned seed) {
  std::vector<S> v;
  for (const double x : random_values<double>(n, seed)) v.push_back(S(static_cast<float>(x)));
  return v;
}
/// The value an expert stored as S stands for, independently of dynconv's widen().
template <typename S>
double expert_value(const S& s) {
  return static_cast<double>(static_cast<float>(s));
}

/// C_b[P, c0:c1] += A_b[P, depth] * (sum_k pi[b, k] W_k)[depth, c0:c1] for each sample b, the
/// experts W_k stored as S (T, Eigen::bfloat16 or Eigen::half).
template <typename T, typename S = T>
void check_mixed(const dynconv::detail::GemmKernels<T>& kernels) {
  if (!runs_here(kernels)) return;
  dynconv::Workspace<T> ws(1);
  struct Mixed {
    Index kernels, depth, cols, c0, c1, n, pixels;
    Index d0 = 0, d1 = -1;  // the range of the depth multiplied (-1: to depth)
  };
  const Mixed cases[] = {{1, 9, 16, 0, 16, 1, 7},      {4, 27, 40, 16, 40, 3, 25}, {3, 300, 64, 0, 64, 2, 49},
                         {4, 576, 96, 32, 80, 4, 16}, {2, 5, 3, 1, 2, 5, 1},      {3, 260, 600, 5, 590, 2, 13},
                         {4, 300, 70, 3, 67, 1, 13}, {4, 9, 40, 0, 40, 1, 49},
                         // one sample wider than a block: blocks of all the columns, fewer rows
                         // (ragged in both), and too wide for that (the usual blocks)
                         {4, 300, 600, 5, 590, 1, 13}, {2, 20, 5000, 0, 5000, 1, 3},
                         // a range of the depth (one image's depth split over threads; a batch's)
                         {4, 300, 600, 5, 590, 1, 13, 107, 250}, {4, 576, 96, 0, 96, 1, 16, 288, 576},
                         {3, 260, 600, 5, 590, 2, 13, 64, 200},
                         // a batch over three depth blocks (the last ragged) and three column
                         // blocks from a panel's start (experts packed ahead of time too)
                         {4, 600, 700, 64, 700, 3, 13}};
  for (const Mixed& m : cases)
    for (bool scaled : {false, true}) {
      const Index d1 = m.d1 < 0 ? m.depth : m.d1;
      SCOPED_TRACE(testing::Message() << kernels.name << " experts of " << sizeof(S) << " bytes K=" << m.kernels
                                      << " depth=" << m.depth << " cols=" << m.cols << " [" << m.c0 << ", " << m.c1
                                      << ") n=" << m.n << " pixels=" << m.pixels << " depth [" << m.d0 << ", " << d1
                                      << ")" << (scaled ? " scaled" : ""));
      const std::vector<S> src = random_experts<S>(m.kernels * m.depth * m.cols, 4);
      const std::vector<T> pi = random_values<T>(m.n * m.kernels, 5);
      // ODConv's scales: per sample depth row scales, then cols column scales (a stride apart).
      const Index scale_stride = m.depth + m.cols + 2;
      const std::vector<T> scale = random_values<T>((m.n - 1) * scale_stride + m.depth + m.cols, 8);  // no slack
      const dynconv::detail::KernelScales<T> scales{scaled ? scale.data() : nullptr, scale.data() + m.depth, scale_stride};
      auto row_scale = [&](Index b, Index d) { return scaled ? static_cast<double>(scale[b * scale_stride + d]) : 1.0; };
      auto col_scale = [&](Index b, Index j) {
        return scaled ? static_cast<double>(scale[b * scale_stride + m.depth + j]) : 1.0;
      };
      const Index a_stride = m.pixels * m.depth + 7, ldc = m.cols + 3, c_stride = m.pixels * ldc + 11;
      const std::vector<T> a = random_values<T>(m.n * a_stride, 6);
      std::vector<T> c = random_values<T>(m.n * c_stride, 7);
      std::vector<double> expected(c.begin(), c.end());
      for (Index b = 0; b < m.n; ++b)
        for (Index p = 0; p < m.pixels; ++p)
          for (Index j = m.c0; j < m.c1; ++j) {
            double acc = 0;
            for (Index d = m.d0; d < d1; ++d) {
              double w = 0;
              for (Index k = 0; k < m.kernels; ++k)
                w += static_cast<double>(pi[b * m.kernels + k]) * expert_value(src[(k * m.depth + d) * m.cols + j]);
              acc += static_cast<double>(a[b * a_stride + p * m.depth + d]) * w * row_scale(b, d);
            }
            expected[b * c_stride + p * ldc + j] += acc * col_scale(b, j);
          }
      auto check = [&](const std::vector<T>& out, const char* path) {
        double worst = 0;
        for (std::size_t i = 0; i < out.size(); ++i) worst = std::max(worst, std::abs(out[i] - expected[i]));
        EXPECT_LE(worst, tol<T>() * static_cast<double>(m.depth * m.kernels + 1)) << path;
      };
      std::vector<T> c_batch = c;
      dynconv::detail::mixed_gemm_batch_for<T, S>(kernels)(src.data(), m.kernels, m.depth, m.cols, pi.data(), scales, m.n,
                                                           m.c0, m.c1, m.d0, d1, a.data(), a_stride, m.pixels,
                                                           c_batch.data(), c_stride, ldc, ws, 0);
      check(c_batch, "mixed_gemm_batch");
      // mixed_gemm_packed: float experts packed by the entry's pack_b, the whole depth, c0 at a
      // panel's start.
      if constexpr (std::is_same<S, T>::value) {
        if (!kernels.mixed_gemm_packed || m.d0 != 0 || d1 != m.depth || !kernels.packed.starts_panel(m.c0)) continue;
        const Index size = kernels.packed.size(m.depth, m.cols);
        dynconv::detail::GrowBuffer<T> packed;  // 64-byte aligned, as pack_b's stores need
        Index allocations = 0;
        T* experts = packed.get(m.kernels * size, allocations);
        for (Index k = 0; k < m.kernels; ++k)
          kernels.pack_b(m.depth, m.cols, src.data() + k * m.depth * m.cols, m.cols, experts + k * size);
        std::vector<T> c_packed = c;
        kernels.mixed_gemm_packed(experts, m.kernels, m.depth, m.cols, pi.data(), scales, m.n, m.c0, m.c1, a.data(),
                                  a_stride, m.pixels, c_packed.data(), c_stride, ldc, ws, 0);
        check(c_packed, "mixed_gemm_packed");
      }
    }
}

TEST(GemmKernelTable, InUseIsTheEntryOfTheKernelSetInUse) {
  const auto& table = dynconv::detail::gemm_kernel_table<float>();
  ASSERT_FALSE(table.empty());
  EXPECT_STREQ(table.back().name, "eigen");  // the portable fallback, always last
  EXPECT_TRUE(table.back().supported());
  for (const auto& e : table) {
    EXPECT_NE(e.supported, nullptr);
    EXPECT_NE(e.gemm, nullptr);
    EXPECT_NE(e.gemm_bt, nullptr);
    EXPECT_NE(e.pack_b, nullptr);
    EXPECT_NE(e.gemm_packed, nullptr);
    EXPECT_NE(e.mixed_gemm_batch, nullptr);
    // Experts packed ahead of time wherever the packed layout is not the experts' own.
    EXPECT_EQ(e.mixed_gemm_packed != nullptr, e.packed.nr != 0) << e.name;
  }
  using dynconv::detail::KernelIsa;
  const KernelIsa isa = dynconv::detail::kernel_isa();
  EXPECT_EQ(dynconv::detail::gemm_kernels<float>().isa, isa);
  EXPECT_STREQ(dynconv::detail::gemm_kernels<double>().name, "eigen");
  const char* forced = std::getenv("DYNCONV_KERNELS");
  if (forced && *forced) {
    EXPECT_STREQ(dynconv::detail::kernel_isa_name(isa), forced);
  } else {
    // Unforced: the first entry this CPU runs.
    const auto first = std::find_if(table.begin(), table.end(), [](const auto& e) { return e.supported(); });
    EXPECT_STREQ(dynconv::detail::gemm_kernels<float>().name, first->name);
  }
  std::cout << "[  NOTE    ] kernel set in use: " << dynconv::detail::kernel_isa_name(isa) << "\n";
#if defined(__x86_64__)
  // On x86-64 the own kernels are there whatever the build's flags.
  EXPECT_STREQ(table[0].name, "avx512");
  EXPECT_STREQ(table[1].name, "avx2");
#endif
  EXPECT_EQ(dynconv::detail::gemm_kernel_table<double>().size(), 1u);
}

TEST(GemmKernelTable, ForcingAnUnknownKernelSetIsAClearError) {
  const char* before = std::getenv("DYNCONV_KERNELS");
  const std::string saved = before ? before : "";
  setenv("DYNCONV_KERNELS", "avx9000", 1);
  try {
    dynconv::detail::select_kernel_isa();
    ADD_FAILURE() << "no error";
  } catch (const dynconv::Error& e) {
    EXPECT_STREQ(e.what(), "DYNCONV_KERNELS=avx9000: no such kernel set (avx512, avx2 or generic)");
  }
  if (before) setenv("DYNCONV_KERNELS", saved.c_str(), 1); else unsetenv("DYNCONV_KERNELS");
}

TEST(GemmKernelTable, EveryEntryMultipliesFloat) {
  for (const auto& e : dynconv::detail::gemm_kernel_table<float>()) check_gemm(e);
}
TEST(GemmKernelTable, EveryEntryMultipliesDouble) {
  for (const auto& e : dynconv::detail::gemm_kernel_table<double>()) check_gemm(e);
}
/// Entry e's pack_b puts B[p, j] where its PackedLayout's offset() says (the layout's
/// definition, which Winograd's transform writes by too) and zeroes the padding.
template <typename T>
void check_pack_b(const dynconv::detail::GemmKernels<T>& e) {
  if (!runs_here(e)) return;
  for (const Size& s : kSizes) {
    SCOPED_TRACE(testing::Message() << e.name << " k=" << s.k << " n=" << s.n);
    const Index ldb = s.n + 3;
    const std::vector<T> b = random_values<T>(s.k * ldb, 8);
    const dynconv::detail::PackedLayout& layout = e.packed;
    const Index size = layout.size(s.k, s.n);
    dynconv::detail::GrowBuffer<T> buffer;  // 64-byte aligned, as the x86 packing stores
    Index allocations = 0;
    T* out = buffer.get(size, allocations);
    std::fill(out, out + size, T(7));
    e.pack_b(s.k, s.n, b.data(), ldb, out);
    std::vector<bool> seen(static_cast<std::size_t>(size), false);
    Index wrong = 0;
    for (Index p = 0; p < s.k; ++p)
      for (Index j = 0; j < layout.stride(s.n); ++j) {
        const Index o = layout.offset(s.k, s.n, p, j);
        ASSERT_LT(o, size);
        seen[o] = true;
        if (out[o] != (j < s.n ? b[p * ldb + j] : T(0))) ++wrong;
      }
    EXPECT_EQ(wrong, 0);
    EXPECT_EQ(std::count(seen.begin(), seen.end(), false), 0);  // offset() covers the whole buffer
  }
}

TEST(GemmKernelTable, EveryEntryPacksBInItsLayoutFloat) {
  for (const auto& e : dynconv::detail::gemm_kernel_table<float>()) check_pack_b(e);
}
TEST(GemmKernelTable, EveryEntryPacksBInItsLayoutDouble) {
  for (const auto& e : dynconv::detail::gemm_kernel_table<double>()) check_pack_b(e);
}
TEST(GemmKernelTable, EveryEntryMixesIntoPackingFloat) {
  for (const auto& e : dynconv::detail::gemm_kernel_table<float>()) check_mixed(e);
}
TEST(GemmKernelTable, EveryEntryMixesIntoPackingDouble) {
  for (const auto& e : dynconv::detail::gemm_kernel_table<double>()) check_mixed(e);
}

TEST(GemmKernelTable, EveryEntryMixesBFloat16AndFloat16ExpertsIntoPacking) {
  for (const auto& e : dynconv::detail::gemm_kernel_table<float>()) {
    check_mixed<float, Eigen::bfloat16>(e);
    check_mixed<float, Eigen::half>(e);
  }
  for (const auto& e : dynconv::detail::gemm_kernel_table<double>()) check_mixed<double, Eigen::bfloat16>(e);
}

/// detail::mix (the kernel set in use): o[r, 0:len] = sum_k pi[k] s_k[r, 0:len] with row
/// strides, experts stored as S; lengths around the vector widths (8, 16) and their tails, and
/// the output beyond each row's len untouched.
template <typename T, typename S>
void check_mix() {
  struct Case {
    Index kernels, rows, len, ls, lo;
  };
  const Case cases[] = {{1, 1, 1, 1, 1}, {4, 3, 7, 9, 8}, {3, 2, 16, 20, 17}, {5, 4, 33, 40, 35}, {2, 1, 100, 100, 100},
                        {4, 5, 15, 15, 16}, {6, 2, 9, 31, 12}};
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "experts of " << sizeof(S) << " bytes K=" << c.kernels << " rows=" << c.rows
                                    << " len=" << c.len);
    const Index stride = c.rows * c.ls + 3;
    const std::vector<S> src = random_experts<S>(c.kernels * stride, 11);
    const std::vector<T> pi = random_values<T>(c.kernels, 12);
    std::vector<T> o(static_cast<std::size_t>(c.rows * c.lo), T(7));
    dynconv::detail::mix(src.data(), stride, c.kernels, pi.data(), c.rows, c.len, c.ls, o.data(), c.lo);
    for (Index r = 0; r < c.rows; ++r)
      for (Index i = 0; i < c.lo; ++i) {
        const T got = o[r * c.lo + i];
        if (i >= c.len) {
          EXPECT_EQ(got, T(7)) << "row " << r << " index " << i << " beyond len";
          continue;
        }
        double want = 0;
        for (Index k = 0; k < c.kernels; ++k) want += static_cast<double>(pi[k]) * expert_value(src[k * stride + r * c.ls + i]);
        EXPECT_NEAR(got, want, tol<T>() * 4) << "row " << r << " index " << i;
      }
  }
}
TEST(ExpertMix, FloatBFloat16AndFloat16Experts) {
  check_mix<float, float>();
  check_mix<float, Eigen::bfloat16>();
  check_mix<float, Eigen::half>();
  check_mix<double, double>();
  check_mix<double, Eigen::half>();
}

/// Rounding to the 16-bit storages is to nearest, ties to even (the math facts the widened
/// experts rest on): BF16 keeps 8 significant bits, F16 11 and magnitudes up to 65504.
TEST(ExpertMix, StoragesRoundToNearestEven) {
  using dynconv::detail::widen;
  const float ulp_bf16 = 1.f / 128, ulp_f16 = 1.f / 1024;  // spacing just above 1
  EXPECT_EQ(widen<float>(Eigen::bfloat16(1.f + ulp_bf16 / 2)), 1.f);                  // tie: to even (1)
  EXPECT_EQ(widen<float>(Eigen::bfloat16(1.f + 3 * ulp_bf16 / 2)), 1.f + 2 * ulp_bf16);  // tie: to even
  EXPECT_EQ(widen<float>(Eigen::bfloat16(1.f + ulp_bf16 * 0.51f)), 1.f + ulp_bf16);
  EXPECT_EQ(widen<float>(Eigen::half(1.f + ulp_f16 / 2)), 1.f);
  EXPECT_EQ(widen<float>(Eigen::half(1.f + 3 * ulp_f16 / 2)), 1.f + 2 * ulp_f16);
  EXPECT_EQ(widen<float>(Eigen::half(65504.f)), 65504.f);
  EXPECT_EQ(widen<float>(Eigen::half(1.f / 3)), 0x1.554p-2f);  // 0x3555
  EXPECT_EQ(widen<float>(Eigen::bfloat16(1.f / 3)), 0x1.56p-2f);  // 0x3EAB
  EXPECT_EQ(widen<float>(Eigen::bfloat16(3e38f)), 0x1.c4p+127f);  // float's range kept
  EXPECT_EQ(widen<double>(Eigen::half(-2.5f)), -2.5);
}

TEST(GemmKernelTable, AllocatesNothingOnceTheWorkspaceHasGrown) {
  dynconv::Workspace<float> ws(1);
  const auto& g = dynconv::detail::gemm_kernels<float>();
  const std::vector<float> a = random_values<float>(64 * 64, 1), b = random_values<float>(64 * 64, 2);
  std::vector<float> c(64 * 64, 0.f);
  g.gemm(64, 64, 64, a.data(), 64, b.data(), 64, c.data(), 64, ws, 0, nullptr);
  const Index grown = ws.allocations();
  for (int i = 0; i < 3; ++i) g.gemm(64, 64, 64, a.data(), 64, b.data(), 64, c.data(), 64, ws, 0, nullptr);
  EXPECT_EQ(ws.allocations(), grown);
}

}  // namespace
