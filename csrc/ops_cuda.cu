// CUDA kernels of udd_fast.ops (extension udd_fast._C_cuda): crop_resize and diff_augment (forward
// and backward), response_map and region_mask (forward), cfc_loss (forward and backward), for float,
// double, half and bfloat16 (arithmetic in float, double for double).
// Same semantics and layout of work as the Triton kernels in kernels/ and the CPU ones in
// csrc/ops_cpu.cpp; backward scatters with atomicAdd into a float (double) buffer.
//
// With -DUDD_FAST_KERNELS_ONLY only the kernels are compiled, each for the four dtypes, without
// torch's bindings and their headers (tests/test_compile_cuda.py: seconds instead of minutes).
#include <ATen/OpMathType.h>  // at::Half, at::BFloat16, at::opmath_type: all the kernels need

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t FLIP = 0, BRIGHT = 1, SAT = 2, CONTRAST = 3, TX = 4, TY = 5, CUT_X = 6, CUT_Y = 7,
                  SCALE_X = 8, SCALE_Y = 9, ROT = 10, OP = 11, NUM_PARAMS = 12;
constexpr int64_t CROP = 0, SCALE = 1, ROTATE = 2, IDENTITY = -1;
constexpr int THREADS = 256;

inline int blocks_for(int64_t total) { return static_cast<int>((total + THREADS - 1) / THREADS); }

template <typename acc_t>
__device__ __forceinline__ void source_index(int64_t dst, int64_t in_size, acc_t scale, int64_t& i0, int64_t& i1,
                                             acc_t& l1) {
  acc_t s = (static_cast<acc_t>(dst) + acc_t(0.5)) * scale - acc_t(0.5);
  if (s < 0) s = 0;
  i0 = static_cast<int64_t>(s);
  if (i0 > in_size - 1) i0 = in_size - 1;
  i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  l1 = s - static_cast<acc_t>(i0);
}

// Per output element (n, c, oy, ox): the plane of its source image and its four taps.
template <typename acc_t>
struct CropTaps {
  int64_t plane, r0, r1, c0, c1;
  acc_t ly, lx;
};

template <typename acc_t>
__device__ __forceinline__ CropTaps<acc_t> crop_taps(int64_t e, const int64_t* src, const int64_t* boxes, int64_t C,
                                                    int64_t H, int64_t W, int64_t OH, int64_t OW) {
  const int64_t ox = e % OW, oy = (e / OW) % OH, c = (e / (OW * OH)) % C, n = e / (OW * OH * C);
  const int64_t* b = boxes + 4 * n;
  const int64_t bh = b[2] - b[0], bw = b[3] - b[1];
  CropTaps<acc_t> t;
  int64_t iy0, iy1, ix0, ix1;
  source_index<acc_t>(oy, bh, static_cast<acc_t>(bh) / OH, iy0, iy1, t.ly);
  source_index<acc_t>(ox, bw, static_cast<acc_t>(bw) / OW, ix0, ix1, t.lx);
  t.plane = (src[n] * C + c) * H * W;
  t.r0 = b[0] + iy0; t.r1 = b[0] + iy1; t.c0 = b[1] + ix0; t.c1 = b[1] + ix1;
  return t;
}

template <typename scalar_t, typename acc_t>
__global__ void crop_resize_fwd_kernel(const scalar_t* __restrict__ img, const int64_t* __restrict__ src,
                                       const int64_t* __restrict__ boxes, scalar_t* __restrict__ out, int64_t total,
                                       int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const CropTaps<acc_t> t = crop_taps<acc_t>(e, src, boxes, C, H, W, OH, OW);
  // Reads past the image are the 0.5 padding.
  auto pix = [&](int64_t y, int64_t x) -> acc_t {
    return (y < H && x < W) ? static_cast<acc_t>(img[t.plane + y * W + x]) : acc_t(0.5);
  };
  const acc_t top = (1 - t.lx) * pix(t.r0, t.c0) + t.lx * pix(t.r0, t.c1);
  const acc_t bot = (1 - t.lx) * pix(t.r1, t.c0) + t.lx * pix(t.r1, t.c1);
  out[e] = static_cast<scalar_t>((1 - t.ly) * top + t.ly * bot);
}

