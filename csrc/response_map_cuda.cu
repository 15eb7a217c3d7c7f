// response_map on CUDA, forward (references: response_map_ref, window_scores_ref and usage_entropy_ref
// in udd_fast/ops/response_map.py, which also builds the window weights).
#include <algorithm>

#include "cuda_common.cuh"

namespace udd_fast {
namespace {

// one block per sample. Thread p sums cell p of R over the channels (coalesced
// across cells, deterministic), then window scores = R @ wmat (built in Python: upsampling and box
// means are linear in R) and the usage entropy of ReLU(R) from R in shared memory.
template <typename scalar_t, typename acc_t>
__global__ void response_map_kernel(const scalar_t* __restrict__ f, const scalar_t* __restrict__ head,
                                    const int64_t* __restrict__ labels, const acc_t* __restrict__ wmat,
                                    scalar_t* __restrict__ R, scalar_t* __restrict__ scores, scalar_t* __restrict__ ue,
                                    int64_t CH, int64_t HW, int64_t NW) {
  extern __shared__ unsigned char smem[];
  acc_t* r = reinterpret_cast<acc_t*>(smem);
  const int64_t n = blockIdx.x;
  const scalar_t* fn = f + n * CH * HW;
  const scalar_t* wy = head + labels[n] * CH * HW;
  for (int64_t p = threadIdx.x; p < HW; p += blockDim.x) {
    acc_t s = 0;
    for (int64_t ch = 0; ch < CH; ++ch) s += static_cast<acc_t>(wy[ch * HW + p]) * static_cast<acc_t>(fn[ch * HW + p]);
    r[p] = s;
    R[n * HW + p] = static_cast<scalar_t>(s);
  }
  __syncthreads();
  for (int64_t k = threadIdx.x; k < NW; k += blockDim.x) {
    acc_t s = 0;
    for (int64_t p = 0; p < HW; ++p) s += r[p] * wmat[p * NW + k];
    scores[n * NW + k] = static_cast<scalar_t>(s);
  }
  if (threadIdx.x == 0) ue[n] = static_cast<scalar_t>(usage_entropy<acc_t>(r, HW));
}

}  // namespace

#ifdef UDD_FAST_KERNELS_ONLY
UDD_FAST_INSTANTIATE_KERNELS(response_map, response_map_kernel<S, A>)
#else
std::vector<at::Tensor> response_map_forward(const at::Tensor& fmap, const at::Tensor& head, const at::Tensor& labels,
                                             const at::Tensor& wmat) {
  check_cuda({{"feature_map", fmap}, {"head", head}, {"labels", labels}, {"wmat", wmat}});
  const c10::cuda::CUDAGuard guard(fmap.device());
  auto f = fmap.contiguous();
  auto w = head.to(f.scalar_type()).contiguous();
  auto y = labels.to(at::kLong).contiguous();
  const auto acc = acc_type(f.scalar_type());
  auto m = wmat.to(acc).contiguous();
  const int64_t N = f.size(0), CH = f.size(1), H = f.size(2), W = f.size(3), HW = H * W, NW = m.size(1);
  check_response_map(f, w, m);
  auto R = at::empty({N, H, W}, f.options());
  auto scores = at::empty({N, NW}, f.options());
  auto ue = at::empty({N}, f.options());
  if (N == 0) return {R, scores, ue};
  const int threads = static_cast<int>(std::min<int64_t>(256, (HW + 31) / 32 * 32));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "response_map_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // R sits in shared memory: past the default 48 KB (h*w > 6144 cells in float64) opt in to what
    // the device allows, and say so clearly beyond that
    const size_t smem = HW * sizeof(acc_t);
    if (smem > DEFAULT_SMEM) {
      int optin = 0;
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, f.get_device()));
      TORCH_CHECK(smem <= static_cast<size_t>(optin), "response_map: a ", H, "x", W, " feature map needs ", smem,
                  " bytes of shared memory in the CUDA kernel; this device allows ", optin);
      C10_CUDA_CHECK(cudaFuncSetAttribute(response_map_kernel<scalar_t, acc_t>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    }
    response_map_kernel<scalar_t, acc_t><<<N, threads, smem, stream>>>(
        f.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), y.data_ptr<int64_t>(), m.data_ptr<acc_t>(),
        R.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>(), ue.data_ptr<scalar_t>(), CH, HW, NW);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {R, scores, ue};
}
#endif  // UDD_FAST_KERNELS_ONLY

}  // namespace udd_fast
