// The Python module udd_fast._C: the C++ CPU kernels of csrc/*_cpu.cpp (entry points: bindings.h).
#include "bindings.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  udd_fast::bind_entry_points(m, "udd_fast CPU kernels (see udd_fast/ops/)");
}
