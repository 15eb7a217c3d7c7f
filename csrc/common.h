// What the C++ (CPU) and the CUDA kernels share. No torch headers: the CUDA kernels compile without
// them (-DUDD_FAST_KERNELS_ONLY, bench/compile_report.py).
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define UDD_FAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define UDD_FAST_HOST_DEVICE inline
#endif

namespace udd_fast {

// diff_augment's parameter layout, as udd_fast/augment.py defines it (tests/ops/test_backends.py checks
// this header and each extension's aug_layout() against it): the column of each parameter in a row,
constexpr int64_t FLIP = 0, BRIGHT = 1, SAT = 2, CONTRAST = 3, TX = 4, TY = 5, CUT_X = 6, CUT_Y = 7,
                  SCALE_X = 8, SCALE_Y = 9, ROT = 10, OP = 11, NUM_PARAMS = 12;
// and the op codes passed from Python; the kernels add -1 = no op (identity) and -2 = op index out of
// range (zero output).
constexpr int64_t CROP = 0, SCALE = 1, ROTATE = 2, IDENTITY = -1;

constexpr double NORM_EPS = 1e-12;  // F.normalize's eps (cfc_loss)

// PyTorch's bilinear source index for align_corners=False: negative coordinates clamp to 0, the
// upper tap is clamped to the last row of the (cropped) input (crop_resize).
template <typename acc_t>
UDD_FAST_HOST_DEVICE void source_index(int64_t dst, int64_t in_size, acc_t scale, int64_t& i0, int64_t& i1,
                                       acc_t& l1) {
  acc_t s = (static_cast<acc_t>(dst) + acc_t(0.5)) * scale - acc_t(0.5);
  if (s < 0) s = 0;
  i0 = static_cast<int64_t>(s);
  if (i0 > in_size - 1) i0 = in_size - 1;
  i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  l1 = s - static_cast<acc_t>(i0);
}

}  // namespace udd_fast
