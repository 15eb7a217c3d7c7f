// CUDA kernels of udd_fast.ops (extension udd_fast._C_cuda): crop_resize and diff_augment, forward
// and backward, for float, double, half and bfloat16 (arithmetic in float, double for double).
// Same semantics and layout of work as the Triton kernels in kernels/ and the CPU ones in
// csrc/ops_cpu.cpp; backward scatters with atomicAdd into a float (double) buffer.
#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <vector>

namespace {

constexpr int64_t FLIP = 0, BRIGHT = 1, SAT = 2, CONTRAST = 3, TX = 4, TY = 5, CUT_X = 6, CUT_Y = 7,
                  SCALE_X = 8, SCALE_Y = 9, ROT = 10, OP = 11, NUM_PARAMS = 12;
constexpr int64_t CROP = 0, SCALE = 1, ROTATE = 2, IDENTITY = -1;
constexpr int THREADS = 256;

inline int blocks_for(int64_t total) { return static_cast<int>((total + THREADS - 1) / THREADS); }

template <typename acc_t>
__device__ __forceinline__ void source_index(int64_t dst, int64_t in_size, acc_t scale, int64_t& i0, int64_t& i1,
                                             acc_t& l1) {
  acc_t s = (static_cast<acc_t>(dst) + acc_t(0.5)) * scale - acc_t(0.5);
  if (s < 0) s = 0;
  i0 = static_cast<int64_t>(s);
  if (i0 > in_size - 1) i0 = in_size - 1;
  i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  l1 = s - static_cast<acc_t>(i0);
}

// Per output element (n, c, oy, ox): the plane of its source image and its four taps.
template <typename acc_t>
struct CropTaps {
  int64_t plane, r0, r1, c0, c1;
  acc_t ly, lx;
};

template <typename acc_t>
__device__ __forceinline__ CropTaps<acc_t> crop_taps(int64_t e, const int64_t* src, const int64_t* boxes, int64_t C,
                                                    int64_t H, int64_t W, int64_t OH, int64_t OW) {
  const int64_t ox = e % OW, oy = (e / OW) % OH, c = (e / (OW * OH)) % C, n = e / (OW * OH * C);
  const int64_t* b = boxes + 4 * n;
  const int64_t bh = b[2] - b[0], bw = b[3] - b[1];
  CropTaps<acc_t> t;
  int64_t iy0, iy1, ix0, ix1;
  source_index<acc_t>(oy, bh, static_cast<acc_t>(bh) / OH, iy0, iy1, t.ly);
  source_index<acc_t>(ox, bw, static_cast<acc_t>(bw) / OW, ix0, ix1, t.lx);
  t.plane = (src[n] * C + c) * H * W;
  t.r0 = b[0] + iy0; t.r1 = b[0] + iy1; t.c0 = b[1] + ix0; t.c1 = b[1] + ix1;
  return t;
}

template <typename scalar_t, typename acc_t>
__global__ void crop_resize_fwd_kernel(const scalar_t* __restrict__ img, const int64_t* __restrict__ src,
                                       const int64_t* __restrict__ boxes, scalar_t* __restrict__ out, int64_t total,
                                       int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const CropTaps<acc_t> t = crop_taps<acc_t>(e, src, boxes, C, H, W, OH, OW);
  // Reads past the image are the 0.5 padding.
  auto pix = [&](int64_t y, int64_t x) -> acc_t {
    return (y < H && x < W) ? static_cast<acc_t>(img[t.plane + y * W + x]) : acc_t(0.5);
  };
  const acc_t top = (1 - t.lx) * pix(t.r0, t.c0) + t.lx * pix(t.r0, t.c1);
  const acc_t bot = (1 - t.lx) * pix(t.r1, t.c0) + t.lx * pix(t.r1, t.c1);
  out[e] = static_cast<scalar_t>((1 - t.ly) * top + t.ly * bot);
}

template <typename scalar_t, typename acc_t>
__global__ void crop_resize_bwd_kernel(const scalar_t* __restrict__ g, const int64_t* __restrict__ src,
                                       const int64_t* __restrict__ boxes, acc_t* __restrict__ gimg, int64_t total,
                                       int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const CropTaps<acc_t> t = crop_taps<acc_t>(e, src, boxes, C, H, W, OH, OW);
  const acc_t v = static_cast<acc_t>(g[e]);
  auto add = [&](int64_t y, int64_t x, acc_t w) {
    if (y < H && x < W) atomicAdd(gimg + t.plane + y * W + x, w * v);  // padding takes no gradient
  };
  add(t.r0, t.c0, (1 - t.ly) * (1 - t.lx));
  add(t.r0, t.c1, (1 - t.ly) * t.lx);
  add(t.r1, t.c0, t.ly * (1 - t.lx));
  add(t.r1, t.c1, t.ly * t.lx);
}

// Strategy as passed from Python (ops: up to 3 op codes).
struct Spec {
  bool flip, color, cutout;
  int nops;
  int64_t ops[3];
  int64_t cut_h, cut_w;
};

// Taps of output pixel (i, j) of sample with parameter row p, in x coordinates (flip applied):
// returns how many (0 when cut out or the op choice is out of range).
template <typename acc_t>
__device__ __forceinline__ int augment_taps(const Spec& s, const acc_t* p, int64_t i, int64_t j, int64_t H, int64_t W,
                                            int64_t* ty, int64_t* tx, acc_t* tw) {
  if (s.cutout) {
    const int64_t r0 = static_cast<int64_t>(p[CUT_X]) - s.cut_h / 2, c0 = static_cast<int64_t>(p[CUT_Y]) - s.cut_w / 2;
    if (i >= r0 && i < r0 + s.cut_h && j >= c0 && j < c0 + s.cut_w) return 0;
  }
  int64_t kind = IDENTITY;
  if (s.nops == 1) {
    kind = s.ops[0];
  } else if (s.nops > 1) {
    const int64_t op = static_cast<int64_t>(p[OP]);
    if (op < 0 || op >= s.nops) return 0;
    kind = s.ops[op];
  }
  const bool flip = s.flip && p[FLIP] > acc_t(0.5);
  int k = 0;
  if (kind == IDENTITY || kind == CROP) {
    int64_t y = i, x = j;
    if (kind == CROP) { y += static_cast<int64_t>(p[TX]); x += static_cast<int64_t>(p[TY]); }
    if (y < 0 || y >= H || x < 0 || x >= W) return 0;
    ty[0] = y; tx[0] = flip ? W - 1 - x : x; tw[0] = 1;
    return 1;
  }
  const acc_t xb = static_cast<acc_t>(2 * j + 1) / W - 1, yb = static_cast<acc_t>(2 * i + 1) / H - 1;
  acc_t gx, gy;
  if (kind == SCALE) {
    gx = p[SCALE_X] * xb;
    gy = p[SCALE_Y] * yb;
  } else {
    const acc_t co = cos(p[ROT]), si = sin(p[ROT]);
    gx = co * xb - si * yb;
    gy = si * xb + co * yb;
  }
  const acc_t fx = ((gx + 1) * W - 1) / 2, fy = ((gy + 1) * H - 1) / 2;
  const acc_t x0f = floor(fx), y0f = floor(fy);
  const acc_t ax = fx - x0f, ay = fy - y0f;
  const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
  for (int dy = 0; dy < 2; ++dy) {
    for (int dx = 0; dx < 2; ++dx) {
      const int64_t y = y0 + dy, x = x0 + dx;
      if (y < 0 || y >= H || x < 0 || x >= W) continue;
      ty[k] = y; tx[k] = flip ? W - 1 - x : x;
      tw[k] = (dy ? ay : 1 - ay) * (dx ? ax : 1 - ax);
      ++k;
    }
  }
  return k;
}

// One thread per output pixel (n, i, j), all channels.
template <typename scalar_t, typename acc_t>
__global__ void diff_augment_fwd_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ params,
                                        const int64_t* __restrict__ index, const acc_t* __restrict__ mean,
                                        scalar_t* __restrict__ out, int64_t total, int64_t C, int64_t H, int64_t W,
                                        Spec s) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const int64_t HW = H * W, n = e / HW, q = e % HW, i = q / W, j = q % W;
  const acc_t* p = params + NUM_PARAMS * index[n];
  const scalar_t* xn = x + n * C * HW;
  int64_t ty[4], tx[4];
  acc_t tw[4], tbar[4];
  const int nk = augment_taps<acc_t>(s, p, i, j, H, W, ty, tx, tw);
  acc_t b = 0, sat = 1, con = 1, mx = 0;
  if (s.color) {
    b = p[BRIGHT]; sat = p[SAT]; con = p[CONTRAST]; mx = mean[n];
    for (int k = 0; k < nk; ++k) {
      acc_t acc = 0;
      for (int64_t c = 0; c < C; ++c) acc += static_cast<acc_t>(xn[c * HW + ty[k] * W + tx[k]]);
      tbar[k] = acc / C;
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    acc_t acc = 0;
    for (int k = 0; k < nk; ++k) {
      acc_t v = static_cast<acc_t>(xn[c * HW + ty[k] * W + tx[k]]);
      // brightness, saturation, contrast with the image mean of (x + b) = mean(x) + b
      if (s.color) v = con * ((v - tbar[k]) * sat + tbar[k] - mx) + mx + b;
      acc += tw[k] * v;
    }
    out[n * C * HW + c * HW + q] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void diff_augment_scatter_kernel(const scalar_t* __restrict__ g, const acc_t* __restrict__ params,
                                            const int64_t* __restrict__ index, acc_t* __restrict__ g2, int64_t total,
                                            int64_t C, int64_t H, int64_t W, Spec s) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const int64_t HW = H * W, n = e / HW, q = e % HW, i = q / W, j = q % W;
  const acc_t* p = params + NUM_PARAMS * index[n];
  int64_t ty[4], tx[4];
  acc_t tw[4];
  const int nk = augment_taps<acc_t>(s, p, i, j, H, W, ty, tx, tw);
  for (int64_t c = 0; c < C; ++c) {
    const acc_t v = static_cast<acc_t>(g[n * C * HW + c * HW + q]);
    for (int k = 0; k < nk; ++k) atomicAdd(g2 + n * C * HW + c * HW + ty[k] * W + tx[k], tw[k] * v);
  }
}

// gx_c = con*sat*g_c + con*(1-sat)*mean_c(g) + (1-con)*sum(g[n])/(C*H*W), per pixel.
template <typename scalar_t, typename acc_t>
__global__ void colour_bwd_kernel(const acc_t* __restrict__ g2, const acc_t* __restrict__ params,
                                  const int64_t* __restrict__ index, const acc_t* __restrict__ gsum,
                                  scalar_t* __restrict__ gx, int64_t total, int64_t C, int64_t HW) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const int64_t n = e / HW, base = n * C * HW + e % HW;
  const acc_t* p = params + NUM_PARAMS * index[n];
  const acc_t sat = p[SAT], con = p[CONTRAST];
  acc_t sum = 0;
  for (int64_t c = 0; c < C; ++c) sum += g2[base + c * HW];
  const acc_t shared = con * (1 - sat) * sum / C + (1 - con) * gsum[n] / static_cast<acc_t>(C * HW);
  for (int64_t c = 0; c < C; ++c) gx[base + c * HW] = static_cast<scalar_t>(con * sat * g2[base + c * HW] + shared);
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_cuda(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.is_cuda(), what, " must be a CUDA tensor for udd_fast._C_cuda");
}