template <typename scalar_t, typename acc_t>
__global__ void crop_resize_bwd_kernel(const scalar_t* __restrict__ g, const int64_t* __restrict__ src,
                                       const int64_t* __restrict__ boxes, acc_t* __restrict__ gimg, int64_t total,
                                       int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const CropTaps<acc_t> t = crop_taps<acc_t>(e, src, boxes, C, H, W, OH, OW);
  const acc_t v = static_cast<acc_t>(g[e]);
  auto add = [&](int64_t y, int64_t x, acc_t w) {
    if (y < H && x < W) atomicAdd(gimg + t.plane + y * W + x, w * v);  // padding takes no gradient
  };
  add(t.r0, t.c0, (1 - t.ly) * (1 - t.lx));
  add(t.r0, t.c1, (1 - t.ly) * t.lx);
  add(t.r1, t.c0, t.ly * (1 - t.lx));
  add(t.r1, t.c1, t.ly * t.lx);
}

// Strategy as passed from Python (ops: up to 3 op codes).
struct Spec {
  bool flip, color, cutout;
  int nops;
  int64_t ops[3];
  int64_t cut_h, cut_w;
};

// Taps of output pixel (i, j) of sample with parameter row p, in x coordinates (flip applied):
// returns how many (0 when cut out or the op choice is out of range).
template <typename acc_t>
__device__ __forceinline__ int augment_taps(const Spec& s, const acc_t* p, int64_t i, int64_t j, int64_t H, int64_t W,
                                            int64_t* ty, int64_t* tx, acc_t* tw) {
  if (s.cutout) {
    const int64_t r0 = static_cast<int64_t>(p[CUT_X]) - s.cut_h / 2, c0 = static_cast<int64_t>(p[CUT_Y]) - s.cut_w / 2;
    if (i >= r0 && i < r0 + s.cut_h && j >= c0 && j < c0 + s.cut_w) return 0;
  }
  int64_t kind = IDENTITY;
  if (s.nops == 1) {
    kind = s.ops[0];
  } else if (s.nops > 1) {
    const int64_t op = static_cast<int64_t>(p[OP]);
    if (op < 0 || op >= s.nops) return 0;
    kind = s.ops[op];
  }
  const bool flip = s.flip && p[FLIP] > acc_t(0.5);
  int k = 0;
  if (kind == IDENTITY || kind == CROP) {
    int64_t y = i, x = j;
    if (kind == CROP) { y += static_cast<int64_t>(p[TX]); x += static_cast<int64_t>(p[TY]); }
    if (y < 0 || y >= H || x < 0 || x >= W) return 0;
    ty[0] = y; tx[0] = flip ? W - 1 - x : x; tw[0] = 1;
    return 1;
  }
  const acc_t xb = static_cast<acc_t>(2 * j + 1) / W - 1, yb = static_cast<acc_t>(2 * i + 1) / H - 1;
  acc_t gx, gy;
  if (kind == SCALE) {
    gx = p[SCALE_X] * xb;
    gy = p[SCALE_Y] * yb;
  } else {
    const acc_t co = cos(p[ROT]), si = sin(p[ROT]);
    gx = co * xb - si * yb;
    gy = si * xb + co * yb;
  }
  const acc_t fx = ((gx + 1) * W - 1) / 2, fy = ((gy + 1) * H - 1) / 2;
  const acc_t x0f = floor(fx), y0f = floor(fy);
  const acc_t ax = fx - x0f, ay = fy - y0f;
  const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
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

// One thread per output pixel (n, i, j), all channels.
template <typename scalar_t, typename acc_t>
__global__ void diff_augment_fwd_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ params,
                                        const int64_t* __restrict__ index, const acc_t* __restrict__ mean,
                                        scalar_t* __restrict__ out, int64_t total, int64_t C, int64_t H, int64_t W,
                                        Spec s) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const int64_t HW = H * W, n = e / HW, q = e % HW, i = q / W, j = q % W;
  const acc_t* p = params + NUM_PARAMS * index[n];
  const scalar_t* xn = x + n * C * HW;
  int64_t ty[4], tx[4];
  acc_t tw[4], tbar[4];
  const int nk = augment_taps<acc_t>(s, p, i, j, H, W, ty, tx, tw);
  acc_t b = 0, sat = 1, con = 1, mx = 0;
  if (s.color) {
    b = p[BRIGHT]; sat = p[SAT]; con = p[CONTRAST]; mx = mean[n];
    for (int k = 0; k < nk; ++k) {
      acc_t acc = 0;
      for (int64_t c = 0; c < C; ++c) acc += static_cast<acc_t>(xn[c * HW + ty[k] * W + tx[k]]);
      tbar[k] = acc / C;
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    acc_t acc = 0;
    for (int k = 0; k < nk; ++k) {
      acc_t v = static_cast<acc_t>(xn[c * HW + ty[k] * W + tx[k]]);
      // brightness, saturation, contrast with the image mean of (x + b) = mean(x) + b
      if (s.color) v = con * ((v - tbar[k]) * sat + tbar[k] - mx) + mx + b;
      acc += tw[k] * v;
    }
    out[n * C * HW + c * HW + q] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void diff_augment_scatter_kernel(const scalar_t* __restrict__ g, const acc_t* __restrict__ params,
                                            const int64_t* __restrict__ index, acc_t* __restrict__ g2, int64_t total,
                                            int64_t C, int64_t H, int64_t W, Spec s) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const int64_t HW = H * W, n = e / HW, q = e % HW, i = q / W, j = q % W;
  const acc_t* p = params + NUM_PARAMS * index[n];
  int64_t ty[4], tx[4];
  acc_t tw[4];
  const int nk = augment_taps<acc_t>(s, p, i, j, H, W, ty, tx, tw);
  for (int64_t c = 0; c < C; ++c) {
    const acc_t v = static_cast<acc_t>(g[n * C * HW + c * HW + q]);
    for (int k = 0; k < nk; ++k) atomicAdd(g2 + n * C * HW + c * HW + ty[k] * W + tx[k], tw[k] * v);
  }
}

// gx_c = con*sat*g_c + con*(1-sat)*mean_c(g) + (1-con)*sum(g[n])/(C*H*W), per pixel.
template <typename scalar_t, typename acc_t>
__global__ void colour_bwd_kernel(const acc_t* __restrict__ g2, const acc_t* __restrict__ params,
                                  const int64_t* __restrict__ index, const acc_t* __restrict__ gsum,
                                  scalar_t* __restrict__ gx, int64_t total, int64_t C, int64_t HW) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const int64_t n = e / HW, base = n * C * HW + e % HW;
  const acc_t* p = params + NUM_PARAMS * index[n];
  const acc_t sat = p[SAT], con = p[CONTRAST];
  acc_t sum = 0;
  for (int64_t c = 0; c < C; ++c) sum += g2[base + c * HW];
  const acc_t shared = con * (1 - sat) * sum / C + (1 - con) * gsum[n] / static_cast<acc_t>(C * HW);
  for (int64_t c = 0; c < C; ++c) gx[base + c * HW] = static_cast<scalar_t>(con * sat * g2[base + c * HW] + shared);
}

