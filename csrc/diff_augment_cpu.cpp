// diff_augment on the CPU, forward and backward (reference: diff_augment_ref in
// udd_fast/ops/diff_augment.py); the Python side computes the per-sample mean contrast needs.
#include <cmath>
#include <utility>
#include <vector>

#include "cpu_common.h"

namespace udd_fast {
namespace {

// The op a sample applies: -1 identity, 0..2 an op code, -2 an out-of-range choice (zero output).
inline int64_t sample_kind(const std::vector<int64_t>& ops, double op_col) {
  const int64_t nops = static_cast<int64_t>(ops.size());
  if (nops == 0) return IDENTITY;
  if (nops == 1) return ops[0];
  const int64_t op = static_cast<int64_t>(op_col);
  return (op >= 0 && op < nops) ? ops[op] : -2;
}

// Where output pixel (i, j) reads the colour-transformed image: up to 4 in-bounds taps (row, col,
// weight). Crop is an integer shift (one tap, zero fill); scale/rotate follow affine_grid +
// grid_sample (bilinear, zeros padding, align_corners=False).
template <typename acc_t>
inline int taps(int64_t kind, const acc_t* p, int64_t i, int64_t j, int64_t H, int64_t W,
                int64_t* ty, int64_t* tx, acc_t* tw) {
  if (kind == IDENTITY || kind == CROP) {
    int64_t y = i, x = j;
    if (kind == CROP) {
      y += static_cast<int64_t>(p[TX]);
      x += static_cast<int64_t>(p[TY]);
    }
    if (y < 0 || y >= H || x < 0 || x >= W) return 0;
    ty[0] = y; tx[0] = x; tw[0] = 1;
    return 1;
  }
  if (kind != SCALE && kind != ROTATE) return 0;
  const acc_t xb = static_cast<acc_t>(2 * j + 1) / W - 1, yb = static_cast<acc_t>(2 * i + 1) / H - 1;
  acc_t gx, gy;
  if (kind == SCALE) {
    gx = p[SCALE_X] * xb;
    gy = p[SCALE_Y] * yb;
  } else {
    const acc_t co = std::cos(p[ROT]), si = std::sin(p[ROT]);
    gx = co * xb - si * yb;
    gy = si * xb + co * yb;
  }
  const acc_t fx = ((gx + 1) * W - 1) / 2, fy = ((gy + 1) * H - 1) / 2;
  const acc_t x0f = std::floor(fx), y0f = std::floor(fy);
  const acc_t ax = fx - x0f, ay = fy - y0f;
  const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
  int k = 0;
  for (int dy = 0; dy < 2; ++dy) {
    for (int dx = 0; dx < 2; ++dx) {
      const int64_t y = y0 + dy, x = x0 + dx;
      if (y < 0 || y >= H || x < 0 || x >= W) continue;
      ty[k] = y; tx[k] = x;
      tw[k] = (dy ? ay : 1 - ay) * (dx ? ax : 1 - ax);
      ++k;
    }
  }
  return k;
}

inline bool in_cutout(int64_t i, int64_t j, int64_t r0, int64_t c0, int64_t cut_h, int64_t cut_w) {
  return i >= r0 && i < r0 + cut_h && j >= c0 && j < c0 + cut_w;
}

struct Spec {
  bool flip, color, cutout;
  std::vector<int64_t> ops;
  int64_t cut_h, cut_w;
};

template <typename scalar_t>
void diff_augment_fwd_impl(const scalar_t* x, const scalar_t* params, const int64_t* index, const scalar_t* mean,
                           scalar_t* out, int64_t N, int64_t C, int64_t H, int64_t W, const Spec& s) {
  const int64_t HW = H * W;
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    int64_t ty[4], tx[4];
    scalar_t tw[4], tbar[4];
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* p = params + NUM_PARAMS * index[n];
      const scalar_t* xn = x + n * C * HW;
      scalar_t* on = out + n * C * HW;
      const bool flip = s.flip && p[FLIP] > scalar_t(0.5);
      const int64_t kind = sample_kind(s.ops, static_cast<double>(p[OP]));
      const scalar_t b = p[BRIGHT], sat = p[SAT], con = p[CONTRAST];
      const scalar_t mx = s.color ? mean[n] : scalar_t(0);
      const int64_t r0 = static_cast<int64_t>(p[CUT_X]) - s.cut_h / 2;
      const int64_t c0 = static_cast<int64_t>(p[CUT_Y]) - s.cut_w / 2;
      for (int64_t i = 0; i < H; ++i) {
        for (int64_t j = 0; j < W; ++j) {
          int nk = 0;
          if (!(s.cutout && in_cutout(i, j, r0, c0, s.cut_h, s.cut_w))) nk = taps(kind, p, i, j, H, W, ty, tx, tw);
          for (int k = 0; k < nk; ++k) {
            if (flip) tx[k] = W - 1 - tx[k];  // taps index the flipped image; read x mirrored
            scalar_t acc = 0;
            if (s.color)
              for (int64_t c = 0; c < C; ++c) acc += xn[c * HW + ty[k] * W + tx[k]];
            tbar[k] = acc / C;
          }
          for (int64_t c = 0; c < C; ++c) {
            scalar_t acc = 0;
            for (int k = 0; k < nk; ++k) {
              scalar_t v = xn[c * HW + ty[k] * W + tx[k]];
              // brightness, saturation, contrast with the image mean of (x + b) = mean(x) + b
              if (s.color) v = con * ((v - tbar[k]) * sat + tbar[k] - mx) + mx + b;
              acc += tw[k] * v;
            }
            on[c * HW + i * W + j] = acc;
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void diff_augment_bwd_impl(const scalar_t* gout, const scalar_t* params, const int64_t* index, scalar_t* gx,
                           int64_t N, int64_t C, int64_t H, int64_t W, const Spec& s) {
  const int64_t HW = H * W;
  // One sample per task: every output pixel of sample n scatters only into gx[n], so no races.
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    int64_t ty[4], tx[4];
    scalar_t tw[4];
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* p = params + NUM_PARAMS * index[n];
      const scalar_t* gn = gout + n * C * HW;
      scalar_t* g2 = gx + n * C * HW;
      const bool flip = s.flip && p[FLIP] > scalar_t(0.5);
      const int64_t kind = sample_kind(s.ops, static_cast<double>(p[OP]));
      const int64_t r0 = static_cast<int64_t>(p[CUT_X]) - s.cut_h / 2;
      const int64_t c0 = static_cast<int64_t>(p[CUT_Y]) - s.cut_w / 2;
      // 1) cutout, op and flip backward: scatter into the gradient w.r.t. the coloured pixels,
      //    stored at the x position each was read from.
      for (int64_t i = 0; i < H; ++i) {
        for (int64_t j = 0; j < W; ++j) {
          if (s.cutout && in_cutout(i, j, r0, c0, s.cut_h, s.cut_w)) continue;
          const int nk = taps(kind, p, i, j, H, W, ty, tx, tw);
          for (int k = 0; k < nk; ++k) {
            const int64_t off = ty[k] * W + (flip ? W - 1 - tx[k] : tx[k]);
            for (int64_t c = 0; c < C; ++c) g2[c * HW + off] += tw[k] * gn[c * HW + i * W + j];
          }
        }
      }
      if (!s.color) continue;
      // 2) colour backward in place: y_c = con*sat*x_c + con*(1-sat)*mean_c(x) + (1-con)*mean(x) + b
      const scalar_t sat = p[SAT], con = p[CONTRAST];
      scalar_t total = 0;
      for (int64_t k = 0; k < C * HW; ++k) total += g2[k];
      const scalar_t gmean = (1 - con) * total / static_cast<scalar_t>(C * HW);
      for (int64_t q = 0; q < HW; ++q) {
        scalar_t sum = 0;
        for (int64_t c = 0; c < C; ++c) sum += g2[c * HW + q];
        const scalar_t shared = con * (1 - sat) * sum / C + gmean;
        for (int64_t c = 0; c < C; ++c) g2[c * HW + q] = con * sat * g2[c * HW + q] + shared;
      }
    }
  });
}

Spec make_spec(bool flip, bool color, bool cutout, std::vector<int64_t> ops, int64_t cut_h, int64_t cut_w) {
  return Spec{flip, color, cutout, std::move(ops), cut_h, cut_w};
}

}  // namespace

at::Tensor diff_augment_forward(const at::Tensor& x, const at::Tensor& params, const at::Tensor& index,
                                const at::Tensor& mean, bool flip, bool color, bool cutout,
                                std::vector<int64_t> ops, int64_t cut_h, int64_t cut_w) {
  check_floating(x, "x");
  auto xc = x.contiguous();
  auto p = params.to(xc.scalar_type()).contiguous();
  auto idx = index.to(at::kLong).contiguous();
  auto mu = color ? mean.to(xc.scalar_type()).contiguous() : p;  // unused without colour
  const Spec s = make_spec(flip, color, cutout, std::move(ops), cut_h, cut_w);
  auto out = at::empty_like(xc);
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "diff_augment_forward", [&] {
    diff_augment_fwd_impl<scalar_t>(xc.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(),
                                    mu.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), xc.size(0), xc.size(1),
                                    xc.size(2), xc.size(3), s);
  });
  return out;
}

at::Tensor diff_augment_backward(const at::Tensor& grad_out, const at::Tensor& params, const at::Tensor& index,
                                 bool flip, bool color, bool cutout, std::vector<int64_t> ops,
                                 int64_t cut_h, int64_t cut_w) {
  check_floating(grad_out, "grad_out");
  auto g = grad_out.contiguous();
  auto p = params.to(g.scalar_type()).contiguous();
  auto idx = index.to(at::kLong).contiguous();
  const Spec s = make_spec(flip, color, cutout, std::move(ops), cut_h, cut_w);
  auto gx = at::zeros_like(g);
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "diff_augment_backward", [&] {
    diff_augment_bwd_impl<scalar_t>(g.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(),
                                    gx.data_ptr<scalar_t>(), g.size(0), g.size(1), g.size(2), g.size(3), s);
  });
  return gx;
}

}  // namespace udd_fast
