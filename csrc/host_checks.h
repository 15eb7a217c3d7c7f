// Host-side argument checks (and the conversions they check) that the entry points of both extensions
// share: the *_cpu.cpp files include this through cpu_common.h, the *_cuda.cu files through
// cuda_common.cuh outside the kernels-only build (it needs ATen). One place, so the CPU and the CUDA
// entry points refuse the same inputs with the same message.
#pragma once

#include <ATen/ATen.h>

namespace udd_fast {

// response_map: the head holds CH * H * W weights a class and the window weights H * W rows, for the
// feature map f [N, CH, H, W].
inline void check_response_map(const at::Tensor& f, const at::Tensor& head, const at::Tensor& wmat) {
  const int64_t HW = f.size(2) * f.size(3);
  TORCH_CHECK(head.size(1) == f.size(1) * HW && wmat.size(0) == HW, "response_map: head / window weights do not match");
}

// region_mask's inputs as both kernels read them: x contiguous, the masks as bytes, noise, mean and std
// in x's dtype, their shapes checked against x [N, C, H, W] (noise [N, windows, draws, C, H, W]).
struct RegionMaskArgs {
  at::Tensor x, masks, noise, mean, stdv;
  int64_t N, C, HW;
};

inline RegionMaskArgs region_mask_args(const at::Tensor& x, const at::Tensor& masks, const at::Tensor& noise,
                                       const at::Tensor& mean, const at::Tensor& stdv) {
  RegionMaskArgs a;
  a.x = x.contiguous();
  a.masks = masks.to(at::kByte).contiguous();
  a.noise = noise.to(a.x.scalar_type()).contiguous();
  a.mean = mean.to(a.x.scalar_type()).contiguous();
  a.stdv = stdv.to(a.x.scalar_type()).contiguous();
  a.N = a.x.size(0);
  a.C = a.x.size(1);
  a.HW = a.x.size(2) * a.x.size(3);
  const at::Tensor& z = a.noise;
  TORCH_CHECK(z.dim() == 6 && z.size(0) == a.N && z.size(3) == a.C && z.size(4) * z.size(5) == a.HW &&
                  a.masks.size(0) == z.size(1) && a.masks.numel() == z.size(1) * a.HW && a.mean.numel() == a.C &&
                  a.stdv.numel() == a.C,
              "region_mask: shapes do not match");
  return a;
}

// cfc_loss: prototypes [K, D] and labels [N] for the features f [N, D].
inline void check_cfc_loss(const at::Tensor& f, const at::Tensor& labels, const at::Tensor& protos) {
  TORCH_CHECK(protos.size(1) == f.size(1) && labels.numel() == f.size(0), "cfc_loss: shapes do not match");
}

}  // namespace udd_fast
