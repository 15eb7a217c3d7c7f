// The Python module udd_fast._C_cuda: the CUDA kernels of csrc/*_cuda.cu.
#include <torch/extension.h>

#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "udd_fast CUDA kernels (see udd_fast/ops/)";
  m.def("crop_resize_forward", &udd_fast::crop_resize_forward);
  m.def("crop_resize_backward", &udd_fast::crop_resize_backward);
  m.def("diff_augment_forward", &udd_fast::diff_augment_forward);
  m.def("diff_augment_backward", &udd_fast::diff_augment_backward);
  m.def("response_map_forward", &udd_fast::response_map_forward);
  m.def("region_mask_forward", &udd_fast::region_mask_forward);
  m.def("cfc_loss_forward", &udd_fast::cfc_loss_forward);
  m.def("cfc_loss_backward", &udd_fast::cfc_loss_backward);
  m.def("aug_layout", &udd_fast::aug_layout);
}
