// What the C++ CPU files share (extension udd_fast._C): float and double, work split over the
// intra-op threads by at::parallel_for.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "common.h"
#include "host_checks.h"
#include "ops.h"

namespace udd_fast {

inline void check_floating(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), what, " must be a CPU tensor for udd_fast._C");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, what,
              " must be float32 or float64 for udd_fast._C, got ", t.scalar_type());
}

}  // namespace udd_fast
