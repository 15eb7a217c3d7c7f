// diff_augment on CUDA, forward and backward: one thread per output pixel, all channels (reference:
// diff_augment_ref in udd_fast/ops/diff_augment.py).
#ifndef UDD_FAST_KERNELS_ONLY
#include <vector>
#endif

#include "cuda_common.cuh"

namespace udd_fast {
namespace {

// Strategy as passed from Python (ops: up to 3 op codes).
struct Spec {
  bool flip, color, cutout;
  int nops;
  int64_t ops[3];
  int64_t cut_h, cut_w;
};

// Taps of output pixel (i, j) of the sample with parameter row p (common.h's augment_taps, none where
// cut out): returns how many.
template <typename acc_t>
__device__ __forceinline__ int pixel_taps(const Spec& s, const acc_t* p, int64_t i, int64_t j, int64_t H, int64_t W,
                                          int64_t* ty, int64_t* tx, acc_t* tw) {
  if (s.cutout && in_cutout(p, i, j, s.cut_h, s.cut_w)) return 0;
  return augment_taps(augment_kind(s.ops, s.nops, p), augment_flip(s.flip, p), p, i, j, H, W, ty, tx, tw);
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
  const int nk = pixel_taps<acc_t>(s, p, i, j, H, W, ty, tx, tw);
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
      if (s.color) v = augment_color(v, tbar[k], b, sat, con, mx);
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
  const int nk = pixel_taps<acc_t>(s, p, i, j, H, W, ty, tx, tw);
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
  const acc_t shared = color_grad_shared(sum, gsum[n], sat, con, C, HW);
  for (int64_t c = 0; c < C; ++c) gx[base + c * HW] = static_cast<scalar_t>(con * sat * g2[base + c * HW] + shared);
}

}  // namespace

#ifdef UDD_FAST_KERNELS_ONLY
UDD_FAST_INSTANTIATE_KERNELS(diff_augment, diff_augment_fwd_kernel<S, A>, diff_augment_scatter_kernel<S, A>,
                             colour_bwd_kernel<S, A>)
#else
namespace {

Spec make_spec(bool flip, bool color, bool cutout, const std::vector<int64_t>& ops, int64_t cut_h, int64_t cut_w) {
  TORCH_CHECK(ops.size() <= 3, "at most 3 ops");
  Spec s{flip, color, cutout, static_cast<int>(ops.size()), {0, 0, 0}, cut_h, cut_w};
  for (size_t k = 0; k < ops.size(); ++k) s.ops[k] = ops[k];
  return s;
}

}  // namespace

at::Tensor diff_augment_forward(const at::Tensor& x, const at::Tensor& params, const at::Tensor& index,
                                const at::Tensor& mean, bool flip, bool color, bool cutout, std::vector<int64_t> ops,
                                int64_t cut_h, int64_t cut_w) {
  check_cuda({{"x", x}, {"params", params}, {"index", index}});
  if (color) check_cuda({{"x", x}, {"mean", mean}});  // read only with colour
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
  check_cuda({{"grad_out", grad_out}, {"params", params}, {"index", index}});
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
#endif  // UDD_FAST_KERNELS_ONLY

}  // namespace udd_fast
