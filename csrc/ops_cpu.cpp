// CPU kernels of udd_fast.ops (extension udd_fast._C): crop_resize and diff_augment (forward and
// backward), response_map and region_mask (forward), cfc_loss (forward and backward); float and
// double. Semantics are those of the references named in udd_fast/ops.py (decode.crop_resize_ref,
// augment.diff_augment_ref, regions.*_ref, cfc.cfc_loss_ref); the Python side validates and
// contiguous-izes the inputs, computes the per-sample mean used by contrast and the window weights.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// Parameter columns, as in udd_fast/augment.py (checked by tests/test_backends.py).
constexpr int64_t FLIP = 0, BRIGHT = 1, SAT = 2, CONTRAST = 3, TX = 4, TY = 5, CUT_X = 6, CUT_Y = 7,
                  SCALE_X = 8, SCALE_Y = 9, ROT = 10, OP = 11, NUM_PARAMS = 12;
// Op codes passed from Python: -1 = no op (identity), -2 = op index out of range (zero output).
constexpr int64_t CROP = 0, SCALE = 1, ROTATE = 2, IDENTITY = -1;

// PyTorch's bilinear source index for align_corners=False: negative coordinates clamp to 0, the
// upper tap is clamped to the last row of the (cropped) input.
template <typename acc_t>
inline void source_index(int64_t dst, int64_t in_size, acc_t scale, int64_t& i0, int64_t& i1, acc_t& l1) {
  acc_t s = (static_cast<acc_t>(dst) + acc_t(0.5)) * scale - acc_t(0.5);
  if (s < 0) s = 0;
  i0 = static_cast<int64_t>(s);
  if (i0 > in_size - 1) i0 = in_size - 1;
  i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  l1 = s - static_cast<acc_t>(i0);
}

template <typename scalar_t>
void crop_resize_fwd_impl(const scalar_t* img, const int64_t* src, const int64_t* boxes, scalar_t* out,
                          int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      const int64_t* b = boxes + 4 * n;
      const int64_t y0 = b[0], x0 = b[1], bh = b[2] - b[0], bw = b[3] - b[1];
      const scalar_t* plane = img + (src[n] * C + c) * H * W;
      // Pixels past the image are the 0.5 padding.
      auto pix = [&](int64_t y, int64_t x) -> scalar_t {
        return (y < H && x < W) ? plane[y * W + x] : scalar_t(0.5);
      };
      const scalar_t sh = static_cast<scalar_t>(bh) / OH, sw = static_cast<scalar_t>(bw) / OW;
      scalar_t* o = out + nc * OH * OW;
      for (int64_t oy = 0; oy < OH; ++oy) {
        int64_t iy0, iy1;
        scalar_t ly;
        source_index(oy, bh, sh, iy0, iy1, ly);
        for (int64_t ox = 0; ox < OW; ++ox) {
          int64_t ix0, ix1;
          scalar_t lx;
          source_index(ox, bw, sw, ix0, ix1, lx);
          const scalar_t top = (1 - lx) * pix(y0 + iy0, x0 + ix0) + lx * pix(y0 + iy0, x0 + ix1);
          const scalar_t bot = (1 - lx) * pix(y0 + iy1, x0 + ix0) + lx * pix(y0 + iy1, x0 + ix1);
          o[oy * OW + ox] = (1 - ly) * top + ly * bot;
        }
      }
    }
  });
}

template <typename scalar_t>
void crop_resize_bwd_impl(const scalar_t* gout, const int64_t* src, const int64_t* boxes, scalar_t* gimg,
                          int64_t N, int64_t M, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  // Outputs grouped by source image (CSR), so each thread owns whole (image, channel) planes: no
  // atomics and a deterministic sum.
  std::vector<int64_t> start(M + 1, 0), order(N);
  for (int64_t n = 0; n < N; ++n) start[src[n] + 1]++;
  for (int64_t m = 0; m < M; ++m) start[m + 1] += start[m];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t n = 0; n < N; ++n) order[fill[src[n]]++] = n;

  at::parallel_for(0, M * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t mc = begin; mc < end; ++mc) {
      const int64_t m = mc / C, c = mc % C;
      scalar_t* plane = gimg + mc * H * W;
      auto add = [&](int64_t y, int64_t x, scalar_t v) {
        if (y < H && x < W) plane[y * W + x] += v;  // padding takes no gradient
      };
      for (int64_t k = start[m]; k < start[m + 1]; ++k) {
        const int64_t n = order[k];
        const int64_t* b = boxes + 4 * n;
        const int64_t y0 = b[0], x0 = b[1], bh = b[2] - b[0], bw = b[3] - b[1];
        const scalar_t sh = static_cast<scalar_t>(bh) / OH, sw = static_cast<scalar_t>(bw) / OW;
        const scalar_t* g = gout + (n * C + c) * OH * OW;
        for (int64_t oy = 0; oy < OH; ++oy) {
          int64_t iy0, iy1;
          scalar_t ly;
          source_index(oy, bh, sh, iy0, iy1, ly);
          for (int64_t ox = 0; ox < OW; ++ox) {
            int64_t ix0, ix1;
            scalar_t lx;
            source_index(ox, bw, sw, ix0, ix1, lx);
            const scalar_t v = g[oy * OW + ox];
            add(y0 + iy0, x0 + ix0, (1 - ly) * (1 - lx) * v);
            add(y0 + iy0, x0 + ix1, (1 - ly) * lx * v);
            add(y0 + iy1, x0 + ix0, ly * (1 - lx) * v);
            add(y0 + iy1, x0 + ix1, ly * lx * v);
          }
        }
      }
    }
  });
}

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

