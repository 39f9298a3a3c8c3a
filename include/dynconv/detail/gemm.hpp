// The GEMM kernels, behind a small kernel table: the one header that uses Eigen's internal
// GEMM API (general_matrix_matrix_product, gebp_kernel, gemm_pack_lhs/rhs, level3_blocking).
//
// An entry of the table (GemmKernels<T>) holds:
//   supported         whether this CPU runs the entry
//   gemm              C[m, n] += A[m, k] * B[k, n]          (all row-major, leading dimensions),
//                     or with a GemmEpilogue (gemm_x86.hpp) C = after(act(A B + bias) + residual)
//                     (dynconv's kernels: tile by tile, each in L1; Eigen's: loops over C)
//   gemm_bt           C[m, n] += A[m, k] * B[n, k]^T (the same)
//   pack_b            packs B [k, n] into the entry's PackedLayout (x86: block by block, as
//                     gemm packs per call; "eigen": row-major)
//   gemm_packed       the same product with B packed ahead of time by pack_b (a kernel used by
//                     many products, e.g. a static layer's, is packed once instead of by every
//                     call; Winograd's transformed U is written in the layout directly)
//   mixed_gemm_batch  C_b += A_b[:, d0:d1] * (sum_k pi[b, k] W_k)[d0:d1, c0:c1] for every sample b
//                     of a batch (a range of the depth: one image split over threads),
//                     the mix fused into the packing of W (see eigen_mixed_gemm_batch), the
//                     mixed kernel optionally scaled by rows and columns (KernelScales: ODConv);
//                     one function per storage of the experts W_k: T, BF16, F16 (widened)
//   mixed_gemm_packed the same over the whole depth with the float experts packed ahead of time
//                     by pack_b (a batch mixes their blocks where they lie); null for "eigen"
// Each works on the calling thread with one worker's packing buffers from the workspace, so it
// allocates nothing. gemm_kernel_table() lists the entries, best first; gemm_kernels() is the
// one of the kernel set in use (kernel_isa(), gemm_x86.hpp: the best the CPU runs, or the one
// DYNCONV_KERNELS names). For float on x86-64 the table holds dynconv's own kernels (AVX-512
// 12x32 and AVX2 6x16, each compiled for its instruction set whatever the build's flags), then
// "eigen" (Eigen 3.4's blocked GEMM for the build's flags: the generic set, the portable
// fallback); for double, "eigen" only. test_gemm checks every entry against a naive product.
#pragma once
#include <dynconv/detail/internal_check.hpp>

#include <dynconv/detail/gemm_x86.hpp>
#include <dynconv/detail/mix.hpp>
#include <dynconv/detail/packing.hpp>
#include <dynconv/runtime.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace dynconv {
namespace detail {

/// C[m, n] += A[m, k] * B[k, n] (or * B^T for B [n, k] when TransposeB), all row-major with
/// leading dimensions lda, ldb, ldc, on the calling thread, with `worker`'s packing buffers from
/// the workspace (so Eigen's GEMM allocates nothing). Eigen's internal GEMM driver of 3.4.
template <typename T, bool TransposeB>
void eigen_product(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb, T* c, Index ldc,
                   Workspace<T>& ws, int worker) {
  // Eigen computes the row-major product as the column-major C^T [n, m] = B^T [n, k] A^T [k, m]:
  // B row-major [k, n] is B^T column-major; a transposed B [n, k] row-major is B^T row-major.
  struct Blocking : Eigen::internal::level3_blocking<T, T> {
    Blocking(Index rows, Index cols, Index depth, Workspace<T>& w, int worker) {
      this->m_mc = rows;
      this->m_nc = cols;
      this->m_kc = depth;
      Eigen::internal::computeProductBlockingSizes<T, T, 1, Index>(this->m_kc, this->m_mc, this->m_nc, Index(1));
      this->m_blockA = w.scratch(worker, Scratch::PackA, this->m_kc * this->m_mc);
      this->m_blockB = w.scratch(worker, Scratch::PackB, this->m_kc * this->m_nc);
    }
  } blocking(n, m, k, ws, worker);
  constexpr int kLhsOrder = TransposeB ? Eigen::RowMajor : Eigen::ColMajor;
  Eigen::internal::general_matrix_matrix_product<Index, T, kLhsOrder, false, T, Eigen::ColMajor, false,
                                                 Eigen::ColMajor, 1>::run(n, m, k, b, ldb, a, lda, c, 1, ldc,
                                                                          T(1), blocking, nullptr);
}

/// The table's "eigen" entry: eigen_product, with an epilogue C = bias first, the product
/// accumulated, then the activations and residual in loops over C.
template <typename T, bool TransposeB = false>
void eigen_gemm(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb, T* c, Index ldc,
                Workspace<T>& ws, int worker, const GemmEpilogue<T>* ep) {
  if (m == 0 || n == 0) return;
  if (!ep) {
    if (k > 0) eigen_product<T, TransposeB>(m, n, k, a, lda, b, ldb, c, ldc, ws, worker);
    return;
  }
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) c[i * ldc + j] = ep->bias ? ep->bias[j] : T(0);
  if (k > 0) eigen_product<T, TransposeB>(m, n, k, a, lda, b, ldb, c, ldc, ws, worker);
  run_for_kernel_isa([&] {
    finish_rows(c, ldc, m, n, ep->act, ep->residual, ep->after);
    if (ep->sums) add_column_sums(c, ldc, m, n, ep->sums);
  });
}

