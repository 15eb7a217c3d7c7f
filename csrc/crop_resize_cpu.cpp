// crop_resize on the CPU, forward and backward (reference: crop_resize_ref in
// udd_fast/ops/crop_resize.py).
#include <vector>

#include "cpu_common.h"

namespace udd_fast {
namespace {

// Every output pixel k (row-major in OH x OW) of box b (y0, x0, y1, x1) resized to OH x OW with its
// bilinear taps, f(k, r0, r1, c0, c1, ly, lx): rows r0, r1 and columns c0, c1 of the image, upper
// weights ly, lx. The forward gathers and the backward scatters over the same taps.
template <typename scalar_t, typename F>
void for_each_tap(const int64_t* b, int64_t OH, int64_t OW, F f) {
  const int64_t y0 = b[0], x0 = b[1], bh = b[2] - b[0], bw = b[3] - b[1];
  const scalar_t sh = static_cast<scalar_t>(bh) / OH, sw = static_cast<scalar_t>(bw) / OW;
  for (int64_t oy = 0; oy < OH; ++oy) {
    int64_t iy0, iy1;
    scalar_t ly;
    source_index(oy, bh, sh, iy0, iy1, ly);
    for (int64_t ox = 0; ox < OW; ++ox) {
      int64_t ix0, ix1;
      scalar_t lx;
      source_index(ox, bw, sw, ix0, ix1, lx);
      f(oy * OW + ox, y0 + iy0, y0 + iy1, x0 + ix0, x0 + ix1, ly, lx);
    }
  }
}

template <typename scalar_t>
void crop_resize_fwd_impl(const scalar_t* img, const int64_t* src, const int64_t* boxes, scalar_t* out,
                          int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      const scalar_t* plane = img + (src[n] * C + c) * H * W;
      // Pixels past the image are the 0.5 padding.
      auto pix = [&](int64_t y, int64_t x) -> scalar_t {
        return (y < H && x < W) ? plane[y * W + x] : scalar_t(0.5);
      };
      scalar_t* o = out + nc * OH * OW;
      for_each_tap<scalar_t>(boxes + 4 * n, OH, OW, [&](int64_t k, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                                         scalar_t ly, scalar_t lx) {
        const scalar_t top = (1 - lx) * pix(r0, c0) + lx * pix(r0, c1);
        const scalar_t bot = (1 - lx) * pix(r1, c0) + lx * pix(r1, c1);
        o[k] = (1 - ly) * top + ly * bot;
      });
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
        const scalar_t* g = gout + (n * C + c) * OH * OW;
        for_each_tap<scalar_t>(boxes + 4 * n, OH, OW, [&](int64_t e, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                                           scalar_t ly, scalar_t lx) {
          const scalar_t v = g[e];
          add(r0, c0, (1 - ly) * (1 - lx) * v);
          add(r0, c1, (1 - ly) * lx * v);
          add(r1, c0, ly * (1 - lx) * v);
          add(r1, c1, ly * lx * v);
        });
      }
    }
  });
}

}  // namespace

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

}  // namespace udd_fast
