// diff_augment on the CPU, forward and backward (reference: diff_augment_ref in
// udd_fast/ops/diff_augment.py); the Python side computes the per-sample mean contrast needs.
#include <utility>
#include <vector>

#include "cpu_common.h"

namespace udd_fast {
namespace {

struct Spec {
  bool flip, color, cutout;
  std::vector<int64_t> ops;
  int64_t cut_h, cut_w;
};

// Every output pixel (i, j) of a sample (parameter row p) with its taps, f(i, j, nk, ty, tx, tw): the
// taps common.h's augment_taps gives, none where cut out. The forward gathers and the backward
// scatters over the same taps.
template <typename scalar_t, typename F>
void for_each_pixel(const Spec& s, const scalar_t* p, int64_t H, int64_t W, F f) {
  const int64_t kind = augment_kind(s.ops.data(), static_cast<int64_t>(s.ops.size()), p);
  const bool flip = augment_flip(s.flip, p);
  int64_t ty[4], tx[4];
  scalar_t tw[4];
  for (int64_t i = 0; i < H; ++i) {
    for (int64_t j = 0; j < W; ++j) {
      const bool cut = s.cutout && in_cutout(p, i, j, s.cut_h, s.cut_w);
      const int nk = cut ? 0 : augment_taps(kind, flip, p, i, j, H, W, ty, tx, tw);
      f(i, j, nk, ty, tx, tw);
    }
  }
}

// f(n, p) for every sample n with its parameter row p, a sample per task over the intra-op threads
// (the backward of sample n writes only gx[n], so no races).
template <typename scalar_t, typename F>
void for_each_sample(const scalar_t* params, const int64_t* index, int64_t N, F f) {
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) f(n, params + NUM_PARAMS * index[n]);
  });
}

template <typename scalar_t>
void diff_augment_fwd_impl(const scalar_t* x, const scalar_t* params, const int64_t* index, const scalar_t* mean,
                           scalar_t* out, int64_t N, int64_t C, int64_t H, int64_t W, const Spec& s) {
  const int64_t HW = H * W;
  for_each_sample(params, index, N, [&](int64_t n, const scalar_t* p) {
    const scalar_t* xn = x + n * C * HW;
    scalar_t* on = out + n * C * HW;
    const scalar_t b = p[BRIGHT], sat = p[SAT], con = p[CONTRAST];
    const scalar_t mx = s.color ? mean[n] : scalar_t(0);
    for_each_pixel(s, p, H, W, [&](int64_t i, int64_t j, int nk, const int64_t* ty, const int64_t* tx,
                                   const scalar_t* tw) {
      scalar_t tbar[4];
      for (int k = 0; k < nk; ++k) {
        scalar_t acc = 0;
        if (s.color)
          for (int64_t c = 0; c < C; ++c) acc += xn[c * HW + ty[k] * W + tx[k]];
        tbar[k] = acc / C;
      }
      for (int64_t c = 0; c < C; ++c) {
        scalar_t acc = 0;
        for (int k = 0; k < nk; ++k) {
          scalar_t v = xn[c * HW + ty[k] * W + tx[k]];
          if (s.color) v = augment_color(v, tbar[k], b, sat, con, mx);
          acc += tw[k] * v;
        }
        on[c * HW + i * W + j] = acc;
      }
    });
  });
}

template <typename scalar_t>
void diff_augment_bwd_impl(const scalar_t* gout, const scalar_t* params, const int64_t* index, scalar_t* gx,
                           int64_t N, int64_t C, int64_t H, int64_t W, const Spec& s) {
  const int64_t HW = H * W;
  for_each_sample(params, index, N, [&](int64_t n, const scalar_t* p) {
    const scalar_t* gn = gout + n * C * HW;
    scalar_t* g2 = gx + n * C * HW;
    // 1) cutout, op and flip backward: scatter into the gradient w.r.t. the coloured pixels,
    //    stored at the x position each was read from.
    for_each_pixel(s, p, H, W, [&](int64_t i, int64_t j, int nk, const int64_t* ty, const int64_t* tx,
                                   const scalar_t* tw) {
      for (int k = 0; k < nk; ++k) {
        const int64_t off = ty[k] * W + tx[k];
        for (int64_t c = 0; c < C; ++c) g2[c * HW + off] += tw[k] * gn[c * HW + i * W + j];
      }
    });
    if (!s.color) return;
    // 2) colour backward in place: y_c = con*sat*x_c + con*(1-sat)*mean_c(x) + (1-con)*mean(x) + b
    const scalar_t sat = p[SAT], con = p[CONTRAST];
    scalar_t total = 0;
    for (int64_t k = 0; k < C * HW; ++k) total += g2[k];
    for (int64_t q = 0; q < HW; ++q) {
      scalar_t sum = 0;
      for (int64_t c = 0; c < C; ++c) sum += g2[c * HW + q];
      const scalar_t shared = color_grad_shared(sum, total, sat, con, C, HW);
      for (int64_t c = 0; c < C; ++c) g2[c * HW + q] = con * sat * g2[c * HW + q] + shared;
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