/// The table's "eigen" entry with B packed ahead of time: its PackedLayout is row-major.
template <typename T>
void eigen_gemm_packed(Index m, Index n, Index k, const T* a, Index lda, const T* packed_b, Index ldb, Index col0,
                       T* c, Index ldc, Workspace<T>& ws, int worker, const GemmEpilogue<T>* ep) {
  eigen_gemm<T, false>(m, n, k, a, lda, packed_b + col0, ldb, c, ldc, ws, worker, ep);
}

/// The "eigen" entry's packing of B [k, n] (row-major, ldb) for eigen_gemm_packed: row-major.
template <typename T>
void eigen_pack_b(Index k, Index n, const T* b, Index ldb, T* out) {
  for (Index p = 0; p < k; ++p) std::copy(b + p * ldb, b + p * ldb + n, out + p * n);
}

/// The mixed-kernel GEMM of a batch, with the mix fused into Eigen's packing:
///   C_b[P, c0:c1] += A_b[P, d0:d1] * (sum_k pi[b, k] W_k)[d0:d1, c0:c1]   for b in [0, n)
/// W_k = src + k*depth*cols (row-major [depth, cols]), A_b = a + b*a_stride (row-major
/// [P, depth]), C_b = c + b*c_stride (row-major, leading dimension ldc). For every cache block
/// of the kernels, the K source blocks are packed once for the whole batch and mixed into the
/// packed block each sample's micro-kernel reads: the sources cross the memory bus once per
/// batch and no mixed kernel is ever written out. Packing is a permutation, so mixing packed
/// blocks is mixing kernels. Meant for few pixels (late layers): all samples' packed A panels
/// of one depth block are kept. BF16/F16 sources (S) are widened block by block before packing.
/// With `scales` (ODConv), each sample mixes, scales and packs its own block from the sources
/// instead: Eigen's packed layout has no simple place for a row and a column.
template <typename T, typename S>
void eigen_mixed_gemm_batch(const S* src, Index kernels, Index depth, Index cols, const T* pi,
                            const KernelScales<T>& scales, Index n, Index c0, Index c1, Index d0, Index d1,
                            const T* a, Index a_stride, Index pixels, T* c, Index c_stride, Index ldc,
                            Workspace<T>& ws, int worker) {
  namespace ei = Eigen::internal;
  using Traits = ei::gebp_traits<T, T>;
  using Mapper = ei::const_blas_data_mapper<T, Index, Eigen::ColMajor>;
  using ResMapper = ei::blas_data_mapper<T, Index, Eigen::ColMajor, Eigen::Unaligned, 1>;
  const Index rows = c1 - c0;
  if (rows <= 0 || pixels <= 0 || d1 <= d0) return;
  Index kc = d1 - d0, mc = rows, nc = pixels;
  ei::computeProductBlockingSizes<T, T, 1, Index>(kc, mc, nc, Index(1));
  // Each sample's packed A panel starts 64-byte aligned: the micro-kernel loads it with aligned
  // packets (kc * pixels need not be a multiple of the packet size, 16 floats with AVX-512).
  const Index rhs_stride = (kc * pixels + 15) / 16 * 16;
  T* rhs = ws.scratch(worker, Scratch::PackB, n * rhs_stride);
  // Each packed block starts 64-byte aligned too (the packing stores with aligned packets).
  const Index source_stride = (mc * kc + 15) / 16 * 16;
  T* sources = scales ? nullptr : ws.scratch(worker, Scratch::Sources, kernels * source_stride);
  T* mixed = ws.scratch(worker, Scratch::PackA, mc * kc);
  // Low-precision sources: each [kcur, mcur] block widened here first; scaled: each sample's
  // block mixed and scaled here (the fused path uses no kernel scratch otherwise).
  T* wide = std::is_same<S, T>::value && !scales ? nullptr : ws.scratch(worker, Scratch::Kernel, mc * kc);
  ei::gemm_pack_lhs<T, Index, Mapper, Traits::mr, Traits::LhsProgress, typename Traits::LhsPacket4Packing,
                    Eigen::ColMajor>
      pack_lhs;
  ei::gemm_pack_rhs<T, Index, Mapper, Traits::nr, Eigen::ColMajor> pack_rhs;
  ei::gebp_kernel<T, T, Index, ResMapper, Traits::mr, Traits::nr, false, false> gebp;
  // In Eigen's column-major terms: C_b^T [c1-c0, P] += W^T [c1-c0, depth] * A_b^T [depth, P].
  for (Index k2 = d0; k2 < d1; k2 += kc) {
    const Index kcur = std::min(kc, d1 - k2);
    for (Index b = 0; b < n; ++b)
      pack_rhs(rhs + b * rhs_stride, Mapper(a + b * a_stride, depth).getSubMapper(k2, 0), kcur, pixels);
    for (Index i2 = 0; i2 < rows; i2 += mc) {
      const Index mcur = std::min(mc, rows - i2);
      if (scales) {
        for (Index b = 0; b < n; ++b) {
          const T* rs = scales.row(b) + k2;
          const T* cs = scales.col(b) + c0 + i2;
          for (Index p = 0; p < kcur; ++p) {
            T* o = wide + p * mcur;
            std::fill(o, o + mcur, T(0));
            for (Index k = 0; k < kernels; ++k) {
              const T w = pi[b * kernels + k] * rs[p];
              const S* row = src + k * depth * cols + (k2 + p) * cols + c0 + i2;
              for (Index i = 0; i < mcur; ++i) o[i] += w * widen<T>(row[i]);
            }
            for (Index i = 0; i < mcur; ++i) o[i] *= cs[i];
          }
          pack_lhs(mixed, Mapper(wide, mcur), kcur, mcur);
          gebp(ResMapper(c + b * c_stride + c0, ldc).getSubMapper(i2, 0), mixed, rhs + b * rhs_stride, mcur, kcur,
               pixels, T(1));
        }
        continue;
      }
      for (Index k = 0; k < kernels; ++k) {
        if constexpr (std::is_same<S, T>::value) {
          pack_lhs(sources + k * source_stride, Mapper(src + k * depth * cols + c0, cols).getSubMapper(i2, k2), kcur,
                   mcur);
        } else {
          for (Index p = 0; p < kcur; ++p) {
            const S* row = src + k * depth * cols + (k2 + p) * cols + c0 + i2;
            for (Index i = 0; i < mcur; ++i) wide[p * mcur + i] = widen<T>(row[i]);
          }
          pack_lhs(sources + k * source_stride, Mapper(wide, mcur), kcur, mcur);
        }
      }
      for (Index b = 0; b < n; ++b) {
        mix(sources, source_stride, kernels, pi + b * kernels, 1, mcur * kcur, 0, mixed, 0);
        gebp(ResMapper(c + b * c_stride + c0, ldc).getSubMapper(i2, 0), mixed, rhs + b * rhs_stride, mcur, kcur,
             pixels, T(1));
      }
    }
  }
}

