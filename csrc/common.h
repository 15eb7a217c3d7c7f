// What the C++ (CPU) and the CUDA kernels share. No torch headers: the CUDA kernels compile without
// them (-DUDD_FAST_KERNELS_ONLY, bench/compile_report.py).
#pragma once

#include <cmath>
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
// range or no op code (zero output; see augment_kind).
constexpr int64_t CROP = 0, SCALE = 1, ROTATE = 2, IDENTITY = -1, OUT_OF_RANGE = -2;

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

// response_map's usage entropy of ReLU(r) over the HW cells of r, divided by log(HW) (its largest
// value); 0 where no cell is positive. One loop for the CPU and CUDA, so both sum in the same order.
template <typename acc_t>
UDD_FAST_HOST_DEVICE acc_t usage_entropy(const acc_t* r, int64_t HW) {
  acc_t total = 0, ent = 0;
  for (int64_t p = 0; p < HW; ++p) total += r[p] > 0 ? r[p] : acc_t(0);
  if (total > 0) {
    for (int64_t p = 0; p < HW; ++p) {
      const acc_t q = (r[p] > 0 ? r[p] : acc_t(0)) / total;
      if (q > 0) ent -= q * std::log(q);
    }
  }
  return ent / std::log(static_cast<acc_t>(HW));
}

// diff_augment's sampling, per sample (its parameter row p) and output pixel (i, j): written once here
// so that diff_augment_cpu.cpp and diff_augment_cuda.cu read the same pixels with the same weights and
// colour them alike. acc_t is the arithmetic type (the CPU's scalar_t, CUDA's opmath type).

// The op a sample applies: IDENTITY for a strategy without ops, else the strategy's only op or the one
// its OP column picks among the nops; OUT_OF_RANGE (zero output) for a pick outside them or a code that
// names no op. Only these five reach augment_taps.
template <typename acc_t>
UDD_FAST_HOST_DEVICE int64_t augment_kind(const int64_t* ops, int64_t nops, const acc_t* p) {
  if (nops == 0) return IDENTITY;
  int64_t kind = ops[0];
  if (nops > 1) {
    const int64_t op = static_cast<int64_t>(p[OP]);
    if (op < 0 || op >= nops) return OUT_OF_RANGE;
    kind = ops[op];
  }
  return (kind == IDENTITY || kind == CROP || kind == SCALE || kind == ROTATE) ? kind : OUT_OF_RANGE;
}

// Whether a sample is flipped: the strategy flips (flip) and its FLIP column is past one half.
template <typename acc_t>
UDD_FAST_HOST_DEVICE bool augment_flip(bool flip, const acc_t* p) {
  return flip && p[FLIP] > acc_t(0.5);
}

// Whether output pixel (i, j) is cut out: inside the cut_h x cut_w square centred at (CUT_X, CUT_Y).
template <typename acc_t>
UDD_FAST_HOST_DEVICE bool in_cutout(const acc_t* p, int64_t i, int64_t j, int64_t cut_h, int64_t cut_w) {
  const int64_t r0 = static_cast<int64_t>(p[CUT_X]) - cut_h / 2, c0 = static_cast<int64_t>(p[CUT_Y]) - cut_w / 2;
  return i >= r0 && i < r0 + cut_h && j >= c0 && j < c0 + cut_w;
}

// Where output pixel (i, j) reads the colour-transformed image under op `kind`: up to 4 in-bounds taps
// (row ty, column tx in x, mirrored when flip, weight tw); returns how many. kind is augment_kind's:
// identity and crop (an integer shift, zero fill) take one tap, scale and rotate follow affine_grid +
// grid_sample (bilinear, zeros padding, align_corners=False), OUT_OF_RANGE takes none (zero output).
template <typename acc_t>
UDD_FAST_HOST_DEVICE int augment_taps(int64_t kind, bool flip, const acc_t* p, int64_t i, int64_t j, int64_t H,
                                      int64_t W, int64_t* ty, int64_t* tx, acc_t* tw) {
  if (kind == OUT_OF_RANGE) return 0;
  if (kind == IDENTITY || kind == CROP) {
    int64_t y = i, x = j;
    if (kind == CROP) {
      y += static_cast<int64_t>(p[TX]);
      x += static_cast<int64_t>(p[TY]);
    }
    if (y < 0 || y >= H || x < 0 || x >= W) return 0;
    ty[0] = y; tx[0] = flip ? W - 1 - x : x; tw[0] = 1;
    return 1;
  }
  const acc_t xb = static_cast<acc_t>(2 * j + 1) / W - 1, yb = static_cast<acc_t>(2 * i + 1) / H - 1;
  acc_t gx, gy;
  if (kind == SCALE) {
    gx = p[SCALE_X] * xb;
    gy = p[SCALE_Y] * yb;
  } else {  // ROTATE
    const acc_t co = std::cos(p[ROT]), si = std::sin(p[ROT]);
    gx = co * xb - si * yb;
    gy = si * xb + co * yb;
  }
  const acc_t fx = ((gx + 1) * W - 1) / 2, fy = ((gy + 1) * H - 1) / 2;
  const acc_t x0f = std::floor(fx), y0f = std::floor(fy);
  const acc_t ax = fx - x0f, ay = fy - y0f;
  const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
  int k = 0;
  for (int dy = 0; dy < 2; ++dy) {
    for (int dx = 0; dx < 2; ++dx) {
      const int64_t y = y0 + dy, x = x0 + dx;
      if (y < 0 || y >= H || x < 0 || x >= W) continue;
      ty[k] = y; tx[k] = flip ? W - 1 - x : x;
      tw[k] = (dy ? ay : 1 - ay) * (dx ? ax : 1 - ax);
      ++k;
    }
  }
  return k;
}

// Brightness b, saturation sat and contrast con of value v, at a pixel whose channel mean is tbar, in an
// image of mean mx: contrast uses the image mean of (x + b) after saturation, which is mx + b.
template <typename acc_t>
UDD_FAST_HOST_DEVICE acc_t augment_color(acc_t v, acc_t tbar, acc_t b, acc_t sat, acc_t con, acc_t mx) {
  return con * ((v - tbar) * sat + tbar - mx) + mx + b;
}

// The colour backward at a pixel is gx_c = con * sat * g_c + shared for every channel c, with
// shared = con * (1 - sat) * mean_c(g) + (1 - con) * sum(g) / (C * HW) from the pixel's channel sum
// sum_c and the sample's total sum of g: this returns shared.
template <typename acc_t>
UDD_FAST_HOST_DEVICE acc_t color_grad_shared(acc_t sum_c, acc_t total, acc_t sat, acc_t con, int64_t C, int64_t HW) {
  return con * (1 - sat) * sum_c / C + (1 - con) * total / static_cast<acc_t>(C * HW);
}

}  // namespace udd_fast