// -- response_map: R = sum over channels of W[y] * F, window scores = R @ wmat ([HW, NW], built in
// Python: upsampling and box means are linear in R), usage entropy of ReLU(R). One pass per sample.
template <typename scalar_t>
void response_map_impl(const scalar_t* f, const scalar_t* head, const int64_t* labels, const scalar_t* wmat,
                       scalar_t* R, scalar_t* scores, scalar_t* ue, int64_t N, int64_t CH, int64_t HW, int64_t NW) {
  const scalar_t log_hw = std::log(static_cast<scalar_t>(HW));
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* fn = f + n * CH * HW;
      const scalar_t* wy = head + labels[n] * CH * HW;
      scalar_t* r = R + n * HW;
      for (int64_t p = 0; p < HW; ++p) r[p] = 0;
      for (int64_t ch = 0; ch < CH; ++ch)
        for (int64_t p = 0; p < HW; ++p) r[p] += wy[ch * HW + p] * fn[ch * HW + p];
      for (int64_t k = 0; k < NW; ++k) {
        scalar_t s = 0;
        for (int64_t p = 0; p < HW; ++p) s += r[p] * wmat[p * NW + k];
        scores[n * NW + k] = s;
      }
      scalar_t total = 0, ent = 0;
      for (int64_t p = 0; p < HW; ++p) total += r[p] > 0 ? r[p] : scalar_t(0);
      if (total > 0) {
        for (int64_t p = 0; p < HW; ++p) {
          const scalar_t q = (r[p] > 0 ? r[p] : scalar_t(0)) / total;
          if (q > 0) ent -= q * std::log(q);
        }
      }
      ue[n] = ent / log_hw;
    }
  });
}

// -- region_mask: out[n,w,d,c] = (clamp(x[n,c] + noise inside window w, 0, 1) - mean[c]) / std[c].
template <typename scalar_t>
void region_mask_impl(const scalar_t* x, const uint8_t* masks, const scalar_t* noise, const scalar_t* mean,
                      const scalar_t* stdv, scalar_t* out, int64_t N, int64_t NW, int64_t D, int64_t C, int64_t HW) {
  at::parallel_for(0, N * NW * D * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t c = plane % C, w = (plane / (C * D)) % NW, n = plane / (C * D * NW);
      const scalar_t* xp = x + (n * C + c) * HW;
      const uint8_t* m = masks + w * HW;
      const scalar_t* z = noise + plane * HW;
      scalar_t* o = out + plane * HW;
      const scalar_t mu = mean[c], sd = stdv[c];
      for (int64_t p = 0; p < HW; ++p) {
        scalar_t v = m[p] ? xp[p] + z[p] : xp[p];  // outside the window noise * 0 adds nothing
        v = v < 0 ? scalar_t(0) : (v > 1 ? scalar_t(1) : v);
        o[p] = (v - mu) / sd;
      }
    }
  });
}

// -- cfc_loss. The two products with the prototypes (f @ mu^T forward, ds @ mu backward) go to
// BLAS through at::mm (a hand loop loses to it on the CPU, most at K = 100); the rest is one pass
// per row. Forward: s_k = <f, mu_k> / max(|f|, eps) / tau, lse, loss = lse - s_y (the logits, lse
// and denominator are kept for the backward). Backward: ds = g (softmax - onehot) / tau,
// dz = ds @ mu, df = (dz - z <z, dz>) / |f| (dz / eps where the norm is clamped).
constexpr double NORM_EPS = 1e-12;  // F.normalize's eps