/// The batched mixed-kernel GEMM for experts stored as S (T, Eigen::bfloat16 or Eigen::half).
template <typename T, typename S>
using MixedGemmBatch = void (*)(const S* src, Index kernels, Index depth, Index cols, const T* pi,
                                const KernelScales<T>& scales, Index n, Index c0, Index c1, Index d0, Index d1,
                                const T* a, Index a_stride, Index pixels, T* c, Index c_stride, Index ldc,
                                Workspace<T>& ws, int worker);

/// x86_mixed_gemm_packed's form: the batch's mixed-kernel GEMM over the whole depth, the K float
/// experts packed ahead of time in the entry's PackedLayout (expert k at packed + k *
/// packed.size(depth, cols)), c0 a multiple of packed.nr.
template <typename T>
using MixedGemmPacked = void (*)(const T* packed, Index kernels, Index depth, Index cols, const T* pi,
                                 const KernelScales<T>& scales, Index n, Index c0, Index c1, const T* a,
                                 Index a_stride, Index pixels, T* c, Index c_stride, Index ldc, Workspace<T>& ws,
                                 int worker);

/// One entry of the GEMM kernel table (see the header comment).
template <typename T>
struct GemmKernels {
  const char* name;
  KernelIsa isa;
  bool (*supported)();
  void (*gemm)(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb, T* c, Index ldc,
               Workspace<T>& ws, int worker, const GemmEpilogue<T>* ep);
  void (*gemm_bt)(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb, T* c, Index ldc,
                  Workspace<T>& ws, int worker, const GemmEpilogue<T>* ep);
  PackedLayout packed;
  /// Packs B [k, n] (row-major, leading dimension ldb) into `packed`'s layout (packed.size(k, n)
  /// values, padding zeroed) for gemm_packed.
  void (*pack_b)(Index k, Index n, const T* b, Index ldb, T* out);
  /// gemm with B = columns [col0, col0 + n) of a matrix [k, width] packed in `packed`'s layout
  /// (64-byte aligned; ldb = packed.stride(width); col0 a multiple of packed.nr).
  void (*gemm_packed)(Index m, Index n, Index k, const T* a, Index lda, const T* packed_b, Index ldb, Index col0,
                      T* c, Index ldc, Workspace<T>& ws, int worker, const GemmEpilogue<T>* ep);
  MixedGemmBatch<T, T> mixed_gemm_batch;
  MixedGemmBatch<T, Eigen::bfloat16> mixed_gemm_batch_bf16;
  MixedGemmBatch<T, Eigen::half> mixed_gemm_batch_f16;
  /// Null for an entry whose packed layout is the experts' own (Eigen's).
  MixedGemmPacked<T> mixed_gemm_packed;
  /// Whether mixed_gemm_batch mixes one sample's kernel while packing it, in one pass over the
  /// sources (dynconv's x86 kernels; Eigen's packs the K sources first, slower than one mix).
  bool mixes_while_packing;
};

