// What the CUDA files share (extension udd_fast._C_cuda): float, double, half and bfloat16, with
// arithmetic in float (double for double); backward passes scatter with atomicAdd into a float
// (double) buffer. With -DUDD_FAST_KERNELS_ONLY only the kernels compile, each for the four dtypes,
// without torch's bindings and their headers (bench/compile_report.py: seconds instead of minutes).
#pragma once

#include <ATen/OpMathType.h>  // at::Half, at::BFloat16, at::opmath_type: all the kernels need

#include <cstddef>
#include <cstdint>

#include "common.h"

namespace udd_fast {

constexpr int THREADS = 256;

inline int blocks_for(int64_t total) { return static_cast<int>((total + THREADS - 1) / THREADS); }
constexpr size_t DEFAULT_SMEM = 48 * 1024;  // what a launch may use without opting in

#ifdef UDD_FAST_KERNELS_ONLY
// f(scalar_t{}, acc_t{}) for every dtype the bindings dispatch.
template <typename F>
void for_each_dtype(F f) {
  f(float{}, at::opmath_type<float>{});
  f(double{}, at::opmath_type<double>{});
  f(at::Half{}, at::opmath_type<at::Half>{});
  f(at::BFloat16{}, at::opmath_type<at::BFloat16>{});
}

template <typename... Kernels>
void instantiate(Kernels...) {}  // naming a kernel template's address instantiates it

// A kernels-only build's stand-in for a file's launchers: its kernels, written as name<S, A>, for every
// dtype S (accumulating in A), so that nvcc compiles each.
#define UDD_FAST_INSTANTIATE_KERNELS(op, ...)                  \
  void instantiate_##op() {                                    \
    for_each_dtype([](auto s, auto a) {                        \
      using S = decltype(s);                                   \
      using A = decltype(a);                                   \
      instantiate(__VA_ARGS__);                                \
    });                                                        \
  }
#endif

}  // namespace udd_fast

#ifndef UDD_FAST_KERNELS_ONLY
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "host_checks.h"
#include "ops.h"

namespace udd_fast {

inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Every tensor argument a CUDA tensor on the first one's device (the device guard is set from it):
// a tensor elsewhere would be read through a pointer the kernel cannot dereference.
struct Arg {
  const char* name;
  const at::Tensor& t;
};

inline void check_cuda(std::initializer_list<Arg> args) {
  const Arg& first = *args.begin();
  for (const Arg& a : args) {
    TORCH_CHECK(a.t.is_cuda(), "udd_fast._C_cuda: ", a.name, " must be a CUDA tensor, got one on ", a.t.device());
    TORCH_CHECK(a.t.device() == first.t.device(), "udd_fast._C_cuda: ", a.name, " is on ", a.t.device(), " but ",
                first.name, " is on ", first.t.device(), "; every tensor must be on the same device");
  }
}

}  // namespace udd_fast
#endif  // UDD_FAST_KERNELS_ONLY