// -- response_map: one block per sample. Thread p sums cell p of R over the channels (coalesced
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
  if (threadIdx.x == 0) {
    acc_t total = 0, ent = 0;
    for (int64_t p = 0; p < HW; ++p) total += r[p] > 0 ? r[p] : acc_t(0);
    if (total > 0) {
      for (int64_t p = 0; p < HW; ++p) {
        const acc_t q = (r[p] > 0 ? r[p] : acc_t(0)) / total;
        if (q > 0) ent -= q * log(q);
      }
    }
    ue[n] = static_cast<scalar_t>(ent / log(static_cast<acc_t>(HW)));
  }
}

// -- region_mask: one thread per output element (n, window, draw, c, pixel).
template <typename scalar_t, typename acc_t>
__global__ void region_mask_kernel(const scalar_t* __restrict__ x, const uint8_t* __restrict__ masks,
                                   const scalar_t* __restrict__ noise, const scalar_t* __restrict__ mean,
                                   const scalar_t* __restrict__ stdv, scalar_t* __restrict__ out, int64_t total,
                                   int64_t NW, int64_t D, int64_t C, int64_t HW) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  const int64_t p = e % HW, c = (e / HW) % C, w = (e / (HW * C * D)) % NW, n = e / (HW * C * D * NW);
  const acc_t xv = static_cast<acc_t>(x[(n * C + c) * HW + p]);
  acc_t v = masks[w * HW + p] ? xv + static_cast<acc_t>(noise[e]) : xv;  // outside: noise * 0 adds nothing
  v = v < 0 ? acc_t(0) : (v > 1 ? acc_t(1) : v);
  out[e] = static_cast<scalar_t>((v - static_cast<acc_t>(mean[c])) / static_cast<acc_t>(stdv[c]));
}

