// cfc_loss on CUDA, forward and backward (reference: cfc_loss_ref in udd_fast/ops/cfc_loss.py).
#include "cuda_common.cuh"

namespace udd_fast {
namespace {

// one block per row. Forward: |f| and the dot products with a tile of CFC_CLASSES
// prototypes at a time by per-thread partial sums, warp shuffles and one shared slot per warp and
// class (deterministic), the tile's logits written out, then logsumexp and loss by block reductions.
// Backward: ds = g (softmax - onehot) / tau a tile of THREADS classes at a time in shared memory,
// <z, dz> by a block reduction, then df = (dz - z <z, dz>) / |f| with dz recomputed (dz / eps where
// the norm is clamped). Shared memory does not grow with K (it passed 48 KB at K ~ 750 in double when
// the forward held every class at once).
constexpr int WARPS = THREADS / 32;
constexpr int CFC_CLASSES = 32;  // prototypes per forward tile

constexpr size_t cfc_fwd_smem(size_t acc_bytes) { return (WARPS * CFC_CLASSES + WARPS) * acc_bytes; }
constexpr size_t cfc_bwd_smem(size_t acc_bytes) { return (THREADS + WARPS) * acc_bytes; }
static_assert(cfc_fwd_smem(sizeof(double)) <= DEFAULT_SMEM && cfc_bwd_smem(sizeof(double)) <= DEFAULT_SMEM,
              "cfc_loss shared memory must fit the default at any K");

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Sum (or max) over the block, in a fixed order; every thread gets it. part: [WARPS] in shared memory.
template <typename acc_t, bool MAX>
__device__ __forceinline__ acc_t block_reduce(acc_t v, acc_t* part) {
  for (int o = 16; o > 0; o >>= 1) {
    const acc_t w = __shfl_down_sync(0xffffffffu, v, o);
    v = MAX ? (w > v ? w : v) : v + w;
  }
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  acc_t r = part[0];
  for (int w = 1; w < WARPS; ++w) r = MAX ? (part[w] > r ? part[w] : r) : r + part[w];
  __syncthreads();  // part is reused by the next reduction
  return r;
}

template <typename scalar_t, typename acc_t>
__global__ void cfc_fwd_kernel(const scalar_t* __restrict__ f, const int64_t* __restrict__ labels,
                               const scalar_t* __restrict__ mu, acc_t tau, acc_t* __restrict__ loss,
                               acc_t* __restrict__ logits, acc_t* __restrict__ lse, acc_t* __restrict__ den, int64_t K,
                               int64_t D) {
  extern __shared__ unsigned char smem[];
  acc_t* red = reinterpret_cast<acc_t*>(smem);  // [WARPS][CFC_CLASSES]: the tile's partial dots
  acc_t* part = red + WARPS * CFC_CLASSES;     // [WARPS]: block reductions
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i = blockIdx.x;
  const scalar_t* fi = f + i * D;
  acc_t* si = logits + i * K;
  acc_t sq = 0;
  for (int64_t e = threadIdx.x; e < D; e += blockDim.x) {
    const acc_t v = static_cast<acc_t>(fi[e]);
    sq += v * v;
  }
  const acc_t d = max(sqrt(block_reduce<acc_t, false>(sq, part)), static_cast<acc_t>(NORM_EPS));
  for (int64_t k0 = 0; k0 < K; k0 += CFC_CLASSES) {
    const int kn = K - k0 < CFC_CLASSES ? static_cast<int>(K - k0) : CFC_CLASSES;
    for (int k = 0; k < kn; ++k) {
      const scalar_t* mk = mu + (k0 + k) * D;
      acc_t s = 0;
      for (int64_t e = threadIdx.x; e < D; e += blockDim.x) s += static_cast<acc_t>(fi[e]) * static_cast<acc_t>(mk[e]);
      s = warp_sum(s);
      if (lane == 0) red[warp * CFC_CLASSES + k] = s;
    }
    __syncthreads();
    if (threadIdx.x < kn) {
      acc_t s = 0;
      for (int w = 0; w < WARPS; ++w) s += red[w * CFC_CLASSES + threadIdx.x];
      si[k0 + threadIdx.x] = s / d / tau;
    }
    __syncthreads();  // red is refilled by the next tile; the logits are visible to the whole block
  }
  acc_t mx = -INFINITY;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) mx = max(mx, si[k]);
  mx = block_reduce<acc_t, true>(mx, part);
  acc_t sum = 0;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) sum += exp(si[k] - mx);
  sum = block_reduce<acc_t, false>(sum, part);
  if (threadIdx.x == 0) {
    lse[i] = mx + log(sum);
    den[i] = d;
    loss[i] = lse[i] - si[labels[i]];
  }
}

