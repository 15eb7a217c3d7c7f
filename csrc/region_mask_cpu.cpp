// region_mask on the CPU, forward (reference: region_mask_ref in udd_fast/ops/region_mask.py).
#include "cpu_common.h"

namespace udd_fast {
namespace {

// out[n,w,d,c] = (clamp(x[n,c] + noise inside window w, 0, 1) - mean[c]) / std[c].
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

}  // namespace

at::Tensor region_mask_forward(const at::Tensor& x, const at::Tensor& masks, const at::Tensor& noise,
                               const at::Tensor& mean, const at::Tensor& stdv) {
  check_floating(x, "x");
  const RegionMaskArgs a = region_mask_args(x, masks, noise, mean, stdv);
  auto out = at::empty_like(a.noise);
  AT_DISPATCH_FLOATING_TYPES(a.x.scalar_type(), "region_mask_forward", [&] {
    region_mask_impl<scalar_t>(a.x.data_ptr<scalar_t>(), a.masks.data_ptr<uint8_t>(), a.noise.data_ptr<scalar_t>(),
                               a.mean.data_ptr<scalar_t>(), a.stdv.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                               a.N, a.noise.size(1), a.noise.size(2), a.C, a.HW);
  });
  return out;
}

}  // namespace udd_fast