// -- cfc_loss: one block per row. Forward: |f| and the dot products with a tile of CFC_CLASSES
// prototypes at a time by per-thread partial sums, warp shuffles and one shared slot per warp and
// class (deterministic), the tile's logits written out, then logsumexp and loss by block reductions.
// Backward: ds = g (softmax - onehot) / tau a tile of THREADS classes at a time in shared memory,
// <z, dz> by a block reduction, then df = (dz - z <z, dz>) / |f| with dz recomputed (dz / eps where
// the norm is clamped). Shared memory does not grow with K (it passed 48 KB at K ~ 750 in double when
// the forward held every class at once).
constexpr double NORM_EPS = 1e-12;  // F.normalize's eps
constexpr int WARPS = THREADS / 32;
constexpr int CFC_CLASSES = 32;  // prototypes per forward tile

constexpr size_t cfc_fwd_smem(size_t acc_bytes) { return (WARPS * CFC_CLASSES + WARPS) * acc_bytes; }
constexpr size_t cfc_bwd_smem(size_t acc_bytes) { return (THREADS + WARPS) * acc_bytes; }
constexpr size_t DEFAULT_SMEM = 48 * 1024;  // what a launch may use without opting in
static_assert(cfc_fwd_smem(sizeof(double)) <= DEFAULT_SMEM && cfc_bwd_smem(sizeof(double)) <= DEFAULT_SMEM,
              "cfc_loss shared memory must fit the default at any K");

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Sum (or max) over the block, in a fixed order; every thread gets it. part: [WARPS] in shared memory.
template <typename acc_t, bool MAX>
__device__ __forceinline__ acc_t block_reduce(acc_t v, acc_t* part) {
  for (int o = 16; o > 0; o >>= 1) {
    const acc_t w = __shfl_down_sync(0xffffffffu, v, o);
    v = MAX ? (w > v ? w : v) : v + w;
  }
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  acc_t r = part[0];
  for (int w = 1; w < WARPS; ++w) r = MAX ? (part[w] > r ? part[w] : r) : r + part[w];
  __syncthreads();  // part is reused by the next reduction
  return r;
}

template <typename scalar_t, typename acc_t>
__global__ void cfc_fwd_kernel(const scalar_t* __restrict__ f, const int64_t* __restrict__ labels,
                               const scalar_t* __restrict__ mu, acc_t tau, acc_t* __restrict__ loss,
                               acc_t* __restrict__ logits, acc_t* __restrict__ lse, acc_t* __restrict__ den, int64_t K,
                               int64_t D) {
  extern __shared__ unsigned char smem[];
  acc_t* red = reinterpret_cast<acc_t*>(smem);  // [WARPS][CFC_CLASSES]: the tile's partial dots
  acc_t* part = red + WARPS * CFC_CLASSES;     // [WARPS]: block reductions
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i = blockIdx.x;
  const scalar_t* fi = f + i * D;
  acc_t* si = logits + i * K;
  acc_t sq = 0;
  for (int64_t e = threadIdx.x; e < D; e += blockDim.x) {
    const acc_t v = static_cast<acc_t>(fi[e]);
    sq += v * v;
  }
  const acc_t d = max(sqrt(block_reduce<acc_t, false>(sq, part)), static_cast<acc_t>(NORM_EPS));
  for (int64_t k0 = 0; k0 < K; k0 += CFC_CLASSES) {
    const int kn = K - k0 < CFC_CLASSES ? static_cast<int>(K - k0) : CFC_CLASSES;
    for (int k = 0; k < kn; ++k) {
      const scalar_t* mk = mu + (k0 + k) * D;
      acc_t s = 0;
      for (int64_t e = threadIdx.x; e < D; e += blockDim.x) s += static_cast<acc_t>(fi[e]) * static_cast<acc_t>(mk[e]);
      s = warp_sum(s);
      if (lane == 0) red[warp * CFC_CLASSES + k] = s;
    }
    __syncthreads();
    if (threadIdx.x < kn) {
      acc_t s = 0;
      for (int w = 0; w < WARPS; ++w) s += red[w * CFC_CLASSES + threadIdx.x];
      si[k0 + threadIdx.x] = s / d / tau;
    }
    __syncthreads();  // red is refilled by the next tile; the logits are visible to the whole block
  }
  acc_t mx = -INFINITY;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) mx = max(mx, si[k]);
  mx = block_reduce<acc_t, true>(mx, part);
  acc_t sum = 0;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) sum += exp(si[k] - mx);
  sum = block_reduce<acc_t, false>(sum, part);
  if (threadIdx.x == 0) {
    lse[i] = mx + log(sum);
    den[i] = d;
    loss[i] = lse[i] - si[labels[i]];
  }
}

