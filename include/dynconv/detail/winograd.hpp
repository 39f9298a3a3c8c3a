// Winograd F(4x4, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
// CVPR 2016) for 3x3 convolutions with stride 1, dilation 1 and one group, in NHWC.
//
// Each 4x4 tile of output pixels is computed from the 6x6 input patch under it:
//   Y = A^T [ (G g G^T) (.) (B^T d B) ] A      (per input/output channel pair, (.) elementwise)
// with the interpolation points 0, +-1, +-2 and infinity:
//   B^T = [4  0 -5  0 1 0]   G = [ 1/4     0     0 ]   A^T = [1 1  1 1  1 0]
//         [0 -4 -4  1 1 0]       [-1/6  -1/6  -1/6 ]         [0 1 -1 2 -2 0]
//         [0  4 -4 -1 1 0]       [-1/6   1/6  -1/6 ]         [0 1  1 4  4 0]
//         [0 -2 -1  2 1 0]       [1/24  1/12   1/6 ]         [0 1 -1 8 -8 1]
//         [0  2 -1 -2 1 0]       [1/24 -1/12   1/6 ]
//         [0  4  0 -5 0 1]       [ 0     0      1  ]
// Summing over input channels turns the elementwise products into 36 GEMMs, one per point xi
// of the 6x6 transform: M[xi] [tiles, Cout] = V[xi] [tiles, Cin] x U[xi] [Cin, Cout], 36
// multiply-adds per channel pair and tile where direct convolution spends 144 (4x fewer).
//
// Data: U = winograd_kernel() of the packed kernel ([kh][kw][Cin][Cout], Im2colGemm's layout):
// 36 matrices [Cin, Cout] already in the GEMM's packed layout (no GEMM packs them again); V
// (input tiles) and M (GEMM results) are built per block of tile rows in the worker's scratch,
// sized to stay in the L2 cache; a static layer's batch of small images takes blocks of tile
// rows across samples, in L3, so that each GEMM has enough rows. All transforms are vectorised across
// channels (NHWC keeps every pixel's channels contiguous) and compiled for the kernel set in use.
#pragma once
#include <dynconv/detail/internal_check.hpp>

#include <dynconv/conv_geometry.hpp>
#include <dynconv/detail/epilogue.hpp>
#include <dynconv/detail/gemm.hpp>
#include <dynconv/detail/packing.hpp>
#include <dynconv/runtime.hpp>

#include <algorithm>

