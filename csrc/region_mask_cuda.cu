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
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "region_mask_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    region_mask_kernel<scalar_t, acc_t><<<blocks_for(total), THREADS, 0, stream>>>(
        xc.data_ptr<scalar_t>(), m.data_ptr<uint8_t>(), z.data_ptr<scalar_t>(), mu.data_ptr<scalar_t>(),
        sd.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), total, z.size(1), z.size(2), C, HW);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}
#endif  // UDD_FAST_KERNELS_ONLY

}  // namespace udd_fast