template <typename scalar_t, typename acc_t>
__global__ void cfc_bwd_kernel(const acc_t* __restrict__ g, const scalar_t* __restrict__ f,
                               const int64_t* __restrict__ labels, const scalar_t* __restrict__ mu,
                               const acc_t* __restrict__ logits, const acc_t* __restrict__ lse,
                               const acc_t* __restrict__ den, acc_t tau, scalar_t* __restrict__ gf, int64_t K,
                               int64_t D) {
  extern __shared__ unsigned char smem[];
  acc_t* ds = reinterpret_cast<acc_t*>(smem);  // [THREADS]: a tile of classes
  acc_t* part = ds + THREADS;                  // [WARPS]
  const int64_t i = blockIdx.x;
  const scalar_t* fi = f + i * D;
  const acc_t d = den[i], gi = g[i], li = lse[i];
  const int64_t y = labels[i];
  // dz[e] = sum_k ds_k mu[k, e] for this thread's e of chunk e0 (every thread takes part in the
  // tile loads and barriers, in range or not)
  auto dz_at = [&](int64_t e) {
    acc_t dz = 0;
    for (int64_t k0 = 0; k0 < K; k0 += THREADS) {
      const int64_t k = k0 + threadIdx.x;
      if (k < K) ds[threadIdx.x] = gi * (exp(logits[i * K + k] - li) - (k == y ? acc_t(1) : acc_t(0))) / tau;
      __syncthreads();
      const int kn = K - k0 < THREADS ? static_cast<int>(K - k0) : THREADS;
      if (e < D)
        for (int kk = 0; kk < kn; ++kk) dz += ds[kk] * static_cast<acc_t>(mu[(k0 + kk) * D + e]);
      __syncthreads();
    }
    return dz;
  };
  acc_t zdz = 0;
  for (int64_t e0 = 0; e0 < D; e0 += blockDim.x) {
    const int64_t e = e0 + threadIdx.x;
    const acc_t dz = dz_at(e);
    if (e < D) zdz += static_cast<acc_t>(fi[e]) / d * dz;
  }
  acc_t proj = block_reduce<acc_t, false>(zdz, part);
  if (d <= static_cast<acc_t>(NORM_EPS)) proj = 0;
  for (int64_t e0 = 0; e0 < D; e0 += blockDim.x) {
    const int64_t e = e0 + threadIdx.x;
    const acc_t dz = dz_at(e);
    if (e < D) gf[i * D + e] = static_cast<scalar_t>((dz - static_cast<acc_t>(fi[e]) / d * proj) / d);
  }
}

}  // namespace

