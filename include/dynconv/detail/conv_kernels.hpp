// The convolution kernels: lean loops and Eigen GEMMs over raw NHWC buffers of ONE sample.
// No argument checks here (the operators validate once); eigen_assert guards debug builds.
//
// Packed weight layouts (produced by pack_weights below from PyTorch's [Cout, Cin/g, kh, kw]):
//   Pointwise, Im2colGemm  [g][kh][kw][Cin/g][Cout/g]: per group a row-major GEMM operand
//                          B_g [kh*kw*Cin/g, Cout/g] whose row order matches the im2col columns.
//   Depthwise              [kh][kw][C]: one contiguous channel vector per tap.
// Both hold exactly weight_size() values, so K packed kernels can be mixed elementwise.
#pragma once
#include <dynconv/detail/internal_check.hpp>

#include <dynconv/activation.hpp>
#include <dynconv/conv_geometry.hpp>
#include <dynconv/detail/exec.hpp>
#include <dynconv/detail/matrix.hpp>

#include <algorithm>
#include <vector>

namespace dynconv {
namespace detail {

/// Index of PyTorch weight element (co, ci, i, j) in the packed layout of `algo`.
inline Index packed_index(ConvAlgorithm algo, const ConvGeometry& g, Index co, Index ci, Index i,
                          Index j) {
  if (algo == ConvAlgorithm::Depthwise) return (i * g.kernel_w + j) * g.out_channels + co;
  const Index cin_g = g.in_per_group(), cout_g = g.out_per_group();
  const Index group = co / cout_g;
  const Index row = (i * g.kernel_w + j) * cin_g + ci;
  return group * (g.kernel_h * g.kernel_w * cin_g * cout_g) + row * cout_g + (co - group * cout_g);
}

/// PyTorch order [Cout, Cin/g, kh, kw] -> packed layout of `algo`.
template <typename T>
void pack_weights(ConvAlgorithm algo, const ConvGeometry& g, const T* torch_order, T* packed) {
  const Index cin_g = g.in_per_group();
  for (Index co = 0; co < g.out_channels; ++co)
    for (Index ci = 0; ci < cin_g; ++ci)
      for (Index i = 0; i < g.kernel_h; ++i)
        for (Index j = 0; j < g.kernel_w; ++j)
          packed[packed_index(algo, g, co, ci, i, j)] = *torch_order++;
}

/// Packed layout of `algo` -> PyTorch order [Cout, Cin/g, kh, kw].
template <typename T>
void unpack_weights(ConvAlgorithm algo, const ConvGeometry& g, const T* packed, T* torch_order) {
  const Index cin_g = g.in_per_group();
  for (Index co = 0; co < g.out_channels; ++co)
    for (Index ci = 0; ci < cin_g; ++ci)
      for (Index i = 0; i < g.kernel_h; ++i)
        for (Index j = 0; j < g.kernel_w; ++j)
          *torch_order++ = packed[packed_index(algo, g, co, ci, i, j)];
}

/// What follows the convolution of a slice, fused into it: y = act(conv + bias) + residual.
template <typename T>
struct Epilogue {
  const T* bias = nullptr;      // [Cout] (absolute channel index) or null
  Activation act = Activation::Identity;
  const T* residual = nullptr;  // laid out as the sample's output [Hout, Wout, Cout], or null
  Activation after = Activation::Identity;  // applied last (ResNet: ReLU after the shortcut)
};

/// The part of one sample's output a kernel call computes: output rows [r0, r1), channels
/// [c0, c1). Channel slices need groups == 1 or a depthwise convolution.
struct Slice {
  Index r0, r1, c0, c1;
};

/// y[p, c0:c1] = bias (+ residual when there is no activation to apply first), p in `pixels`.
template <typename T>
void epilogue_begin(const Epilogue<T>& ep, Index pixels, Index cout, Index c0, Index c1, Index p0, T* y) {
  const bool add_residual = ep.residual && ep.act == Activation::Identity;
  for (Index p = p0; p < p0 + pixels; ++p) {
    T* __restrict o = y + p * cout;
    const T* __restrict r = add_residual ? ep.residual + p * cout : nullptr;
    if (ep.bias && r)
      for (Index c = c0; c < c1; ++c) o[c] = ep.bias[c] + r[c];
    else if (ep.bias)
      for (Index c = c0; c < c1; ++c) o[c] = ep.bias[c];
    else if (r)
      for (Index c = c0; c < c1; ++c) o[c] = r[c];
    else
      for (Index c = c0; c < c1; ++c) o[c] = T(0);
  }
}

template <typename T, typename F>
void map_rows(Index pixels, Index cout, Index c0, Index c1, Index p0, T* y, const T* residual, F f) {
  for (Index p = p0; p < p0 + pixels; ++p) {
    T* __restrict o = y + p * cout;
    if (residual) {
      const T* __restrict r = residual + p * cout;
      for (Index c = c0; c < c1; ++c) o[c] = f(o[c]) + r[c];
    } else {
      for (Index c = c0; c < c1; ++c) o[c] = f(o[c]);
    }
  }
}

/// y = a(y) (+ residual) over the slice's rows.
template <typename T>
void activate_rows(Activation a, Index pixels, Index cout, Index c0, Index c1, Index p0, T* y, const T* residual) {
  switch (a) {
    case Activation::Identity: return;
    case Activation::ReLU: return map_rows(pixels, cout, c0, c1, p0, y, residual, ReluOf<T>());
    case Activation::ReLU6: return map_rows(pixels, cout, c0, c1, p0, y, residual, Relu6Of<T>());
    case Activation::HardSigmoid: return map_rows(pixels, cout, c0, c1, p0, y, residual, HardSigmoidOf<T>());
    case Activation::HardSwish: return map_rows(pixels, cout, c0, c1, p0, y, residual, HardSwishOf<T>());
  }
}

/// Applies the activation, adds the residual (unless epilogue_begin already did), then the
/// final activation.
template <typename T>
void epilogue_end(const Epilogue<T>& ep, Index pixels, Index cout, Index c0, Index c1, Index p0, T* y) {
  activate_rows(ep.act, pixels, cout, c0, c1, p0, y, ep.residual);
  activate_rows(ep.after, pixels, cout, c0, c1, p0, y, static_cast<const T*>(nullptr));
}

/// im2col of output rows [r0, r1) of group `grp`: [(r1-r0)*Wout, kh*kw*Cin/g], zeros where the
/// window leaves the image. A strided 1x1 convolution gathers its pixels the same way.
template <typename T>
void im2col(const ConvGeometry& g, const T* x, Index in_h, Index in_w, Index r0, Index r1, Index grp, T* col) {
  const Index ow = g.out_w(in_w), cin = g.in_channels, cin_g = g.in_per_group();
  // With one group and no horizontal dilation, a window row inside the image is kw*Cin
  // contiguous input values: one copy instead of kw (a 3-channel stem has 3 values a tap).
  const bool rows_contiguous = g.groups == 1 && g.dilation_w == 1;
  const Index row_len = g.kernel_w * cin;
  // Plain loops, not std::copy: the runs are short, and a memmove call costs more than the copy.
  for (Index r = r0; r < r1; ++r)
    for (Index c = 0; c < ow; ++c) {
      const Index iw0 = c * g.stride_w - g.pad_w;
      const bool inside_w = iw0 >= 0 && iw0 + g.kernel_w <= in_w;
      for (Index i = 0; i < g.kernel_h; ++i) {
        const Index ih = r * g.stride_h - g.pad_h + i * g.dilation_h;
        if (ih < 0 || ih >= in_h) {
          for (Index k = 0; k < g.kernel_w * cin_g; ++k) col[k] = T(0);
          col += g.kernel_w * cin_g;
          continue;
        }
        if (rows_contiguous && inside_w) {
          const T* __restrict p = x + (ih * in_w + iw0) * cin;
          for (Index k = 0; k < row_len; ++k) col[k] = p[k];
          col += row_len;
          continue;
        }
        for (Index j = 0; j < g.kernel_w; ++j, col += cin_g) {
          const Index iw = iw0 + j * g.dilation_w;
          if (iw < 0 || iw >= in_w) {
            for (Index k = 0; k < cin_g; ++k) col[k] = T(0);
          } else {
            const T* __restrict p = x + (ih * in_w + iw) * cin + grp * cin_g;
            for (Index k = 0; k < cin_g; ++k) col[k] = p[k];
          }
        }
      }
    }
}

/// Whether the algorithm reads its GEMM operand from an im2col buffer (not x itself).
inline bool needs_columns(ConvAlgorithm algo, const ConvGeometry& g) {
  if (algo == ConvAlgorithm::Depthwise) return false;
  if (algo == ConvAlgorithm::Pointwise) return g.stride_h != 1 || g.stride_w != 1;
  return true;
}

/// Depthwise slice, vectorised across channels with Eigen's packets: for one output pixel,
/// kBlock packets of channels accumulate in registers over all taps (independent FMA chains),
/// then single packets, then a scalar tail. kernel points at tap 0, channel c0; ldk is the
/// stride between taps.
template <typename T>
void depthwise_slice(const ConvGeometry& g, const T* x, Index in_h, Index in_w, const T* kernel, Index ldk,
                     const Slice& s, const Epilogue<T>& ep, T* y) {
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  constexpr Index kLanes = Eigen::internal::packet_traits<T>::size;
  constexpr Index kBlock = 4;
  const Index ow = g.out_w(in_w), ch = g.out_channels;
  const Index c0 = s.c0, c1 = s.c1;
  for (Index r = s.r0; r < s.r1; ++r) {
    const Index ih0 = r * g.stride_h - g.pad_h;
    // The taps whose input row is inside the image.
    const Index i_begin = std::max<Index>(0, (-ih0 + g.dilation_h - 1) / g.dilation_h);
    const Index i_end = std::min<Index>(g.kernel_h, (in_h - ih0 + g.dilation_h - 1) / g.dilation_h);
    for (Index c = 0; c < ow; ++c) {
      const Index iw0 = c * g.stride_w - g.pad_w;
      const Index j_begin = std::max<Index>(0, (-iw0 + g.dilation_w - 1) / g.dilation_w);
      const Index j_end = std::min<Index>(g.kernel_w, (in_w - iw0 + g.dilation_w - 1) / g.dilation_w);
      T* out = y + (r * ow + c) * ch;
      auto init = [&](Index k) {
        return ep.bias ? Eigen::internal::ploadu<Packet>(ep.bias + k) : Eigen::internal::pset1<Packet>(T(0));
      };
      Index cb = c0;
      for (; cb + kBlock * kLanes <= c1; cb += kBlock * kLanes) {
        Packet acc[kBlock];
        for (Index v = 0; v < kBlock; ++v) acc[v] = init(cb + v * kLanes);
        for (Index i = i_begin; i < i_end; ++i) {
          const T* in_row = x + ((ih0 + i * g.dilation_h) * in_w) * ch + cb;
          const T* w_row = kernel + i * g.kernel_w * ldk + (cb - c0);
          for (Index j = j_begin; j < j_end; ++j) {
            const T* in = in_row + (iw0 + j * g.dilation_w) * ch;
            const T* w = w_row + j * ldk;
            for (Index v = 0; v < kBlock; ++v)
              acc[v] = Eigen::internal::pmadd(Eigen::internal::ploadu<Packet>(in + v * kLanes),
                                              Eigen::internal::ploadu<Packet>(w + v * kLanes), acc[v]);
          }
        }
        for (Index v = 0; v < kBlock; ++v) Eigen::internal::pstoreu(out + cb + v * kLanes, acc[v]);
      }
      for (; cb + kLanes <= c1; cb += kLanes) {
        Packet acc = init(cb);
        for (Index i = i_begin; i < i_end; ++i)
          for (Index j = j_begin; j < j_end; ++j)
            acc = Eigen::internal::pmadd(
                Eigen::internal::ploadu<Packet>(x + ((ih0 + i * g.dilation_h) * in_w + iw0 + j * g.dilation_w) * ch + cb),
                Eigen::internal::ploadu<Packet>(kernel + (i * g.kernel_w + j) * ldk + (cb - c0)), acc);
        Eigen::internal::pstoreu(out + cb, acc);
      }
      for (; cb < c1; ++cb) {
        T acc = ep.bias ? ep.bias[cb] : T(0);
        for (Index i = i_begin; i < i_end; ++i)
          for (Index j = j_begin; j < j_end; ++j)
            acc += x[((ih0 + i * g.dilation_h) * in_w + iw0 + j * g.dilation_w) * ch + cb] *
                   kernel[(i * g.kernel_w + j) * ldk + (cb - c0)];
        out[cb] = acc;
      }
    }
    Epilogue<T> tail = ep;
    if (ep.act == Activation::Identity && ep.residual) {
      // No activation: the residual still has to be added.
      for (Index p = r * ow; p < (r + 1) * ow; ++p)
        for (Index k = c0; k < c1; ++k) y[p * ch + k] += ep.residual[p * ch + k];
      tail.residual = nullptr;
    }
    epilogue_end(tail, ow, ch, c0, c1, r * ow, y);
  }
}

/// One slice of one sample's convolution with its fused epilogue.
///   x: the sample [H, W, Cin]; y: the sample's output [Hout, Wout, Cout].
///   kernel, ldk: the packed kernel; for groups == 1 (and depthwise) it points at column
///     (channel) s.c0 and ldk is its row stride; for groups > 1 it is the whole packed kernel
///     and the slice must span all channels.
///   columns: this sample's whole im2col matrix when the caller built it already (a batch
///     shared across channel slices), else null and the slice builds its own rows.
template <typename T>
void conv_slice(ConvAlgorithm algo, const ConvGeometry& g, const T* x, Index in_h, Index in_w,
                const T* kernel, Index ldk, const Slice& s, const Epilogue<T>& ep, T* y,
                const T* columns, Workspace<T>& ws, int worker) {
  if (algo == ConvAlgorithm::Depthwise) return depthwise_slice(g, x, in_h, in_w, kernel, ldk, s, ep, y);
  const Index ow = g.out_w(in_w), cin = g.in_channels, cout = g.out_channels;
  const Index p0 = s.r0 * ow, pixels = (s.r1 - s.r0) * ow;
  const Index cin_g = g.in_per_group(), cout_g = g.out_per_group();
  const Index depth = g.kernel_h * g.kernel_w * cin_g;
  epilogue_begin(ep, pixels, cout, s.c0, s.c1, p0, y);
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
    gemm(pixels, s.c1 - s.c0, depth, a, lda, kernel, ldk, y + p0 * cout + s.c0, cout, ws, worker);
  } else {
    eigen_assert(s.c0 == 0 && s.c1 == cout && !columns);
    T* col = ws.scratch(worker, Scratch::Columns, pixels * depth);
    for (Index grp = 0; grp < g.groups; ++grp) {
      im2col(g, x, in_h, in_w, s.r0, s.r1, grp, col);
      gemm(pixels, cout_g, depth, col, depth, kernel + grp * depth * cout_g, cout_g,
           y + p0 * cout + grp * cout_g, cout, ws, worker);
    }
  }
  epilogue_end(ep, pixels, cout, s.c0, s.c1, p0, y);
}

/// o[r, 0:len] (+)= sum_{g < G} w[g] * s[g][r, 0:len] for `rows` rows (source row stride ls,
/// output row stride lo), in one pass: G loads and one store per element.
template <int G, bool First, typename T>
void mix_group(const T* const* s, const T* w, Index rows, Index len, Index ls, T* o, Index lo) {
  const T w0 = w[0], w1 = G > 1 ? w[1] : T(0), w2 = G > 2 ? w[2] : T(0), w3 = G > 3 ? w[3] : T(0);
  for (Index r = 0; r < rows; ++r) {
    const T* __restrict s0 = s[0] + r * ls;
    const T* __restrict s1 = s[G > 1 ? 1 : 0] + r * ls;
    const T* __restrict s2 = s[G > 2 ? 2 : 0] + r * ls;
    const T* __restrict s3 = s[G > 3 ? 3 : 0] + r * ls;
    T* __restrict out = o + r * lo;
    for (Index i = 0; i < len; ++i) {
      T v = First ? w0 * s0[i] : out[i] + w0 * s0[i];
      if (G > 1) v += w1 * s1[i];
      if (G > 2) v += w2 * s2[i];
      if (G > 3) v += w3 * s3[i];
      out[i] = v;
    }
  }
}

/// o[r, 0:len] = sum_k pi[k] * (src + k*stride)[r, 0:len] for `rows` rows (source row stride
/// ls, output row stride lo), the kernels taken four at a time.
template <typename T>
void mix(const T* src, Index stride, Index kernels, const T* pi, Index rows, Index len, Index ls, T* o,
         Index lo) {
  for (Index k = 0; k < kernels; k += 4) {
    const T* s[4] = {src + k * stride, src + std::min(k + 1, kernels - 1) * stride,
                     src + std::min(k + 2, kernels - 1) * stride, src + std::min(k + 3, kernels - 1) * stride};
    const T* w = pi + k;
    const bool first = k == 0;
    switch (std::min<Index>(4, kernels - k)) {
      case 1: first ? mix_group<1, true>(s, w, rows, len, ls, o, lo) : mix_group<1, false>(s, w, rows, len, ls, o, lo); break;
      case 2: first ? mix_group<2, true>(s, w, rows, len, ls, o, lo) : mix_group<2, false>(s, w, rows, len, ls, o, lo); break;
      case 3: first ? mix_group<3, true>(s, w, rows, len, ls, o, lo) : mix_group<3, false>(s, w, rows, len, ls, o, lo); break;
      default: first ? mix_group<4, true>(s, w, rows, len, ls, o, lo) : mix_group<4, false>(s, w, rows, len, ls, o, lo); break;
    }
  }
}

/// out[r, 0:width] = sum_k pi[k] * src_k[r, c0:c0+width] for the K row-major [rows, cols]
/// matrices src_k = src + k*rows*cols: mixes K packed kernels (or a channel slice of them),
/// reading each source once; whole kernels in blocks that keep the output in L1.
template <typename T>
void aggregate(const T* src, Index kernels, Index rows, Index cols, const T* pi, Index c0, Index width,
               T* out) {
  const Index size = rows * cols;
  if (c0 == 0 && width == cols) {
    constexpr Index kBlock = 2048;
    for (Index start = 0; start < size; start += kBlock)
      mix(src + start, size, kernels, pi, 1, std::min(kBlock, size - start), 0, out + start, 0);
    return;
  }
  mix(src + c0, size, kernels, pi, rows, width, cols, out, width);
}

/// The mixes of n samples at once: out[b][r, 0:width] = sum_k pi[b, k] * src_k[r, c0:c0+width].
/// The K sources are read from memory once for all n samples (a block of rows at a time stays
/// in L1 while the n mixes read it).
template <typename T>
void aggregate_batch(const T* src, Index kernels, Index rows, Index cols, const T* pi, Index n, Index c0,
                     Index width, T* out) {
  const Index size = rows * cols;
  const Index block = std::max<Index>(1, 2048 / std::max<Index>(width, 1));
  for (Index r0 = 0; r0 < rows; r0 += block) {
    const Index len = std::min(block, rows - r0);
    for (Index b = 0; b < n; ++b)
      mix(src + r0 * cols + c0, size, kernels, pi + b * kernels, len, width, cols, out + (b * rows + r0) * width,
          width);
  }
}

/// The mixed-kernel GEMM of a batch, with the mix fused into Eigen's packing:
///   C_b[P, c0:c1] += A_b[P, depth] * (sum_k pi[b, k] W_k)[depth, c0:c1]   for b in [0, n)
/// W_k = src + k*depth*cols (row-major [depth, cols]), A_b = a + b*a_stride (row-major
/// [P, depth]), C_b = c + b*c_stride (row-major, leading dimension ldc). For every cache block
/// of the kernels, the K source blocks are packed once for the whole batch and mixed into the
/// packed block each sample's micro-kernel reads: the sources cross the memory bus once per
/// batch and no mixed kernel is ever written out. Packing is a permutation, so mixing packed
/// blocks is mixing kernels. Meant for few pixels (late layers): all samples' packed A panels
/// of one depth block are kept.
template <typename T>
void mixed_gemm_batch(const T* src, Index kernels, Index depth, Index cols, const T* pi, Index n, Index c0,
                      Index c1, const T* a, Index a_stride, Index pixels, T* c, Index c_stride, Index ldc,
                      Workspace<T>& ws, int worker) {
  namespace ei = Eigen::internal;
  using Traits = ei::gebp_traits<T, T>;
  using Mapper = ei::const_blas_data_mapper<T, Index, Eigen::ColMajor>;
  using ResMapper = ei::blas_data_mapper<T, Index, Eigen::ColMajor, Eigen::Unaligned, 1>;
  const Index rows = c1 - c0;
  if (rows <= 0 || pixels <= 0 || depth <= 0) return;
  Index kc = depth, mc = rows, nc = pixels;
  ei::computeProductBlockingSizes<T, T, 1, Index>(kc, mc, nc, Index(1));
  T* rhs = ws.scratch(worker, Scratch::PackB, n * kc * pixels);
  T* sources = ws.scratch(worker, Scratch::Sources, kernels * mc * kc);
  T* mixed = ws.scratch(worker, Scratch::PackA, mc * kc);
  ei::gemm_pack_lhs<T, Index, Mapper, Traits::mr, Traits::LhsProgress, typename Traits::LhsPacket4Packing,
                    Eigen::ColMajor>
      pack_lhs;
  ei::gemm_pack_rhs<T, Index, Mapper, Traits::nr, Eigen::ColMajor> pack_rhs;
  ei::gebp_kernel<T, T, Index, ResMapper, Traits::mr, Traits::nr, false, false> gebp;
  // In Eigen's column-major terms: C_b^T [c1-c0, P] += W^T [c1-c0, depth] * A_b^T [depth, P].
  for (Index k2 = 0; k2 < depth; k2 += kc) {
    const Index kcur = std::min(kc, depth - k2);
    for (Index b = 0; b < n; ++b)
      pack_rhs(rhs + b * kc * pixels, Mapper(a + b * a_stride, depth).getSubMapper(k2, 0), kcur, pixels);
    for (Index i2 = 0; i2 < rows; i2 += mc) {
      const Index mcur = std::min(mc, rows - i2);
      for (Index k = 0; k < kernels; ++k)
        pack_lhs(sources + k * mc * kc, Mapper(src + k * depth * cols + c0, cols).getSubMapper(i2, k2), kcur, mcur);
      for (Index b = 0; b < n; ++b) {
        mix(sources, mc * kc, kernels, pi + b * kernels, 1, mcur * kcur, 0, mixed, 0);
        gebp(ResMapper(c + b * c_stride + c0, ldc).getSubMapper(i2, 0), mixed, rhs + b * kc * pixels, mcur, kcur,
             pixels, T(1));
      }
    }
  }
}

/// Rows x columns of the packed kernel as a matrix whose columns are output channels (groups
/// == 1 or depthwise; for groups > 1 the columns are the channels of one group).
inline std::array<Index, 2> kernel_matrix(ConvAlgorithm algo, const ConvGeometry& g) {
  if (algo == ConvAlgorithm::Depthwise) return {g.kernel_h * g.kernel_w, g.out_channels};
  return {g.weight_size() / g.out_channels, g.out_channels};
}

/// Whether slices of this convolution may split the output channels.
inline bool channel_sliceable(ConvAlgorithm algo, const ConvGeometry& g) {
  return algo == ConvAlgorithm::Depthwise || g.groups == 1;
}

/// Channels [c0, c1) of part `part` of `parts`, in whole units of 16 channels.
inline std::array<Index, 2> channel_part(Index channels, Index parts, Index part) {
  constexpr Index kUnit = 16;
  const std::array<Index, 2> u = split_range((channels + kUnit - 1) / kUnit, parts, part);
  return {std::min(channels, u[0] * kUnit), std::min(channels, u[1] * kUnit)};
}

/// Part `part` of one sample's output split in `parts`: by channels when the convolution
/// allows it and the image has few rows (late layers: 7x7, 14x14), else by rows.
inline Slice slice_of(ConvAlgorithm algo, const ConvGeometry& g, Index out_h, Index parts, Index part) {
  if (parts == 1) return {0, out_h, 0, g.out_channels};
  if (channel_sliceable(algo, g) && out_h < 8 * parts) {
    const std::array<Index, 2> c = channel_part(g.out_channels, parts, part);
    return {0, out_h, c[0], c[1]};
  }
  const std::array<Index, 2> r = split_range(out_h, parts, part);
  return {r[0], r[1], 0, g.out_channels};
}

}  // namespace detail
}  // namespace dynconv
