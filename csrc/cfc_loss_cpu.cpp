// cfc_loss on the CPU, forward and backward (reference: cfc_loss_ref in udd_fast/ops/cfc_loss.py).
#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu_common.h"

namespace udd_fast {
namespace {

// The two products with the prototypes (f @ mu^T forward, ds @ mu backward) go to
// BLAS through at::mm (a hand loop loses to it on the CPU, most at K = 100); the rest is one pass
// per row. Forward: s_k = <f, mu_k> / max(|f|, eps) / tau, lse, loss = lse - s_y (the logits, lse
// and denominator are kept for the backward). Backward: ds = g (softmax - onehot) / tau,
// dz = ds @ mu, df = (dz - z <z, dz>) / |f| (dz / eps where the norm is clamped).

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

}  // namespace

std::vector<at::Tensor> cfc_loss_forward(const at::Tensor& features, const at::Tensor& labels,
                                         const at::Tensor& protos, double tau) {
  check_floating(features, "features");
  auto f = features.contiguous();
  auto y = labels.to(at::kLong).contiguous();
  auto mu = protos.to(f.scalar_type()).contiguous();
  const int64_t N = f.size(0), D = f.size(1), K = mu.size(0);
  check_cfc_loss(f, y, mu);
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

}  // namespace udd_fast