#ifdef UDD_FAST_KERNELS_ONLY
namespace {
// Every kernel for every dtype the dispatch of the bindings instantiates.
template <typename scalar_t>
void instantiate() {
  using acc_t = at::opmath_type<scalar_t>;
  void* kernels[] = {(void*)&crop_resize_fwd_kernel<scalar_t, acc_t>, (void*)&crop_resize_bwd_kernel<scalar_t, acc_t>,
                     (void*)&diff_augment_fwd_kernel<scalar_t, acc_t>,
                     (void*)&diff_augment_scatter_kernel<scalar_t, acc_t>, (void*)&colour_bwd_kernel<scalar_t, acc_t>,
                     (void*)&response_map_kernel<scalar_t, acc_t>, (void*)&region_mask_kernel<scalar_t, acc_t>,
                     (void*)&cfc_fwd_kernel<scalar_t, acc_t>, (void*)&cfc_bwd_kernel<scalar_t, acc_t>};
  (void)kernels;
}
}  // namespace
void udd_fast_instantiate_kernels() {
  instantiate<float>();
  instantiate<double>();
  instantiate<at::Half>();
  instantiate<at::BFloat16>();
}
#else
#include <torch/extension.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace {

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Every tensor argument a CUDA tensor on the first one's device (the device guard is set from it):
// a tensor elsewhere would be read through a pointer the kernel cannot dereference.
struct Arg {
  const char* name;
  const at::Tensor& t;
};

void check_cuda(std::initializer_list<Arg> args) {
  const Arg& first = *args.begin();
  for (const Arg& a : args) {
    TORCH_CHECK(a.t.is_cuda(), "udd_fast._C_cuda: ", a.name, " must be a CUDA tensor, got one on ", a.t.device());
    TORCH_CHECK(a.t.device() == first.t.device(), "udd_fast._C_cuda: ", a.name, " is on ", a.t.device(), " but ",
                first.name, " is on ", first.t.device(), "; every tensor must be on the same device");
  }
}

Spec make_spec(bool flip, bool color, bool cutout, const std::vector<int64_t>& ops, int64_t cut_h, int64_t cut_w) {
  TORCH_CHECK(ops.size() <= 3, "at most 3 ops");
  Spec s{flip, color, cutout, static_cast<int>(ops.size()), {0, 0, 0}, cut_h, cut_w};
  for (size_t k = 0; k < ops.size(); ++k) s.ops[k] = ops[k];
  return s;
}

at::Tensor crop_resize_forward(const at::Tensor& images, const at::Tensor& src, const at::Tensor& boxes, int64_t oh,
                               int64_t ow) {
  check_cuda({{"images", images}, {"src", src}, {"boxes", boxes}});
  const c10::cuda::CUDAGuard guard(images.device());
  auto img = images.contiguous();
  auto s = src.to(at::kLong).contiguous();
  auto b = boxes.to(at::kLong).contiguous();
  const int64_t N = s.size(0), C = img.size(1), H = img.size(2), W = img.size(3);
  auto out = at::empty({N, C, oh, ow}, img.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, img.scalar_type(), "crop_resize_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    crop_resize_fwd_kernel<scalar_t, acc_t><<<blocks_for(total), THREADS, 0, stream>>>(
        img.data_ptr<scalar_t>(), s.data_ptr<int64_t>(), b.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), total, C, H,
        W, oh, ow);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor crop_resize_backward(const at::Tensor& grad_out, const at::Tensor& src, const at::Tensor& boxes,
                                int64_t num_images, int64_t h, int64_t w) {
  check_cuda({{"grad_out", grad_out}, {"src", src}, {"boxes", boxes}});
  const c10::cuda::CUDAGuard guard(grad_out.device());
  auto g = grad_out.contiguous();
  auto s = src.to(at::kLong).contiguous();
  auto b = boxes.to(at::kLong).contiguous();
  const int64_t C = g.size(1), OH = g.size(2), OW = g.size(3);
  auto gimg = at::zeros({num_images, C, h, w}, g.options().dtype(acc_type(g.scalar_type())));
  const int64_t total = g.numel();
  if (total == 0) return gimg.to(g.scalar_type());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "crop_resize_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    crop_resize_bwd_kernel<scalar_t, acc_t><<<blocks_for(total), THREADS, 0, stream>>>(
        g.data_ptr<scalar_t>(), s.data_ptr<int64_t>(), b.data_ptr<int64_t>(), gimg.data_ptr<acc_t>(), total, C, h, w,
        OH, OW);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gimg.to(g.scalar_type());
}