Spec make_spec(bool flip, bool color, bool cutout, const std::vector<int64_t>& ops, int64_t cut_h, int64_t cut_w) {
  TORCH_CHECK(ops.size() <= 3, "at most 3 ops");
  Spec s{flip, color, cutout, static_cast<int>(ops.size()), {0, 0, 0}, cut_h, cut_w};
  for (size_t k = 0; k < ops.size(); ++k) s.ops[k] = ops[k];
  return s;
}

at::Tensor crop_resize_forward(const at::Tensor& images, const at::Tensor& src, const at::Tensor& boxes, int64_t oh,
                               int64_t ow) {
  check_cuda(images, "images");
  const c10::cuda::CUDAGuard guard(images.device());
  auto img = images.contiguous();
  auto s = src.to(at::kLong).contiguous();
  auto b = boxes.to(at::kLong).contiguous();
  const int64_t N = s.size(0), C = img.size(1), H = img.size(2), W = img.size(3);
  auto out = at::empty({N, C, oh, ow}, img.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, img.scalar_type(), "crop_resize_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    crop_resize_fwd_kernel<scalar_t, acc_t><<<blocks_for(total), THREADS, 0, stream>>>(
        img.data_ptr<scalar_t>(), s.data_ptr<int64_t>(), b.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), total, C, H,
        W, oh, ow);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor crop_resize_backward(const at::Tensor& grad_out, const at::Tensor& src, const at::Tensor& boxes,
                                int64_t num_images, int64_t h, int64_t w) {
  check_cuda(grad_out, "grad_out");
  const c10::cuda::CUDAGuard guard(grad_out.device());
  auto g = grad_out.contiguous();
  auto s = src.to(at::kLong).contiguous();
  auto b = boxes.to(at::kLong).contiguous();
  const int64_t C = g.size(1), OH = g.size(2), OW = g.size(3);
  auto gimg = at::zeros({num_images, C, h, w}, g.options().dtype(acc_type(g.scalar_type())));
  const int64_t total = g.numel();
  if (total == 0) return gimg.to(g.scalar_type());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "crop_resize_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    crop_resize_bwd_kernel<scalar_t, acc_t><<<blocks_for(total), THREADS, 0, stream>>>(
        g.data_ptr<scalar_t>(), s.data_ptr<int64_t>(), b.data_ptr<int64_t>(), gimg.data_ptr<acc_t>(), total, C, h, w,
        OH, OW);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gimg.to(g.scalar_type());
}

