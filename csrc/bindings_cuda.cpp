// The Python module udd_fast._C_cuda: the CUDA kernels of csrc/*_cuda.cu (entry points: bindings.h).
#include "bindings.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  udd_fast::bind_entry_points(m, "udd_fast CUDA kernels (see udd_fast/ops/)");
}
