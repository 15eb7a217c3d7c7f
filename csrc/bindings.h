// The Python names of both extensions, listed once: bindings_cpu.cpp (udd_fast._C) and
// bindings_cuda.cpp (udd_fast._C_cuda) define their module with bind_entry_points, so the two expose
// the same entry points (declared in ops.h, defined by each extension's op files). Only the bindings
// files include this, and with it torch/extension.h (pybind11, Python).
#pragma once

#include <torch/extension.h>

#include "ops.h"

namespace udd_fast {

inline void bind_entry_points(pybind11::module_& m, const char* doc) {
  m.doc() = doc;
  m.def("crop_resize_forward", &crop_resize_forward);
  m.def("crop_resize_backward", &crop_resize_backward);
  m.def("diff_augment_forward", &diff_augment_forward);
  m.def("diff_augment_backward", &diff_augment_backward);
  m.def("response_map_forward", &response_map_forward);
  m.def("region_mask_forward", &region_mask_forward);
  m.def("cfc_loss_forward", &cfc_loss_forward);
  m.def("cfc_loss_backward", &cfc_loss_backward);
  m.def("aug_layout", &aug_layout);
}

}  // namespace udd_fast