at::Tensor diff_augment_forward(const at::Tensor& x, const at::Tensor& params, const at::Tensor& index,
                                const at::Tensor& mean, bool flip, bool color, bool cutout, std::vector<int64_t> ops,
                                int64_t cut_h, int64_t cut_w) {
  check_cuda({{"x", x}, {"params", params}, {"index", index}});
  if (color) check_cuda({{"x", x}, {"mean", mean}});  // read only with colour
  const c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  const auto acc = acc_type(xc.scalar_type());
  auto p = params.to(acc).contiguous();
  auto idx = index.to(at::kLong).contiguous();
  auto mu = color ? mean.to(acc).contiguous() : p;  // unused without colour
  const Spec s = make_spec(flip, color, cutout, ops, cut_h, cut_w);
  auto out = at::empty_like(xc);
  const int64_t total = xc.size(0) * xc.size(2) * xc.size(3);
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "diff_augment_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    diff_augment_fwd_kernel<scalar_t, acc_t><<<blocks_for(total), THREADS, 0, stream>>>(
        xc.data_ptr<scalar_t>(), p.data_ptr<acc_t>(), idx.data_ptr<int64_t>(), mu.data_ptr<acc_t>(),
        out.data_ptr<scalar_t>(), total, xc.size(1), xc.size(2), xc.size(3), s);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor diff_augment_backward(const at::Tensor& grad_out, const at::Tensor& params, const at::Tensor& index,
                                 bool flip, bool color, bool cutout, std::vector<int64_t> ops, int64_t cut_h,
                                 int64_t cut_w) {
  check_cuda({{"grad_out", grad_out}, {"params", params}, {"index", index}});
  const c10::cuda::CUDAGuard guard(grad_out.device());
  auto g = grad_out.contiguous();
  const auto acc = acc_type(g.scalar_type());
  auto p = params.to(acc).contiguous();
  auto idx = index.to(at::kLong).contiguous();
  const Spec s = make_spec(flip, color, cutout, ops, cut_h, cut_w);
  auto g2 = at::zeros(g.sizes(), g.options().dtype(acc));
  const int64_t C = g.size(1), HW = g.size(2) * g.size(3), total = g.size(0) * HW;
  if (total == 0) return g2.to(g.scalar_type());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "diff_augment_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    diff_augment_scatter_kernel<scalar_t, acc_t><<<blocks_for(total), THREADS, 0, stream>>>(
        g.data_ptr<scalar_t>(), p.data_ptr<acc_t>(), idx.data_ptr<int64_t>(), g2.data_ptr<acc_t>(), total, C,
        g.size(2), g.size(3), s);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!color) return g2.to(g.scalar_type());
  auto gsum = g2.sum({1, 2, 3});
  auto gx = at::empty_like(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "diff_augment_colour_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    colour_bwd_kernel<scalar_t, acc_t><<<blocks_for(total), THREADS, 0, stream>>>(
        g2.data_ptr<acc_t>(), p.data_ptr<acc_t>(), idx.data_ptr<int64_t>(), gsum.data_ptr<acc_t>(),
        gx.data_ptr<scalar_t>(), total, C, HW);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gx;
}

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
  TORCH_CHECK(w.size(1) == CH * HW && m.size(0) == HW, "response_map: head / window weights do not match");
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