namespace dynconv {
namespace detail {

/// Points of the 6x6 transform: one GEMM each.
constexpr Index kWinogradPoints = 36;
/// Output tile side.
constexpr Index kWinogradTile = 4;
/// Below this many output pixels (22x22) a Winograd layer runs as Im2colGemm (the same packed
/// kernel), unless it is static and its batch has kWinogradMinBatchTiles tiles. The transform is 4x the kernel's size: a dynamic layer makes it per sample, and
/// too few tile rows do not amortise that (bench_conv, Intel Xeon, one thread, batch 1:
/// ResNet-18's 3x3 at 56x56, 196 tiles, 1.8x and 28x28, 49 tiles, 1.5x faster than
/// Im2colGemm, 14x14, 16 tiles, 1.7x slower). A static layer keeps its transform, and alone
/// runs 14x14 faster with it (0.7x), but a whole model pass then streams 4x the kernel's bytes
/// from memory: static ResNet-18 measured 5-8% slower at batch 1 with 196 pixels as the bound.
constexpr Index kWinogradMinPixels = 484;
/// A static layer (its transform kept) with fewer output pixels runs Winograd over a batch
/// of at least this many tiles, its GEMMs over the tiles of several samples at once
/// (winograd_slice with samples > 1): per sample, 14x14 has 16 tiles and 7x7 only 4, too few
/// rows for a GEMM to amortise reading the transform (36 x Cin x Cout values, from L3 or
/// memory). bench_conv, AMD EPYC Zen 5, one thread, batch 8 (32 and 128 tiles): ResNet-18's
/// 7x7 512-channel layer 8.8 -> 4.6-6.0 ms, its 14x14 256-channel one 8.5 -> 3.9 ms against
/// Im2colGemm. Per sample (no batch), 7x7 ran 1.3x slower than Im2colGemm.
constexpr Index kWinogradMinBatchTiles = 32;
/// Bytes of V and M per block of tile rows (both stay in a core's L2 cache).
constexpr Index kWinogradBlockBytes = Index(1) << 20;
/// The same when the blocks span samples: V and M then live in L3, and a block of 8 MiB takes
/// a whole batch of 8 7x7 images (one pass over the 512-channel transform, 38 MB, from memory;
/// 4 MiB measured 6.0 ms there, 8 and 16 MiB 4.6 and 4.8), or 7 of 8 14x14 images at 256
/// channels.
constexpr Index kWinogradBatchBlockBytes = Index(8) << 20;

/// Values of the transformed kernel U of `cols` output channels: 36 packed [cin, cols]
/// matrices (the GEMM kernels' PackedLayout, padding included).
template <typename T>
Index winograd_kernel_size(Index cin, Index cols) {
  return kWinogradPoints * gemm_kernels<T>().packed.size(cin, cols);
}

/// 4x4 output tiles of one sample's out_h x out_w output.
inline Index winograd_tiles(Index out_h, Index out_w) {
  return ((out_h + kWinogradTile - 1) / kWinogradTile) * ((out_w + kWinogradTile - 1) / kWinogradTile);
}

/// Whether a Winograd layer's output is small enough for its GEMMs to take the tiles of
/// several samples (winograd_slice with samples > 1): fewer than kWinogradMinPixels pixels.
inline bool winograd_spans_samples(Index out_h, Index out_w) { return out_h * out_w < kWinogradMinPixels; }

/// The algorithm a layer of algorithm `algo` runs for an output of out_h x out_w, where
/// `samples` samples share one kernel (a static layer's batch; 1 for a dynamic layer, whose
/// samples each have their own): Winograd layers with fewer than kWinogradMinPixels output
/// pixels run as Im2colGemm unless the samples have kWinogradMinBatchTiles tiles together.
inline ConvAlgorithm run_algorithm(ConvAlgorithm algo, Index out_h, Index out_w, Index samples = 1) {
  if (algo == ConvAlgorithm::Winograd && winograd_spans_samples(out_h, out_w) &&
      (samples < 2 || samples * winograd_tiles(out_h, out_w) < kWinogradMinBatchTiles))
    return ConvAlgorithm::Im2colGemm;
  return algo;
}

/// Vector lanes of the transforms' channel loops: 64 bytes (one AVX-512 register).
template <typename T>
constexpr Index winograd_lanes() {
  return Index(64 / sizeof(T));
}

/// dst[0:L] = src[0:n], then zeros (n <= L; a plain vector copy when n == L).
template <typename T, Index L>
inline void load_lanes(const T* __restrict src, Index n, T* __restrict dst) {
  if (n == L) {
    for (Index l = 0; l < L; ++l) dst[l] = src[l];
  } else {
    for (Index l = 0; l < L; ++l) dst[l] = l < n ? src[l] : T(0);
  }
}

/// G z for three vectors of L lanes (z[i] at z + i * zs), into out[r] (r < 6) at out + r * os.
template <typename T, Index L>
inline void winograd_g(const T* __restrict z, Index zs, T* __restrict out, Index os) {
  const T c4 = T(1) / T(4), c6 = T(1) / T(6), c12 = T(1) / T(12), c24 = T(1) / T(24);
  for (Index l = 0; l < L; ++l) {
    const T g0 = z[l], g1 = z[zs + l], g2 = z[2 * zs + l];
    out[l] = c4 * g0;
    out[os + l] = -c6 * (g0 + g1 + g2);
    out[2 * os + l] = -c6 * (g0 - g1 + g2);
    out[3 * os + l] = c24 * g0 + c12 * g1 + c6 * g2;
    out[4 * os + l] = c24 * g0 - c12 * g1 + c6 * g2;
    out[5 * os + l] = g2;
  }
}

/// U[xi][ci][j] = (G g G^T)[xi] for input channels ci in [ci0, ci1) and output channels
/// j < cols, where g is the 3x3 kernel of ci and j in `kernel` (Im2colGemm's packing from the
/// first channel: row (i*3 + j')*cin + ci, leading dimension ldk). U[xi] is a [cin, cols]
/// matrix in `layout` at u + xi * layout.size(cin, cols), its padding columns zeroed, so each
/// GEMM reads it as packed. Vectorised across output channels: a vector of L lanes starts at a
/// multiple of L, inside one panel (the panels are multiples of 64 bytes).
template <typename T>
void winograd_kernel_loops(const PackedLayout& layout, Index ci0, Index ci1, Index cin, const T* __restrict kernel,
                           Index ldk, Index cols, T* __restrict u) {
  constexpr Index L = winograd_lanes<T>();
  const Index point = layout.size(cin, cols), width = layout.stride(cols);
  alignas(64) T g[9 * L];
  alignas(64) T t[18 * L];
  alignas(64) T w[36 * L];
  for (Index ci = ci0; ci < ci1; ++ci)
    for (Index j = 0; j < width; j += L) {
      const Index n = std::max<Index>(0, std::min(L, cols - j));
      for (Index tap = 0; tap < 9; ++tap) load_lanes<T, L>(kernel + (tap * cin + ci) * ldk + j, n, g + tap * L);
      // t = G g along the kernel's rows (column c of g: taps c, 3 + c, 6 + c), then U = t G^T.
      for (Index c = 0; c < 3; ++c) winograd_g<T, L>(g + c * L, 3 * L, t + c * L, 3 * L);
      for (Index r = 0; r < 6; ++r) winograd_g<T, L>(t + r * 3 * L, L, w + r * 6 * L, L);
      // Padded layouts take whole vectors (zeros past cols); row-major takes the n lanes.
      const Index stored = layout.nr ? L : n;
      const Index at = layout.offset(cin, cols, ci, j);
      for (Index xi = 0; xi < kWinogradPoints; ++xi) {
        T* dst = u + xi * point + at;
        const T* src = w + xi * L;
        if (stored == L) {
          for (Index l = 0; l < L; ++l) dst[l] = src[l];
        } else {
          for (Index l = 0; l < stored; ++l) dst[l] = src[l];
        }
      }
    }
}

/// winograd_kernel_loops compiled for the kernel set in use, in its GEMM's PackedLayout.
template <typename T>
void winograd_kernel(Index ci0, Index ci1, Index cin, const T* kernel, Index ldk, Index cols, T* u) {
  const PackedLayout layout = gemm_kernels<T>().packed;
  run_for_kernel_isa([&] { winograd_kernel_loops(layout, ci0, ci1, cin, kernel, ldk, cols, u); });
}

/// B^T z for six vectors of L lanes (z[a] at z + a * zs), into out[r] at out + r * os.
template <typename T, Index L>
inline void winograd_bt(const T* __restrict z, Index zs, T* __restrict out, Index os) {
  for (Index l = 0; l < L; ++l) {
    const T z0 = z[l], z1 = z[zs + l], z2 = z[2 * zs + l], z3 = z[3 * zs + l], z4 = z[4 * zs + l], z5 = z[5 * zs + l];
    out[l] = T(4) * z0 - T(5) * z2 + z4;
    out[os + l] = -T(4) * (z1 + z2) + z3 + z4;
    out[2 * os + l] = T(4) * (z1 - z2) - z3 + z4;
    out[3 * os + l] = T(2) * (z3 - z1) - z2 + z4;
    out[4 * os + l] = T(2) * (z1 - z3) - z2 + z4;
    out[5 * os + l] = T(4) * z1 - T(5) * z3 + z5;
  }
}

/// A^T m for six vectors of L lanes (m[a] at m + a * ms), into out[r] (r < 4) at out + r * os.
template <typename T, Index L>
inline void winograd_at(const T* __restrict m, Index ms, T* __restrict out, Index os) {
  for (Index l = 0; l < L; ++l) {
    const T m0 = m[l], m1 = m[ms + l], m2 = m[2 * ms + l], m3 = m[3 * ms + l], m4 = m[4 * ms + l], m5 = m[5 * ms + l];
    const T s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
    out[l] = m0 + s12 + s34;
    out[os + l] = d12 + T(2) * d34;
    out[2 * os + l] = s12 + T(4) * s34;
    out[3 * os + l] = d12 + T(8) * d34 + m5;
  }
}

/// The geometry of one slice's tiles: output rows [r0, r1) of each sample in tile rows of 4
/// from r0 (tile_rows per sample; tile row q is row q % tile_rows of sample q / tile_rows),
/// tile columns of 4 from 0; the samples' outputs are out_h x out_w.
struct WinogradTiles {
  Index r0, r1, out_h, out_w, tiles_w, tile_rows;
};

/// V[xi][t][c] (point stride vs, tile stride ldv) = (B^T d B)[xi] for the tiles of tile rows
/// [tr0, tr1) of `wt` (t counted from the block's first tile), every input channel, from x
/// (the first sample [H, W, Cin], the others after it); lanes from cin up to a whole vector are
/// written as zeros.
template <typename T>
void winograd_input_loops(const ConvGeometry& g, const T* x, Index in_h, Index in_w, const WinogradTiles& wt, Index tr0,
                          Index tr1, T* v, Index ldv, Index vs) {
  constexpr Index L = winograd_lanes<T>();
  const Index cin = g.in_channels;
  alignas(64) T d[36 * L];
  alignas(64) T w[36 * L];
  Index t = 0;
  for (Index q = tr0; q < tr1; ++q)
    for (Index tc = 0; tc < wt.tiles_w; ++tc, ++t) {
      const T* xs = x + q / wt.tile_rows * in_h * in_w * cin;
      const Index ih0 = wt.r0 + q % wt.tile_rows * kWinogradTile - g.pad_h, iw0 = tc * kWinogradTile - g.pad_w;
      const T* src[36];
      for (Index a = 0; a < 6; ++a)
        for (Index b = 0; b < 6; ++b) {
          const Index ih = ih0 + a, iw = iw0 + b;
          src[a * 6 + b] = ih >= 0 && ih < in_h && iw >= 0 && iw < in_w ? xs + (ih * in_w + iw) * cin : nullptr;
        }
      for (Index c = 0; c < cin; c += L) {
        const Index n = std::min(L, cin - c);
        for (Index p = 0; p < 36; ++p) {
          if (src[p]) load_lanes<T, L>(src[p] + c, n, d + p * L);
          else std::fill(d + p * L, d + (p + 1) * L, T(0));
        }
        // Columns first (B^T d: along a), then rows (along b), straight into V.
        for (Index b = 0; b < 6; ++b) winograd_bt<T, L>(d + b * L, 6 * L, w + b * L, 6 * L);
        for (Index r = 0; r < 6; ++r) winograd_bt<T, L>(w + r * 6 * L, L, v + r * 6 * vs + t * ldv + c, vs);
      }
    }
}

/// Y = A^T M A (+ bias) for the tiles of tile rows [tr0, tr1) of `wt`, channels [0, cols) of M
/// (point stride ms, tile stride ldm) into y (the first sample's output, Cout channels, at the
/// slice's first channel; the others after it), cropped to rows < wt.r1 and columns < wt.out_w.
template <typename T>
void winograd_output_loops(const WinogradTiles& wt, Index tr0, Index tr1, const T* m, Index ldm, Index ms, Index cols,
                           const T* bias, T* y, Index cout) {
  constexpr Index L = winograd_lanes<T>();
  alignas(64) T mm[36 * L];
  alignas(64) T w[24 * L];
  alignas(64) T o[16 * L];
  Index t = 0;
  for (Index q = tr0; q < tr1; ++q)
    for (Index tc = 0; tc < wt.tiles_w; ++tc, ++t) {
      T* ys = y + q / wt.tile_rows * wt.out_h * wt.out_w * cout;
      const Index oy0 = wt.r0 + q % wt.tile_rows * kWinogradTile, ox0 = tc * kWinogradTile;
      const Index rows = std::min(kWinogradTile, wt.r1 - oy0), cols_px = std::min(kWinogradTile, wt.out_w - ox0);
      for (Index c = 0; c < cols; c += L) {
        const Index n = std::min(L, cols - c);
        for (Index p = 0; p < 36; ++p) load_lanes<T, L>(m + p * ms + t * ldm + c, n, mm + p * L);
        // A^T M along the point rows (6 -> 4), then along the columns.
        for (Index b = 0; b < 6; ++b) winograd_at<T, L>(mm + b * L, 6 * L, w + b * L, 6 * L);
        for (Index r = 0; r < 4; ++r) winograd_at<T, L>(w + r * 6 * L, L, o + r * 4 * L, L);
        for (Index i = 0; i < rows; ++i)
          for (Index j = 0; j < cols_px; ++j) {
            const T* op = o + (i * 4 + j) * L;
            T* yp = ys + ((oy0 + i) * wt.out_w + ox0 + j) * cout + c;
            if (bias) {
              for (Index l = 0; l < n; ++l) yp[l] = op[l] + bias[c + l];
            } else {
              for (Index l = 0; l < n; ++l) yp[l] = op[l];
            }
          }
      }
    }
}

/// One slice of `samples` consecutive samples' convolution by Winograd F(4x4, 3x3) with its
/// epilogue (the same rows and channels of each; samples > 1: the slice spans all rows, and each
/// block of tile rows, so each GEMM, takes the tiles of several samples).
///   u: winograd_kernel()'s U of the slice's channels [s.c0, s.c1) (cols = s.c1 - s.c0), or
///   with u_cols > 0 of channels [0, u_cols), whose [s.c0, s.c1) the slice reads (s.c0 at a
///   panel of the GEMM's PackedLayout).
///   x: the first sample [H, W, Cin]; y: its output [Hout, Wout, Cout]; ep.residual: its
///   residual; ep.sums: Cout sums per sample. The other samples follow each.
///   block_rows: tile rows per block (0: as many as kWinogradBlockBytes, or with samples > 1
///   kWinogradBatchBlockBytes, hold; the tests set it to cut blocks inside samples).
template <typename T>
void winograd_slice(const ConvGeometry& g, const T* x, Index in_h, Index in_w, const T* u, const Slice& s,
                    const Epilogue<T>& ep, T* y, Workspace<T>& ws, int worker, Index samples = 1,
                    Index block_rows = 0, Index u_cols = 0) {
  constexpr Index L = winograd_lanes<T>();
  const Index oh = g.out_h(in_h), ow = g.out_w(in_w), cin = g.in_channels, cout = g.out_channels, cols = s.c1 - s.c0;
  eigen_assert(samples == 1 || (s.r0 == 0 && s.r1 == oh));
  const Index sample_rows = (s.r1 - s.r0 + kWinogradTile - 1) / kWinogradTile, tile_rows = samples * sample_rows;
  const WinogradTiles wt{s.r0, s.r1, oh, ow, (ow + kWinogradTile - 1) / kWinogradTile, sample_rows};
  const Index ldv = (cin + L - 1) / L * L, ldm = (cols + L - 1) / L * L;
  const Index row_bytes = kWinogradPoints * wt.tiles_w * (ldv + ldm) * Index(sizeof(T));
  const Index budget = samples > 1 ? kWinogradBatchBlockBytes : kWinogradBlockBytes;
  const Index block = std::min(tile_rows, block_rows > 0 ? block_rows : std::max<Index>(1, budget / row_bytes));
  const Index max_tiles = block * wt.tiles_w;
  T* v = ws.scratch(worker, Scratch::Columns, kWinogradPoints * max_tiles * ldv);
  T* m = ws.scratch(worker, Scratch::Tiles, kWinogradPoints * max_tiles * ldm);
  const GemmEpilogue<T> overwrite{};
  const bool finish = ep.act != Activation::Identity || ep.residual || ep.after != Activation::Identity;
  const PackedLayout& layout = gemm_kernels<T>().packed;
  eigen_assert(u_cols == 0 || (layout.starts_panel(s.c0) && s.c1 <= u_cols));
  const Index point = layout.size(cin, u_cols ? u_cols : cols), ldu = layout.stride(u_cols ? u_cols : cols);
  const Index u_c0 = u_cols ? s.c0 : 0, sample_size = oh * ow * cout;
  for (Index tr0 = 0; tr0 < tile_rows; tr0 += block) {
    const Index tr1 = std::min(tile_rows, tr0 + block), tiles = (tr1 - tr0) * wt.tiles_w;
    const Index vs = tiles * ldv, ms = tiles * ldm;
    run_for_kernel_isa([&] { winograd_input_loops(g, x, in_h, in_w, wt, tr0, tr1, v, ldv, vs); });
    for (Index xi = 0; xi < kWinogradPoints; ++xi)
      gemm_packed(tiles, cols, cin, v + xi * vs, ldv, u + xi * point, ldu, u_c0, m + xi * ms, ldm, ws, worker,
                  &overwrite);
    run_for_kernel_isa([&] {
      winograd_output_loops(wt, tr0, tr1, m, ldm, ms, cols, ep.bias ? ep.bias + s.c0 : nullptr, y + s.c0, cout);
      if (!finish && !ep.sums) return;
      // The block's rows, sample by sample.
      for (Index b = tr0 / sample_rows; b * sample_rows < tr1; ++b) {
        const Index q0 = std::max(tr0, b * sample_rows) - b * sample_rows;
        const Index q1 = std::min(tr1, (b + 1) * sample_rows) - b * sample_rows;
        const Index y0 = s.r0 + q0 * kWinogradTile, y1 = std::min(s.r1, s.r0 + q1 * kWinogradTile);
        const Index at = b * sample_size + y0 * ow * cout + s.c0;
        if (finish)
          finish_rows(y + at, cout, (y1 - y0) * ow, cols, ep.act, ep.residual ? ep.residual + at : nullptr, ep.after);
        if (ep.sums) add_column_sums(y + at, cout, (y1 - y0) * ow, cols, ep.sums + b * cout + s.c0);
      }
    });
  }
}

}  // namespace detail
}  // namespace dynconv
