// response_map on the CPU, forward (references: response_map_ref, window_scores_ref and
// usage_entropy_ref in udd_fast/ops/response_map.py, which also builds the window weights).
#include "cpu_common.h"

namespace udd_fast {
namespace {

// R = sum over channels of W[y] * F, window scores = R @ wmat ([HW, NW], built in
// Python: upsampling and box means are linear in R), usage entropy of ReLU(R). One pass per sample.
template <typename scalar_t>
void response_map_impl(const scalar_t* f, const scalar_t* head, const int64_t* labels, const scalar_t* wmat,
                       scalar_t* R, scalar_t* scores, scalar_t* ue, int64_t N, int64_t CH, int64_t HW, int64_t NW) {
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
      ue[n] = usage_entropy<scalar_t>(r, HW);
    }
  });
}

}  // namespace

std::vector<at::Tensor> response_map_forward(const at::Tensor& fmap, const at::Tensor& head, const at::Tensor& labels,
                                             const at::Tensor& wmat) {
  check_floating(fmap, "feature_map");
  auto f = fmap.contiguous();
  auto w = head.to(f.scalar_type()).contiguous();
  auto y = labels.to(at::kLong).contiguous();
  auto m = wmat.to(f.scalar_type()).contiguous();
  const int64_t N = f.size(0), CH = f.size(1), H = f.size(2), W = f.size(3), NW = m.size(1);
  check_response_map(f, w, m);
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

}  // namespace udd_fast
