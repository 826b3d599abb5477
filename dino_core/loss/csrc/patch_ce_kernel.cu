// The iBOT patch-loss CUDA kernel and its C interface (patch_ce_kernel.h), in the kernel
// library next to the DINO loss; dino_core/loss/patch_cuda.py calls it with ctypes. The
// per-element math is patch_ce_math.h, shared with the host twin patch_ce_host.cpp; dtypes
// and conversions are the DINO loss's (dino_loss_device.cuh). g++ builds it too, against the
// CPU emulation (pipelines/kernels/emulation), for the tests.
//
// Exponents are in base 2 as in the DINO loss (patch_ce_math.h): y = s * log2(e) / tau.
//
// Layout: one block of kThreads threads per token row (M rows of K prototypes; K is the
// prototype count, 8192 to 131072 in DINOv2, so a block has plenty of columns). A block
//   P1  reads its row once: thread t takes columns t, t + kThreads, ... and keeps online
//       statistics (max y, sum of 2^(y - max), <q, y>, m); warp shuffles, then the warps
//       in order through shared memory, give every thread the row's statistics;
//   --  thread 0 writes the row's loss term;
//   P2  (grad given) reads the row again (from L2: the block just read it) and writes the
//       gradient in the logits' dtype, the upstream factor folded in before rounding.
// The scalar loss is the sum of the row terms (a torch sum on the device: no host sync).
#include <cuda_runtime.h>
#include <stdint.h>

#include "device_target.h"
#include "dino_loss_device.cuh"
#include "patch_ce_kernel.h"
#include "patch_ce_math.h"

namespace {
using dino_loss::Acc;
using dino_loss::from_acc;
using dino_loss::to_acc;
using patch_ce::RowStats;

constexpr int kThreads = 256;  // whole warps: the reduction relies on it
constexpr int kWarps = kThreads / 32;

// Every lane ends with its warp's statistics (dino_loss_device.cuh's shuffle trees).
template <typename A>
__device__ __forceinline__ RowStats<A> warp_combine(RowStats<A> st) {
  st.soft = dino_loss::warp_reduce(st.soft);
  st.dot = dino_loss::warp_sum(st.dot);
  st.mass = dino_loss::warp_sum(st.mass);
  return st;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    patch_ce_kernel(const T* student, const Acc<T>* q, const Acc<T>* weight, T* grad,
                    Acc<T>* row_loss, const Acc<T>* upstream, int dim, Acc<T> alpha,
                    Acc<T> grad_scale) {
  using A = Acc<T>;
  // kWarps partial statistics, then the row's (slot kWarps).
  DINO_DYNAMIC_SHARED(unsigned char, smem);
  RowStats<A>* scratch = reinterpret_cast<RowStats<A>*>(smem);
  const int64_t row = blockIdx.x;
  const T* s = student + row * dim;
  const A* qr = q + row * dim;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  // P1: the row's statistics.
  RowStats<A> st = patch_ce::empty_stats<A>();
  for (int k = threadIdx.x; k < dim; k += kThreads) {
    patch_ce::add_column(st, dino_loss::student_exponent(to_acc(s[k]), alpha), qr[k]);
  }
  st = warp_combine(st);
  if (lane == 0) scratch[warp] = st;
  __syncthreads();
  if (threadIdx.x == 0) {
    RowStats<A> total = scratch[0];
    for (int w = 1; w < kWarps; ++w) total = patch_ce::combine(total, scratch[w]);
    scratch[kWarps] = total;
  }
  __syncthreads();
  const RowStats<A> total = scratch[kWarps];
  const A lse = dino_loss::lse2(total.soft);
  const A w = weight[row];
  if (row_loss != nullptr && threadIdx.x == 0) row_loss[row] = patch_ce::row_term(total, lse, w);
  if (grad == nullptr) return;

  // P2: the gradient.
  const A wscale = w * grad_scale * (upstream != nullptr ? upstream[0] : A(1));
  T* g = grad + row * dim;
  for (int k = threadIdx.x; k < dim; k += kThreads) {
    const A y = dino_loss::student_exponent(to_acc(s[k]), alpha);
    from_acc(dino_loss::gradient(y, lse, total.mass, qr[k], wscale), g[k]);
  }
}

template <typename T>
int run(const void* student, const void* q, const void* weight, void* grad, void* row_loss,
        const void* upstream, int rows, int dim, double inv_tau, double grad_scale,
        cudaStream_t stream) {
  using A = Acc<T>;
  if (rows < 0 || (rows > 0 && (dim < 1 || student == nullptr || q == nullptr ||
                                weight == nullptr || (grad == nullptr && row_loss == nullptr)))) {
    return DINO_LOSS_BAD_ARGUMENT;
  }
  if (rows == 0) return 0;
  const size_t smem = sizeof(RowStats<A>) * (kWarps + 1);
  return static_cast<int>(dino_target::launch(
      patch_ce_kernel<T>, dim3(static_cast<unsigned>(rows)), dim3(kThreads), smem, stream,
      static_cast<const T*>(student), static_cast<const A*>(q), static_cast<const A*>(weight),
      static_cast<T*>(grad), static_cast<A*>(row_loss), static_cast<const A*>(upstream), dim,
      static_cast<A>(dino_loss::student_exponent_scale(inv_tau)), static_cast<A>(grad_scale)));
}

}  // namespace

extern "C" DINO_LOSS_EXPORT int patch_ce_rows(int dtype, const void* student,
                                              const void* teacher_probs, const void* weight,
                                              void* grad, void* row_loss, const void* upstream,
                                              int rows, int dim, double inv_student_temp,
                                              double grad_scale, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DINO_LOSS_FLOAT32:
      return run<float>(student, teacher_probs, weight, grad, row_loss, upstream, rows, dim,
                        inv_student_temp, grad_scale, s);
    case DINO_LOSS_FLOAT16:
      return run<__half>(student, teacher_probs, weight, grad, row_loss, upstream, rows, dim,
                         inv_student_temp, grad_scale, s);
    case DINO_LOSS_BFLOAT16:
      return run<__nv_bfloat16>(student, teacher_probs, weight, grad, row_loss, upstream, rows,
                                dim, inv_student_temp, grad_scale, s);
    case DINO_LOSS_FLOAT64:
      return run<double>(student, teacher_probs, weight, grad, row_loss, upstream, rows, dim,
                         inv_student_temp, grad_scale, s);
    default:
      return DINO_LOSS_BAD_DTYPE;
  }
}