template <typename scalar_t, typename acc_t>
__global__ void cfc_bwd_kernel(const acc_t* __restrict__ g, const scalar_t* __restrict__ f,
                               const int64_t* __restrict__ labels, const scalar_t* __restrict__ mu,
                               const acc_t* __restrict__ logits, const acc_t* __restrict__ lse,
                               const acc_t* __restrict__ den, acc_t tau, scalar_t* __restrict__ gf, int64_t K,
                               int64_t D) {
  extern __shared__ unsigned char smem[];
  acc_t* ds = reinterpret_cast<acc_t*>(smem);  // [THREADS]: a tile of classes
  acc_t* part = ds + THREADS;                  // [WARPS]
  const int64_t i = blockIdx.x;
  const scalar_t* fi = f + i * D;
  const acc_t d = den[i], gi = g[i], li = lse[i];
  const int64_t y = labels[i];
  // dz[e] = sum_k ds_k mu[k, e] for this thread's e of chunk e0 (every thread takes part in the
  // tile loads and barriers, in range or not)
  auto dz_at = [&](int64_t e) {
    acc_t dz = 0;
    for (int64_t k0 = 0; k0 < K; k0 += THREADS) {
      const int64_t k = k0 + threadIdx.x;
      if (k < K) ds[threadIdx.x] = gi * (exp(logits[i * K + k] - li) - (k == y ? acc_t(1) : acc_t(0))) / tau;
      __syncthreads();
      const int kn = K - k0 < THREADS ? static_cast<int>(K - k0) : THREADS;
      if (e < D)
        for (int kk = 0; kk < kn; ++kk) dz += ds[kk] * static_cast<acc_t>(mu[(k0 + kk) * D + e]);
      __syncthreads();
    }
    return dz;
  };
  acc_t zdz = 0;
  for (int64_t e0 = 0; e0 < D; e0 += blockDim.x) {
    const int64_t e = e0 + threadIdx.x;
    const acc_t dz = dz_at(e);
    if (e < D) zdz += static_cast<acc_t>(fi[e]) / d * dz;
  }
  acc_t proj = block_reduce<acc_t, false>(zdz, part);
  if (d <= static_cast<acc_t>(NORM_EPS)) proj = 0;
  for (int64_t e0 = 0; e0 < D; e0 += blockDim.x) {
    const int64_t e = e0 + threadIdx.x;
    const acc_t dz = dz_at(e);
    if (e < D) gf[i * D + e] = static_cast<scalar_t>((dz - static_cast<acc_t>(fi[e]) / d * proj) / d);
  }
}

}  // namespace

#ifdef UDD_FAST_KERNELS_ONLY
UDD_FAST_INSTANTIATE_KERNELS(cfc_loss, cfc_fwd_kernel<S, A>, cfc_bwd_kernel<S, A>)
#else
std::vector<at::Tensor> cfc_loss_forward(const at::Tensor& features, const at::Tensor& labels,
                                         const at::Tensor& protos, double tau) {
  check_cuda({{"features", features}, {"labels", labels}, {"prototypes", protos}});
  const c10::cuda::CUDAGuard guard(features.device());
  auto f = features.contiguous();
  auto y = labels.to(at::kLong).contiguous();
  auto mu = protos.to(f.scalar_type()).contiguous();
  const int64_t N = f.size(0), D = f.size(1), K = mu.size(0);
  check_cfc_loss(f, y, mu);
  const auto opts = f.options().dtype(acc_type(f.scalar_type()));
  auto loss = at::empty({N}, opts);
  auto lse = at::empty({N}, opts);
  auto den = at::empty({N}, opts);
  auto logits = at::empty({N, K}, opts);
  if (N == 0) return {loss, logits, lse, den};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "cfc_loss_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cfc_fwd_kernel<scalar_t, acc_t><<<N, THREADS, cfc_fwd_smem(sizeof(acc_t)), stream>>>(
        f.data_ptr<scalar_t>(), y.data_ptr<int64_t>(), mu.data_ptr<scalar_t>(), static_cast<acc_t>(tau),
        loss.data_ptr<acc_t>(), logits.data_ptr<acc_t>(), lse.data_ptr<acc_t>(), den.data_ptr<acc_t>(), K, D);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {loss, logits, lse, den};
}

at::Tensor cfc_loss_backward(const at::Tensor& grad, const at::Tensor& features, const at::Tensor& labels,
                             const at::Tensor& protos, const at::Tensor& logits, const at::Tensor& lse,
                             const at::Tensor& den, double tau) {
  check_cuda({{"features", features}, {"grad", grad}, {"labels", labels}, {"prototypes", protos}, {"logits", logits},
              {"lse", lse}, {"den", den}});
  const c10::cuda::CUDAGuard guard(features.device());
  auto f = features.contiguous();
  const auto acc = acc_type(f.scalar_type());
  auto g = grad.to(acc).contiguous();
  auto y = labels.to(at::kLong).contiguous();
  auto mu = protos.to(f.scalar_type()).contiguous();
  auto s = logits.to(acc).contiguous();
  auto l = lse.to(acc).contiguous();
  auto d = den.to(acc).contiguous();
  const int64_t N = f.size(0), D = f.size(1), K = mu.size(0);
  auto gf = at::empty_like(f);
  if (N == 0) return gf;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "cfc_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cfc_bwd_kernel<scalar_t, acc_t><<<N, THREADS, cfc_bwd_smem(sizeof(acc_t)), stream>>>(
        g.data_ptr<acc_t>(), f.data_ptr<scalar_t>(), y.data_ptr<int64_t>(), mu.data_ptr<scalar_t>(),
        s.data_ptr<acc_t>(), l.data_ptr<acc_t>(), d.data_ptr<acc_t>(), static_cast<acc_t>(tau),
        gf.data_ptr<scalar_t>(), K, D);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gf;
}
#endif  // UDD_FAST_KERNELS_ONLY

}  // namespace udd_fast
