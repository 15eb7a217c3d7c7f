// The entry points of both extensions, udd_fast._C (the *_cpu.cpp files) and udd_fast._C_cuda (the
// *_cuda.cu files): the same names and arguments as the Triton launchers in kernels/, called by
// udd_fast/ops/<op>.py, bound by bindings.h. The Python side validates the inputs and makes them
// contiguous. ATen only: the bindings files alone include torch/extension.h (pybind11, Python), which
// keeps the op files' compiles short.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "common.h"

namespace udd_fast {

at::Tensor crop_resize_forward(const at::Tensor& images, const at::Tensor& src, const at::Tensor& boxes, int64_t oh,
                               int64_t ow);
at::Tensor crop_resize_backward(const at::Tensor& grad_out, const at::Tensor& src, const at::Tensor& boxes,
                                int64_t num_images, int64_t h, int64_t w);

at::Tensor diff_augment_forward(const at::Tensor& x, const at::Tensor& params, const at::Tensor& index,
                                const at::Tensor& mean, bool flip, bool color, bool cutout, std::vector<int64_t> ops,
                                int64_t cut_h, int64_t cut_w);
at::Tensor diff_augment_backward(const at::Tensor& grad_out, const at::Tensor& params, const at::Tensor& index,
                                 bool flip, bool color, bool cutout, std::vector<int64_t> ops, int64_t cut_h,
                                 int64_t cut_w);

std::vector<at::Tensor> response_map_forward(const at::Tensor& fmap, const at::Tensor& head, const at::Tensor& labels,
                                             const at::Tensor& wmat);

at::Tensor region_mask_forward(const at::Tensor& x, const at::Tensor& masks, const at::Tensor& noise,
                               const at::Tensor& mean, const at::Tensor& stdv);

std::vector<at::Tensor> cfc_loss_forward(const at::Tensor& features, const at::Tensor& labels,
                                         const at::Tensor& protos, double tau);
at::Tensor cfc_loss_backward(const at::Tensor& grad, const at::Tensor& features, const at::Tensor& labels,
                             const at::Tensor& protos, const at::Tensor& logits, const at::Tensor& lse,
                             const at::Tensor& den, double tau);

// common.h's parameter layout by name, bound as aug_layout() so that the tests can compare it.
inline std::map<std::string, int64_t> aug_layout() {
  return {{"FLIP", FLIP},         {"BRIGHT", BRIGHT},   {"SAT", SAT},       {"CONTRAST", CONTRAST},
          {"TX", TX},             {"TY", TY},           {"CUT_X", CUT_X},   {"CUT_Y", CUT_Y},
          {"SCALE_X", SCALE_X},   {"SCALE_Y", SCALE_Y}, {"ROT", ROT},       {"OP", OP},
          {"NUM_PARAMS", NUM_PARAMS}, {"CROP", CROP},   {"SCALE", SCALE},   {"ROTATE", ROTATE}};
}

}  // namespace udd_fast
