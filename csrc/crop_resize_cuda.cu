// crop_resize on CUDA, forward and backward: one thread per output element (reference:
// crop_resize_ref in udd_fast/ops/crop_resize.py).
#include "cuda_common.cuh"

namespace udd_fast {
namespace {

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

}  // namespace

#ifdef UDD_FAST_KERNELS_ONLY
UDD_FAST_INSTANTIATE_KERNELS(crop_resize, crop_resize_fwd_kernel<S, A>, crop_resize_bwd_kernel<S, A>)
#else
at::Tensor crop_resize_forward(const at::Tensor& images, const at::Tensor& src, const at::Tensor& boxes, int64_t oh,
                               int64_t ow) {
  check_cuda({{"images", images}, {"src", src}, {"boxes", boxes}});
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
  check_cuda({{"grad_out", grad_out}, {"src", src}, {"boxes", boxes}});
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
#endif  // UDD_FAST_KERNELS_ONLY

}  // namespace udd_fast