template <typename scalar_t>
inline scalar_t dot(const scalar_t* a, const scalar_t* b, int64_t n) {
  scalar_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <typename scalar_t>
void cfc_fwd_impl(const scalar_t* f, const int64_t* labels, scalar_t tau, scalar_t* loss, scalar_t* logits,
                  scalar_t* lse, scalar_t* den, int64_t N, int64_t K, int64_t D) {
  // logits holds <f, mu_k> on entry
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* fi = f + i * D;
      const scalar_t d = std::max(std::sqrt(dot(fi, fi, D)), static_cast<scalar_t>(NORM_EPS));
      scalar_t* s = logits + i * K;
      scalar_t mx = -std::numeric_limits<scalar_t>::infinity();
      for (int64_t k = 0; k < K; ++k) {
        s[k] = s[k] / d / tau;
        mx = std::max(mx, s[k]);
      }
      scalar_t sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += std::exp(s[k] - mx);
      lse[i] = mx + std::log(sum);
      den[i] = d;
      loss[i] = lse[i] - s[labels[i]];
    }
  });
}

template <typename scalar_t>
void cfc_softmax_grad_impl(const scalar_t* g, const int64_t* labels, const scalar_t* logits, const scalar_t* lse,
                           scalar_t tau, scalar_t* ds, int64_t N, int64_t K) {
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t k = 0; k < K; ++k)
        ds[i * K + k] =
            g[i] * (std::exp(logits[i * K + k] - lse[i]) - (k == labels[i] ? scalar_t(1) : scalar_t(0))) / tau;
  });
}

template <typename scalar_t>
void cfc_project_impl(const scalar_t* f, const scalar_t* den, scalar_t* gf, int64_t N, int64_t D) {
  // gf holds dz on entry and df on exit
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* fi = f + i * D;
      scalar_t* dz = gf + i * D;
      const scalar_t d = den[i];
      const scalar_t proj = d <= static_cast<scalar_t>(NORM_EPS) ? scalar_t(0) : dot(fi, dz, D) / d;
#pragma omp simd
      for (int64_t e = 0; e < D; ++e) dz[e] = (dz[e] - fi[e] / d * proj) / d;
    }
  });
}

void check_floating(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), what, " must be a CPU tensor for udd_fast._C");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, what,
              " must be float32 or float64 for udd_fast._C, got ", t.scalar_type());
}

at::Tensor crop_resize_forward(const at::Tensor& images, const at::Tensor& src, const at::Tensor& boxes,
                               int64_t oh, int64_t ow) {
  check_floating(images, "images");
  auto img = images.contiguous();
  auto s = src.to(at::kLong).contiguous();
  auto b = boxes.to(at::kLong).contiguous();
  const int64_t N = s.size(0), C = img.size(1), H = img.size(2), W = img.size(3);
  auto out = at::empty({N, C, oh, ow}, img.options());
  AT_DISPATCH_FLOATING_TYPES(img.scalar_type(), "crop_resize_forward", [&] {
    crop_resize_fwd_impl<scalar_t>(img.data_ptr<scalar_t>(), s.data_ptr<int64_t>(), b.data_ptr<int64_t>(),
                                   out.data_ptr<scalar_t>(), N, C, H, W, oh, ow);
  });
  return out;
}

at::Tensor crop_resize_backward(const at::Tensor& grad_out, const at::Tensor& src, const at::Tensor& boxes,
                                int64_t num_images, int64_t h, int64_t w) {
  check_floating(grad_out, "grad_out");
  auto g = grad_out.contiguous();
  auto s = src.to(at::kLong).contiguous();
  auto b = boxes.to(at::kLong).contiguous();
  const int64_t N = g.size(0), C = g.size(1), OH = g.size(2), OW = g.size(3);
  auto gimg = at::zeros({num_images, C, h, w}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "crop_resize_backward", [&] {
    crop_resize_bwd_impl<scalar_t>(g.data_ptr<scalar_t>(), s.data_ptr<int64_t>(), b.data_ptr<int64_t>(),
                                   gimg.data_ptr<scalar_t>(), N, num_images, C, h, w, OH, OW);
  });
  return gimg;
}

Spec make_spec(bool flip, bool color, bool cutout, std::vector<int64_t> ops, int64_t cut_h, int64_t cut_w) {
  return Spec{flip, color, cutout, std::move(ops), cut_h, cut_w};
}

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

std::vector<at::Tensor> response_map_forward(const at::Tensor& fmap, const at::Tensor& head, const at::Tensor& labels,
                                             const at::Tensor& wmat) {
  check_floating(fmap, "feature_map");
  auto f = fmap.contiguous();
  auto w = head.to(f.scalar_type()).contiguous();
  auto y = labels.to(at::kLong).contiguous();
  auto m = wmat.to(f.scalar_type()).contiguous();
  const int64_t N = f.size(0), CH = f.size(1), H = f.size(2), W = f.size(3), NW = m.size(1);
  TORCH_CHECK(w.size(1) == CH * H * W && m.size(0) == H * W, "response_map: head / window weights do not match");
  auto R = at::empty({N, H, W}, f.options());
  auto scores = at::empty({N, NW}, f.options());
  auto ue = at::empty({N}, f.options());
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "response_map_forward", [&] {
    response_map_impl<scalar_t>(f.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), y.data_ptr<int64_t>(),
                                m.data_ptr<scalar_t>(), R.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>(),
                                ue.data_ptr<scalar_t>(), N, CH, H * W, NW);
  });
  return {R, scores, ue};
}