inline bool always_supported() { return true; }

/// Every GEMM kernel entry compiled in, best first (the CPU may not run all of them).
template <typename T>
const std::vector<GemmKernels<T>>& gemm_kernel_table() {
  static const std::vector<GemmKernels<T>> table = [] {
    std::vector<GemmKernels<T>> t;
#if DYNCONV_X86_KERNELS
    if constexpr (std::is_same<T, float>::value) {
      t.push_back({"avx512", KernelIsa::Avx512, &cpu_has_avx512, &x86_gemm<X86Avx512, false>, &x86_gemm<X86Avx512, true>,
                   {X86Avx512::nr, X86Blocking::kc}, &x86_pack_whole_b<X86Avx512>, &x86_gemm_packed<X86Avx512>,
                   &x86_mixed_gemm_batch<X86Avx512, float>, &x86_mixed_gemm_batch<X86Avx512, Eigen::bfloat16>,
                   &x86_mixed_gemm_batch<X86Avx512, Eigen::half>, &x86_mixed_gemm_packed<X86Avx512>, true});
      t.push_back({"avx2", KernelIsa::Avx2, &cpu_has_avx2, &x86_gemm<X86Avx2, false>, &x86_gemm<X86Avx2, true>,
                   {X86Avx2::nr, X86Blocking::kc}, &x86_pack_whole_b<X86Avx2>, &x86_gemm_packed<X86Avx2>,
                   &x86_mixed_gemm_batch<X86Avx2, float>, &x86_mixed_gemm_batch<X86Avx2, Eigen::bfloat16>,
                   &x86_mixed_gemm_batch<X86Avx2, Eigen::half>, &x86_mixed_gemm_packed<X86Avx2>, true});
    }
#endif
    t.push_back({"eigen", KernelIsa::Generic, &always_supported, &eigen_gemm<T, false>, &eigen_gemm<T, true>,
                 PackedLayout{}, &eigen_pack_b<T>, &eigen_gemm_packed<T>,
                 &eigen_mixed_gemm_batch<T, T>, &eigen_mixed_gemm_batch<T, Eigen::bfloat16>,
                 &eigen_mixed_gemm_batch<T, Eigen::half>, nullptr, false});
    return t;
  }();
  return table;
}

