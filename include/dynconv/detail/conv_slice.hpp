// One slice of one sample's convolution with its fused epilogue: the kernels' entry point.
// Lean loops and GEMMs over raw NHWC buffers; no argument checks (the operators validate once).
#pragma once
#include <dynconv/detail/internal_check.hpp>

#include <dynconv/detail/depthwise.hpp>
#include <dynconv/detail/epilogue.hpp>
#include <dynconv/detail/gemm.hpp>
#include <dynconv/detail/im2col.hpp>
#include <dynconv/detail/packing.hpp>
#include <dynconv/detail/winograd.hpp>

namespace dynconv {
namespace detail {

/// One slice of one sample's convolution with its fused epilogue.
///   x: the sample [H, W, Cin]; y: the sample's output [Hout, Wout, Cout].
///   algo: the algorithm run_algorithm() gives for this output size.
///   kernel, ldk: the packed kernel; for groups == 1 (and depthwise) it points at column
///     (channel) s.c0 and ldk is its row stride; for groups > 1 it is the whole packed kernel
///     and the slice must span all channels. For Winograd it is winograd_kernel()'s packed
///     transform of the slice's channels [s.c0, s.c1) (ldk unused).
///   columns: this sample's whole im2col matrix when the caller built it already (a batch
///     shared across channel slices), else null and the slice builds its own rows.
///   packed: null, or (groups == 1, Pointwise and Im2colGemm) the whole kernel [depth, Cout]
///     packed ahead of time in the GEMM's PackedLayout (pack_b()): a slice that starts at one of
///     its panels multiplies it without packing. Channel parts come in units of 16 channels
///     (channel_part): a part that starts inside a 32-wide AVX-512 panel packs its columns per
///     call. Parts of whole panels would skip that, but split 96 or 160 channels 2:1 or 3:2
///     over two threads instead of evenly.
template <typename T>
void conv_slice(ConvAlgorithm algo, const ConvGeometry& g, const T* x, Index in_h, Index in_w,
                const T* kernel, Index ldk, const Slice& s, const Epilogue<T>& ep, T* y,
                const T* columns, Workspace<T>& ws, int worker, const T* packed = nullptr) {
  if (algo == ConvAlgorithm::Depthwise) return depthwise_slice(g, x, in_h, in_w, kernel, ldk, s, ep, y);
  if (algo == ConvAlgorithm::Winograd) return winograd_slice(g, x, in_h, in_w, kernel, s, ep, y, ws, worker);
  const Index ow = g.out_w(in_w), cin = g.in_channels, cout = g.out_channels;
  const Index p0 = s.r0 * ow, pixels = (s.r1 - s.r0) * ow;
  const Index cin_g = g.in_per_group(), cout_g = g.out_per_group();
  const Index depth = g.kernel_h * g.kernel_w * cin_g;
  // The epilogue runs inside the GEMM (tile by tile while each is in L1, with dynconv's kernels).
  if (g.groups == 1) {
    const T* a;
    Index lda;
    if (!needs_columns(algo, g)) {
      a = x + p0 * cin;
      lda = cin;
    } else if (columns) {
      a = columns + p0 * depth;
      lda = depth;
    } else {
      T* col = ws.scratch(worker, Scratch::Columns, pixels * depth);
      im2col(g, x, in_h, in_w, s.r0, s.r1, 0, col);
      a = col;
      lda = depth;
    }
    const GemmEpilogue<T> e = gemm_epilogue(ep, cout, p0, s.c0);
    const PackedLayout& layout = gemm_kernels<T>().packed;
    if (packed && layout.starts_panel(s.c0))
      gemm_packed(pixels, s.c1 - s.c0, depth, a, lda, packed, layout.stride(cout), s.c0, y + p0 * cout + s.c0, cout, ws,
                  worker, &e);
    else
      gemm(pixels, s.c1 - s.c0, depth, a, lda, kernel, ldk, y + p0 * cout + s.c0, cout, ws, worker, &e);
  } else {
    eigen_assert(s.c0 == 0 && s.c1 == cout && !columns);
    T* col = ws.scratch(worker, Scratch::Columns, pixels * depth);
    for (Index grp = 0; grp < g.groups; ++grp) {
      im2col(g, x, in_h, in_w, s.r0, s.r1, grp, col);
      const GemmEpilogue<T> e = gemm_epilogue(ep, cout, p0, grp * cout_g);
      gemm(pixels, cout_g, depth, col, depth, kernel + grp * depth * cout_g, cout_g,
           y + p0 * cout + grp * cout_g, cout, ws, worker, &e);
    }
  }
}

/// run(ep), or with `means` (n samples' [Cout] means; channels [c0, c1) written) run(e) where
/// e.sums are n x Cout sums in double in the worker's scratch (the run's channels zeroed
/// before), and then each mean is its sum over `pixels`.
template <typename T, typename Run>
void with_sums(const Epilogue<T>& ep, Index n, Index cout, Index c0, Index c1, Index pixels, Workspace<T>& ws,
               int worker, T* means, const Run& run) {
  if (!means) return run(ep);
  static_assert(sizeof(double) % sizeof(T) == 0, "with_sums: double sums in a scratch of T");
  constexpr Index kPer = static_cast<Index>(sizeof(double) / sizeof(T));
  Epilogue<T> e = ep;
  e.sums = reinterpret_cast<double*>(ws.scratch(worker, Scratch::Sums, n * cout * kPer));  // 64-byte aligned
  for (Index b = 0; b < n; ++b) std::fill(e.sums + b * cout + c0, e.sums + b * cout + c1, 0.0);
  run(e);
  const double scale = 1.0 / static_cast<double>(pixels);
  for (Index b = 0; b < n; ++b)
    for (Index c = c0; c < c1; ++c) means[b * cout + c] = static_cast<T>(e.sums[b * cout + c] * scale);
}

/// conv_slice of one whole sample (every output row and channel; the arguments as there). With
/// `means` (the sample's PostOps::means, [Cout]) the slice also sums each output channel as it
/// finishes it (Epilogue::sums, in double in the worker's scratch): with dynconv's x86 kernels
/// tile by tile and row by row while the values are in L1 (Winograd: a block of rows, in L2;
/// Eigen's entry: after its product), and the sums become the means. A separate pooling pass
/// over a batch finds the first samples gone to memory; summing each sample after writing it
/// still re-read it from L2 and L3 (4% of DY-MobileNetV2's batch-8 profile on the AMD EPYC Zen
/// 4 machine).
template <typename T>
void conv_sample(ConvAlgorithm algo, const ConvGeometry& g, const T* x, Index in_h, Index in_w, const T* kernel,
                 Index ldk, const Epilogue<T>& ep, T* y, Workspace<T>& ws, int worker, const T* packed, T* means) {
  const Index oh = g.out_h(in_h), cout = g.out_channels;
  const Slice whole{0, oh, 0, cout};
  with_sums(ep, 1, cout, 0, cout, oh * g.out_w(in_w), ws, worker, means, [&](const Epilogue<T>& e) {
    conv_slice(algo, g, x, in_h, in_w, kernel, ldk, whole, e, y, static_cast<const T*>(nullptr), ws, worker, packed);
  });
}

/// A static Winograd layer's whole batch of small images (winograd_spans_samples), channels
/// [s.c0, s.c1) of every sample: one winograd_slice whose GEMMs take the tiles of several
/// samples (tasks split the channels, so that each reads its part of the transform once).
///   u: the layer's kept transform of all Cout channels; x, y, ep.residual: the batch's
///   first sample (the others after it); means: PostOps::means [n, Cout] or null (the slice's
///   channels written).
template <typename T>
void winograd_batch(const ConvGeometry& g, const T* x, Index n, Index in_h, Index in_w, const T* u, const Slice& s,
                    const Epilogue<T>& ep, T* y, Workspace<T>& ws, int worker, T* means) {
  const Index cout = g.out_channels;
  with_sums(ep, n, cout, s.c0, s.c1, g.out_h(in_h) * g.out_w(in_w), ws, worker, means, [&](const Epilogue<T>& e) {
    winograd_slice(g, x, in_h, in_w, u, s, e, y, ws, worker, n, 0, g.out_channels);
  });
}

}  // namespace detail
}  // namespace dynconv
