// region_mask on CUDA, forward (reference: region_mask_ref in udd_fast/ops/region_mask.py).
#include "cuda_common.cuh"

namespace udd_fast {
namespace {

// one thread per output element (n, window, draw, c, pixel).
template <typename scalar_t, typename acc_t>
__global__ void region_mask_kernel(const scalar_t* __restrict__ x, const uint8_t* __restrict__ masks,
                                   const scalar_t* __restrict__ noise, const scalar_t* __restrict__ mean,
                                   const scalar_t* __restrict__ stdv, scalar_t* __restrict__ out, int64_t total,
                                   int64_t NW, int64_t D, int64_t C, int64_t HW) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const int64_t p = e % HW, c = (e / HW) % C, w = (e / (HW * C * D)) % NW, n = e / (HW * C * D * NW);
  const acc_t xv = static_cast<acc_t>(x[(n * C + c) * HW + p]);
  acc_t v = masks[w * HW + p] ? xv + static_cast<acc_t>(noise[e]) : xv;  // outside: noise * 0 adds nothing
  v = v < 0 ? acc_t(0) : (v > 1 ? acc_t(1) : v);
  out[e] = static_cast<scalar_t>((v - static_cast<acc_t>(mean[c])) / static_cast<acc_t>(stdv[c]));
}

}  // namespace

#ifdef UDD_FAST_KERNELS_ONLY
UDD_FAST_INSTANTIATE_KERNELS(region_mask, region_mask_kernel<S, A>)
#else
at::Tensor region_mask_forward(const at::Tensor& x, const at::Tensor& masks, const at::Tensor& noise,
                               const at::Tensor& mean, const at::Tensor& stdv) {
  check_cuda({{"x", x}, {"masks", masks}, {"noise", noise}, {"mean", mean}, {"std", stdv}});
  const c10::cuda::CUDAGuard guard(x.device());
  const RegionMaskArgs a = region_mask_args(x, masks, noise, mean, stdv);
  auto out = at::empty_like(a.noise);
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "region_mask_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    region_mask_kernel<scalar_t, acc_t><<<blocks_for(total), THREADS, 0, stream>>>(
        a.x.data_ptr<scalar_t>(), a.masks.data_ptr<uint8_t>(), a.noise.data_ptr<scalar_t>(),
        a.mean.data_ptr<scalar_t>(), a.stdv.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), total, a.noise.size(1),
        a.noise.size(2), a.C, a.HW);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}
#endif  // UDD_FAST_KERNELS_ONLY

}  // namespace udd_fast