at::Tensor region_mask_forward(const at::Tensor& x, const at::Tensor& masks, const at::Tensor& noise,
                               const at::Tensor& mean, const at::Tensor& stdv) {
  check_cuda({{"x", x}, {"masks", masks}, {"noise", noise}, {"mean", mean}, {"std", stdv}});
  const c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  auto m = masks.to(at::kByte).contiguous();
  auto z = noise.to(xc.scalar_type()).contiguous();
  auto mu = mean.to(xc.scalar_type()).contiguous();
  auto sd = stdv.to(xc.scalar_type()).contiguous();
  const int64_t N = xc.size(0), C = xc.size(1), HW = xc.size(2) * xc.size(3);
  TORCH_CHECK(z.dim() == 6 && z.size(0) == N && z.size(3) == C && z.size(4) * z.size(5) == HW &&
                  m.size(0) == z.size(1) && m.numel() == z.size(1) * HW && mu.numel() == C && sd.numel() == C,
              "region_mask: shapes do not match");
  auto out = at::empty_like(z);
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "region_mask_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    region_mask_kernel<scalar_t, acc_t><<<blocks_for(total), THREADS, 0, stream>>>(
        xc.data_ptr<scalar_t>(), m.data_ptr<uint8_t>(), z.data_ptr<scalar_t>(), mu.data_ptr<scalar_t>(),
        sd.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), total, z.size(1), z.size(2), C, HW);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::vector<at::Tensor> cfc_loss_forward(const at::Tensor& features, const at::Tensor& labels,
                                         const at::Tensor& protos, double tau) {
  check_cuda({{"features", features}, {"labels", labels}, {"prototypes", protos}});
  const c10::cuda::CUDAGuard guard(features.device());
  auto f = features.contiguous();
  auto y = labels.to(at::kLong).contiguous();
  auto mu = protos.to(f.scalar_type()).contiguous();
  const int64_t N = f.size(0), D = f.size(1), K = mu.size(0);
  TORCH_CHECK(mu.size(1) == D && y.numel() == N, "cfc_loss: shapes do not match");
  const auto opts = f.options().dtype(acc_type(f.scalar_type()));
  auto loss = at::empty({N}, opts);
  auto lse = at::empty({N}, opts);
  auto den = at::empty({N}, opts);
  auto logits = at::empty({N, K}, opts);
  if (N == 0) return {loss, logits, lse, den};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "cfc_loss_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cfc_fwd_kernel<scalar_t, acc_t><<<N, THREADS, cfc_fwd_smem(sizeof(acc_t)), stream>>>(
        f.data_ptr<scalar_t>(), y.data_ptr<int64_t>(), mu.data_ptr<scalar_t>(), static_cast<acc_t>(tau),
        loss.data_ptr<acc_t>(), logits.data_ptr<acc_t>(), lse.data_ptr<acc_t>(), den.data_ptr<acc_t>(), K, D);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {loss, logits, lse, den};
}

at::Tensor cfc_loss_backward(const at::Tensor& grad, const at::Tensor& features, const at::Tensor& labels,
                             const at::Tensor& protos, const at::Tensor& logits, const at::Tensor& lse,
                             const at::Tensor& den, double tau) {
  check_cuda({{"features", features}, {"grad", grad}, {"labels", labels}, {"prototypes", protos}, {"logits", logits},
              {"lse", lse}, {"den", den}});
  const c10::cuda::CUDAGuard guard(features.device());
  auto f = features.contiguous();
  const auto acc = acc_type(f.scalar_type());
  auto g = grad.to(acc).contiguous();
  auto y = labels.to(at::kLong).contiguous();
  auto mu = protos.to(f.scalar_type()).contiguous();
  auto s = logits.to(acc).contiguous();
  auto l = lse.to(acc).contiguous();
  auto d = den.to(acc).contiguous();
  const int64_t N = f.size(0), D = f.size(1), K = mu.size(0);
  auto gf = at::empty_like(f);
  if (N == 0) return gf;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "cfc_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cfc_bwd_kernel<scalar_t, acc_t><<<N, THREADS, cfc_bwd_smem(sizeof(acc_t)), stream>>>(
        g.data_ptr<acc_t>(), f.data_ptr<scalar_t>(), y.data_ptr<int64_t>(), mu.data_ptr<scalar_t>(),
        s.data_ptr<acc_t>(), l.data_ptr<acc_t>(), d.data_ptr<acc_t>(), static_cast<acc_t>(tau),
        gf.data_ptr<scalar_t>(), K, D);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gf;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "udd_fast CUDA kernels (see udd_fast/ops.py)";
  m.def("crop_resize_forward", &crop_resize_forward);
  m.def("crop_resize_backward", &crop_resize_backward);
  m.def("diff_augment_forward", &diff_augment_forward);
  m.def("diff_augment_backward", &diff_augment_backward);
  m.def("response_map_forward", &response_map_forward);
  m.def("region_mask_forward", &region_mask_forward);
  m.def("cfc_loss_forward", &cfc_loss_forward);
  m.def("cfc_loss_backward", &cfc_loss_backward);
}
#endif  // UDD_FAST_KERNELS_ONLY