/// The GEMM kernels in use: the table's entry of the kernel set in use (kernel_isa()), or
/// "eigen" when the set has none for T (double).
template <typename T>
const GemmKernels<T>& gemm_kernels() {
  static const GemmKernels<T>& in_use = [] () -> const GemmKernels<T>& {
    const KernelIsa isa = kernel_isa();
    for (const auto& e : gemm_kernel_table<T>())
      if (e.isa == isa) return e;
    return gemm_kernel_table<T>().back();
  }();
  return in_use;
}

/// C[m, n] += A[m, k] * B[k, n] (or * B^T for B [n, k] when TransposeB) through the table,
/// with the tile epilogue `ep` around it if given.
template <typename T, bool TransposeB = false>
void gemm(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb, T* c, Index ldc,
          Workspace<T>& ws, int worker, const GemmEpilogue<T>* ep = nullptr) {
  const GemmKernels<T>& g = gemm_kernels<T>();
  (TransposeB ? g.gemm_bt : g.gemm)(m, n, k, a, lda, b, ldb, c, ldc, ws, worker, ep);
}

/// C[m, n] += A[m, k] * B[k, n] through the table, B = columns [col0, col0 + n) of a matrix
/// packed ahead of time in gemm_kernels<T>().packed's layout (pack_b(); ldb its stride()).
template <typename T>
void gemm_packed(Index m, Index n, Index k, const T* a, Index lda, const T* packed_b, Index ldb, Index col0, T* c,
                 Index ldc, Workspace<T>& ws, int worker, const GemmEpilogue<T>* ep = nullptr) {
  gemm_kernels<T>().gemm_packed(m, n, k, a, lda, packed_b, ldb, col0, c, ldc, ws, worker, ep);
}

/// Packs B [k, n] (row-major, leading dimension ldb) for gemm_packed through the table.
template <typename T>
void pack_b(Index k, Index n, const T* b, Index ldb, T* out) {
  gemm_kernels<T>().pack_b(k, n, b, ldb, out);
}

/// The batch's mixed-kernel GEMM with experts packed ahead of time, through the table (see
/// MixedGemmPacked; only for an entry that has one: gemm_kernels<T>().mixed_gemm_packed).
template <typename T>
void mixed_gemm_packed(const T* packed, Index kernels, Index depth, Index cols, const T* pi,
                       const KernelScales<T>& scales, Index n, Index c0, Index c1, const T* a, Index a_stride,
                       Index pixels, T* c, Index c_stride, Index ldc, Workspace<T>& ws, int worker) {
  gemm_kernels<T>().mixed_gemm_packed(packed, kernels, depth, cols, pi, scales, n, c0, c1, a, a_stride, pixels, c,
                                      c_stride, ldc, ws, worker);
}

/// An entry's mixed-kernel GEMM for experts stored as S.
template <typename T, typename S>
MixedGemmBatch<T, S> mixed_gemm_batch_for(const GemmKernels<T>& e) {
  if constexpr (std::is_same<S, Eigen::bfloat16>::value) return e.mixed_gemm_batch_bf16;
  else if constexpr (std::is_same<S, Eigen::half>::value) return e.mixed_gemm_batch_f16;
  else return e.mixed_gemm_batch;
}

/// The fused mix-and-GEMM of a batch through the table (see eigen_mixed_gemm_batch).
template <typename T, typename S>
void mixed_gemm_batch(const S* src, Index kernels, Index depth, Index cols, const T* pi, const KernelScales<T>& scales,
                      Index n, Index c0, Index c1, Index d0, Index d1, const T* a, Index a_stride, Index pixels, T* c,
                      Index c_stride, Index ldc, Workspace<T>& ws, int worker) {
  mixed_gemm_batch_for<T, S>(gemm_kernels<T>())(src, kernels, depth, cols, pi, scales, n, c0, c1, d0, d1, a, a_stride,
                                                pixels, c, c_stride, ldc, ws, worker);
}

}  // namespace detail
}  // namespace dynconv