at::Tensor diff_augment_forward(const at::Tensor& x, const at::Tensor& params, const at::Tensor& index,
                                const at::Tensor& mean, bool flip, bool color, bool cutout, std::vector<int64_t> ops,
                                int64_t cut_h, int64_t cut_w) {
  check_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  const auto acc = acc_type(xc.scalar_type());
  auto p = params.to(acc).contiguous();
  auto idx = index.to(at::kLong).contiguous();
  auto mu = color ? mean.to(acc).contiguous() : p;  // unused without colour
  const Spec s = make_spec(flip, color, cutout, ops, cut_h, cut_w);
  auto out = at::empty_like(xc);
  const int64_t total = xc.size(0) * xc.size(2) * xc.size(3);
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "diff_augment_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    diff_augment_fwd_kernel<scalar_t, acc_t><<<blocks_for(total), THREADS, 0, stream>>>(
        xc.data_ptr<scalar_t>(), p.data_ptr<acc_t>(), idx.data_ptr<int64_t>(), mu.data_ptr<acc_t>(),
        out.data_ptr<scalar_t>(), total, xc.size(1), xc.size(2), xc.size(3), s);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor diff_augment_backward(const at::Tensor& grad_out, const at::Tensor& params, const at::Tensor& index,
                                 bool flip, bool color, bool cutout, std::vector<int64_t> ops, int64_t cut_h,
                                 int64_t cut_w) {
  check_cuda(grad_out, "grad_out");
  const c10::cuda::CUDAGuard guard(grad_out.device());
  auto g = grad_out.contiguous();
  const auto acc = acc_type(g.scalar_type());
  auto p = params.to(acc).contiguous();
  auto idx = index.to(at::kLong).contiguous();
  const Spec s = make_spec(flip, color, cutout, ops, cut_h, cut_w);
  auto g2 = at::zeros(g.sizes(), g.options().dtype(acc));
  const int64_t C = g.size(1), HW = g.size(2) * g.size(3), total = g.size(0) * HW;
  if (total == 0) return g2.to(g.scalar_type());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "diff_augment_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    diff_augment_scatter_kernel<scalar_t, acc_t><<<blocks_for(total), THREADS, 0, stream>>>(
        g.data_ptr<scalar_t>(), p.data_ptr<acc_t>(), idx.data_ptr<int64_t>(), g2.data_ptr<acc_t>(), total, C,
        g.size(2), g.size(3), s);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!color) return g2.to(g.scalar_type());
  auto gsum = g2.sum({1, 2, 3});
  auto gx = at::empty_like(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "diff_augment_colour_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    colour_bwd_kernel<scalar_t, acc_t><<<blocks_for(total), THREADS, 0, stream>>>(
        g2.data_ptr<acc_t>(), p.data_ptr<acc_t>(), idx.data_ptr<int64_t>(), gsum.data_ptr<acc_t>(),
        gx.data_ptr<scalar_t>(), total, C, HW);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gx;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "udd_fast CUDA kernels (see udd_fast/ops.py)";
  m.def("crop_resize_forward", &crop_resize_forward);
  m.def("crop_resize_backward", &crop_resize_backward);
  m.def("diff_augment_forward", &diff_augment_forward);
  m.def("diff_augment_backward", &diff_augment_backward);
}