at::Tensor region_mask_forward(const at::Tensor& x, const at::Tensor& masks, const at::Tensor& noise,
                               const at::Tensor& mean, const at::Tensor& stdv) {
  check_floating(x, "x");
  auto xc = x.contiguous();
  auto m = masks.to(at::kByte).contiguous();
  auto z = noise.to(xc.scalar_type()).contiguous();
  auto mu = mean.to(xc.scalar_type()).contiguous();
  auto sd = stdv.to(xc.scalar_type()).contiguous();
  const int64_t N = xc.size(0), C = xc.size(1), HW = xc.size(2) * xc.size(3);
  TORCH_CHECK(z.dim() == 6 && z.size(0) == N && z.size(3) == C && z.size(4) * z.size(5) == HW &&
                  m.size(0) == z.size(1) && m.numel() == z.size(1) * HW && mu.numel() == C && sd.numel() == C,
              "region_mask: shapes do not match");
  auto out = at::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "region_mask_forward", [&] {
    region_mask_impl<scalar_t>(xc.data_ptr<scalar_t>(), m.data_ptr<uint8_t>(), z.data_ptr<scalar_t>(),
                               mu.data_ptr<scalar_t>(), sd.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), N,
                               z.size(1), z.size(2), C, HW);
  });
  return out;
}

std::vector<at::Tensor> cfc_loss_forward(const at::Tensor& features, const at::Tensor& labels,
                                         const at::Tensor& protos, double tau) {
  check_floating(features, "features");
  auto f = features.contiguous();
  auto y = labels.to(at::kLong).contiguous();
  auto mu = protos.to(f.scalar_type()).contiguous();
  const int64_t N = f.size(0), D = f.size(1), K = mu.size(0);
  TORCH_CHECK(mu.size(1) == D && y.numel() == N, "cfc_loss: shapes do not match");
  auto loss = at::empty({N}, f.options());
  auto lse = at::empty({N}, f.options());
  auto den = at::empty({N}, f.options());
  auto logits = at::mm(f, mu.t()).contiguous();  // <f, mu_k>, turned into the logits in place
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "cfc_loss_forward", [&] {
    cfc_fwd_impl<scalar_t>(f.data_ptr<scalar_t>(), y.data_ptr<int64_t>(), static_cast<scalar_t>(tau),
                           loss.data_ptr<scalar_t>(), logits.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                           den.data_ptr<scalar_t>(), N, K, D);
  });
  return {loss, logits, lse, den};
}

at::Tensor cfc_loss_backward(const at::Tensor& grad, const at::Tensor& features, const at::Tensor& labels,
                             const at::Tensor& protos, const at::Tensor& logits, const at::Tensor& lse,
                             const at::Tensor& den, double tau) {
  check_floating(features, "features");
  auto f = features.contiguous();
  const auto st = f.scalar_type();
  auto g = grad.to(st).contiguous();
  auto y = labels.to(at::kLong).contiguous();
  auto mu = protos.to(st).contiguous();
  auto s = logits.to(st).contiguous();
  auto l = lse.to(st).contiguous();
  auto d = den.to(st).contiguous();
  const int64_t N = f.size(0), D = f.size(1), K = mu.size(0);
  auto ds = at::empty({N, K}, f.options());
  at::Tensor gf;
  AT_DISPATCH_FLOATING_TYPES(st, "cfc_loss_backward", [&] {
    cfc_softmax_grad_impl<scalar_t>(g.data_ptr<scalar_t>(), y.data_ptr<int64_t>(), s.data_ptr<scalar_t>(),
                                    l.data_ptr<scalar_t>(), static_cast<scalar_t>(tau), ds.data_ptr<scalar_t>(), N, K);
    gf = at::mm(ds, mu).contiguous();  // dz, turned into df in place
    cfc_project_impl<scalar_t>(f.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(), gf.data_ptr<scalar_t>(), N, D);
  });
  return gf;
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "udd_fast CPU kernels (see udd_fast/ops.py)";
  m.def("crop_resize_forward", &crop_resize_forward);
  m.def("crop_resize_backward", &crop_resize_backward);
  m.def("diff_augment_forward", &diff_augment_forward);
  m.def("diff_augment_backward", &diff_augment_backward);
  m.def("response_map_forward", &response_map_forward);
  m.def("region_mask_forward", &region_mask_forward);
  m.def("cfc_loss_forward", &cfc_loss_forward);
  m.def("cfc_loss_backward", &cfc_loss_backward);
}
