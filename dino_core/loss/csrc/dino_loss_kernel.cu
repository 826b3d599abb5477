// DINO loss CUDA kernels: student side (loss + gradient) and teacher side (probabilities).
//
// Only CUDA headers are included, so `nvcc -c` compile-checks this file on a machine without
// a GPU and without torch's CUDA headers; dino_loss_binding.cpp is the torch side. The math
// (see dino_core/loss/fused.py): for student row (view v, sample b), x = s * inv_tau,
//   Q   = q[other global view] (v = 0, 1) or q[view 0] + q[view 1] (v >= 2),   n = sum_k Q
//   row_loss = n * logsumexp(x) - <Q, x>
//   grad     = grad_scale * (n * softmax(x) - Q)
// One block per row. Pass 1 reads the row once and keeps an online (max, sum of exp) pair,
// <Q, x> and n per thread; one block reduction; pass 2 re-reads the row (mostly from L2) and
// writes the gradient. Loads are 16-byte vectors when the row length and the pointers allow.
// Inputs are assumed finite; a NaN anywhere in a row makes its loss NaN.
//
// In place (grad == student, the in-place backward): safe because every element of a row is
// read in pass 1 before the block barrier inside block_reduce, and in pass 2 each thread
// reads a vector of elements and then writes exactly that vector, which no other thread of
// the block reads or writes; other blocks own other rows. The in-place kernel takes one
// pointer without __restrict__ (the out-of-place kernel keeps its __restrict__ pointers).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>
#include <stdint.h>

#include "dino_loss_kernel.h"

namespace {

constexpr int kThreads = 256;  // threads per block (whole warps; the reduction relies on it)
constexpr int kWarps = kThreads / 32;
constexpr int kVecBytes = 16;  // one 128-bit load of student / teacher logits per step

// ----------------------------------------------------------------- type helpers
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ double to_acc(double x) { return x; }

__device__ __forceinline__ void from_acc(float x, float& out) { out = x; }
__device__ __forceinline__ void from_acc(float x, __half& out) { out = __float2half_rn(x); }
__device__ __forceinline__ void from_acc(float x, __nv_bfloat16& out) {
  out = __float2bfloat16_rn(x);
}
__device__ __forceinline__ void from_acc(double x, double& out) { out = x; }

__device__ __forceinline__ float acc_exp(float x) { return expf(x); }
__device__ __forceinline__ double acc_exp(double x) { return exp(x); }
__device__ __forceinline__ float acc_log(float x) { return logf(x); }
__device__ __forceinline__ double acc_log(double x) { return log(x); }
__device__ __forceinline__ float neg_inf(float) { return -CUDART_INF_F; }
__device__ __forceinline__ double neg_inf(double) { return -CUDART_INF; }

// N consecutive elements moved as one aligned vector (16 or 32 bytes).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& x) {
  *reinterpret_cast<Vec<T, N>*>(p) = x;
}

// ----------------------------------------------------------------- row statistics
template <typename A>
struct RowStats {
  A max;   // running max of x
  A sum;   // sum of exp(x - max)
  A dot;   // sum of Q * x
  A mass;  // sum of Q
};

template <typename A>
__device__ __forceinline__ RowStats<A> empty_stats() {
  RowStats<A> st;
  st.max = neg_inf(A(0));
  st.sum = A(0);
  st.dot = A(0);
  st.mass = A(0);
  return st;
}

// Adds N values x (with teacher weights qk) to a thread's statistics: rescale once to the
// new running max, then one exp per value.
template <typename A, int N>
__device__ __forceinline__ void push(RowStats<A>& st, const A (&x)[N], const A (&qk)[N]) {
  A vmax = x[0];
#pragma unroll
  for (int j = 1; j < N; ++j) vmax = x[j] > vmax ? x[j] : vmax;
  if (vmax > st.max) {
    st.sum *= acc_exp(st.max - vmax);  // exp(-inf) = 0 on the first values
    st.max = vmax;
  }
#pragma unroll
  for (int j = 0; j < N; ++j) {
    st.sum += acc_exp(x[j] - st.max);
    st.dot += qk[j] * x[j];
    st.mass += qk[j];
  }
}

template <typename A>
__device__ __forceinline__ RowStats<A> combine(const RowStats<A>& a, const RowStats<A>& b) {
  RowStats<A> r;
  r.max = a.max > b.max ? a.max : b.max;
  if (r.max == neg_inf(A(0))) {
    r.sum = A(0);  // both sides saw no values
  } else {
    r.sum = a.sum * acc_exp(a.max - r.max) + b.sum * acc_exp(b.max - r.max);
  }
  r.dot = a.dot + b.dot;
  r.mass = a.mass + b.mass;
  return r;
}

template <typename A>
__device__ __forceinline__ RowStats<A> warp_reduce(RowStats<A> st) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    RowStats<A> other;
    other.max = __shfl_xor_sync(0xffffffffu, st.max, offset);
    other.sum = __shfl_xor_sync(0xffffffffu, st.sum, offset);
    other.dot = __shfl_xor_sync(0xffffffffu, st.dot, offset);
    other.mass = __shfl_xor_sync(0xffffffffu, st.mass, offset);
    st = combine(st, other);
  }
  return st;
}

// The statistics of the whole row, returned to every thread. Called once per kernel.
template <typename A>
__device__ RowStats<A> block_reduce(RowStats<A> st) {
  __shared__ RowStats<A> warp_stats[kWarps];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  st = warp_reduce(st);
  if (lane == 0) warp_stats[warp] = st;
  __syncthreads();
  if (warp == 0) {
    st = lane < kWarps ? warp_stats[lane] : empty_stats<A>();
    st = warp_reduce(st);
    if (lane == 0) warp_stats[0] = st;
  }
  __syncthreads();
  return warp_stats[0];
}

// ----------------------------------------------------------------- student side
// x = s[k..k+N) * inv_tau and the teacher weights Q[k..k+N) = qa (+ qb when qb != nullptr).
template <typename T, typename A, int N>
__device__ __forceinline__ void load_student(const T* s, const A* qa, const A* qb, int k,
                                             A inv_tau, A (&x)[N], A (&qk)[N]) {
  const Vec<T, N> sv = load_vec<T, N>(s + k);
  const Vec<A, N> av = load_vec<A, N>(qa + k);
#pragma unroll
  for (int j = 0; j < N; ++j) {
    x[j] = to_acc(sv.v[j]) * inv_tau;
    qk[j] = av.v[j];
  }
  if (qb != nullptr) {
    const Vec<A, N> bv = load_vec<A, N>(qb + k);
#pragma unroll
    for (int j = 0; j < N; ++j) qk[j] += bv.v[j];
  }
}

// One student row (this block's): the loss into row_loss[row] unless row_loss is null, and
// grad_scale * upstream[0] * (n softmax(x) - Q) into grad's row unless grad is null (upstream
// null: a factor of 1). grad may be student itself (see the file comment).
template <typename T, int N>
__device__ __forceinline__ void student_row(const T* student,
                                            const typename AccOf<T>::type* q, T* grad,
                                            typename AccOf<T>::type* row_loss,
                                            const typename AccOf<T>::type* upstream,
                                            int ncrops, int batch, int dim,
                                            typename AccOf<T>::type inv_tau,
                                            typename AccOf<T>::type grad_scale) {
  using A = typename AccOf<T>::type;
  // Adjacent blocks take the views of one sample, so its teacher rows are shared in L2.
  const int b = blockIdx.x / ncrops;
  const int v = blockIdx.x % ncrops;
  const int64_t row = static_cast<int64_t>(v) * batch + b;
  const T* s = student + row * dim;
  const A* q0 = q + static_cast<int64_t>(b) * dim;            // teacher global view 0
  const A* q1 = q + (static_cast<int64_t>(batch) + b) * dim;  // teacher global view 1
  const A* qa = v == 0 ? q1 : q0;
  const A* qb = v >= 2 ? q1 : nullptr;
  const int nvec = dim / N;

  RowStats<A> st = empty_stats<A>();
  for (int i = threadIdx.x; i < nvec; i += kThreads) {
    A x[N], qk[N];
    load_student<T, A, N>(s, qa, qb, i * N, inv_tau, x, qk);
    push<A, N>(st, x, qk);
  }
  st = block_reduce(st);  // the barrier after which pass 2 may overwrite the row
  const A lse = st.max + acc_log(st.sum);
  const A mass = st.mass;
  if (row_loss != nullptr && threadIdx.x == 0) row_loss[row] = mass * lse - st.dot;
  if (grad == nullptr) return;  // loss only: the forward of the in-place variant
  const A scale = upstream == nullptr ? grad_scale : grad_scale * upstream[0];
  T* g = grad + row * dim;

  for (int i = threadIdx.x; i < nvec; i += kThreads) {
    A x[N], qk[N];
    load_student<T, A, N>(s, qa, qb, i * N, inv_tau, x, qk);
    Vec<T, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      from_acc((mass * acc_exp(x[j] - lse) - qk[j]) * scale, out.v[j]);
    }
    store_vec<T, N>(g + i * N, out);  // the same elements this thread just read
  }
}

template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
    student_kernel(const T* __restrict__ student, const typename AccOf<T>::type* __restrict__ q,
                   T* __restrict__ grad, typename AccOf<T>::type* __restrict__ row_loss,
                   const typename AccOf<T>::type* __restrict__ upstream, int ncrops,
                   int batch, int dim, typename AccOf<T>::type inv_tau,
                   typename AccOf<T>::type grad_scale) {
  student_row<T, N>(student, q, grad, row_loss, upstream, ncrops, batch, dim, inv_tau,
                    grad_scale);
}

// The gradient written over the logits: one pointer, deliberately not __restrict__.
template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
    student_inplace_kernel(T* logits, const typename AccOf<T>::type* __restrict__ q,
                           typename AccOf<T>::type* __restrict__ row_loss,
                           const typename AccOf<T>::type* __restrict__ upstream, int ncrops,
                           int batch, int dim, typename AccOf<T>::type inv_tau,
                           typename AccOf<T>::type grad_scale) {
  student_row<T, N>(logits, q, logits, row_loss, upstream, ncrops, batch, dim, inv_tau,
                    grad_scale);
}

// ----------------------------------------------------------------- teacher side
template <typename T, typename A, int N>
__device__ __forceinline__ void load_teacher(const T* t, const A* center, int k, A inv_temp,
                                             A (&x)[N]) {
  const Vec<T, N> tv = load_vec<T, N>(t + k);
  const Vec<A, N> cv = load_vec<A, N>(center + k);
#pragma unroll
  for (int j = 0; j < N; ++j) x[j] = (to_acc(tv.v[j]) - cv.v[j]) * inv_temp;
}

template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
    teacher_kernel(const T* __restrict__ teacher,
                   const typename AccOf<T>::type* __restrict__ center,
                   typename AccOf<T>::type* __restrict__ q, int dim,
                   typename AccOf<T>::type inv_temp) {
  using A = typename AccOf<T>::type;
  const int64_t row = blockIdx.x;
  const T* t = teacher + row * dim;
  A* out_row = q + row * dim;
  const int nvec = dim / N;
  A zeros[N];
#pragma unroll
  for (int j = 0; j < N; ++j) zeros[j] = A(0);

  RowStats<A> st = empty_stats<A>();
  for (int i = threadIdx.x; i < nvec; i += kThreads) {
    A x[N];
    load_teacher<T, A, N>(t, center, i * N, inv_temp, x);
    push<A, N>(st, x, zeros);
  }
  st = block_reduce(st);
  const A lse = st.max + acc_log(st.sum);

  for (int i = threadIdx.x; i < nvec; i += kThreads) {
    A x[N];
    load_teacher<T, A, N>(t, center, i * N, inv_temp, x);
    Vec<A, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) out.v[j] = acc_exp(x[j] - lse);
    store_vec<A, N>(out_row + i * N, out);
  }
}

// ----------------------------------------------------------------- launchers
bool aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

template <typename T, int N>
void launch_student_kernel(const T* s, const typename AccOf<T>::type* q, T* g,
                           typename AccOf<T>::type* loss, const typename AccOf<T>::type* up,
                           int ncrops, int batch, int dim, double inv_tau, double grad_scale,
                           unsigned blocks, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  if (g != nullptr && g == s) {
    student_inplace_kernel<T, N><<<blocks, kThreads, 0, stream>>>(
        g, q, loss, up, ncrops, batch, dim, A(inv_tau), A(grad_scale));
  } else {
    student_kernel<T, N><<<blocks, kThreads, 0, stream>>>(s, q, g, loss, up, ncrops, batch,
                                                          dim, A(inv_tau), A(grad_scale));
  }
}

template <typename T>
int launch_student(const void* student, const void* q, void* grad, void* row_loss,
                   const void* upstream, int ncrops, int batch, int dim, double inv_tau,
                   double grad_scale, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  constexpr int N = kVecBytes / sizeof(T);
  const unsigned blocks = static_cast<unsigned>(ncrops) * static_cast<unsigned>(batch);
  if (blocks == 0 || dim <= 0) return 0;
  const T* s = static_cast<const T*>(student);
  const A* qp = static_cast<const A*>(q);
  T* g = static_cast<T*>(grad);
  A* loss = static_cast<A*>(row_loss);
  const A* up = static_cast<const A*>(upstream);
  const bool vectorised = dim % N == 0 && aligned(s, sizeof(Vec<T, N>)) &&
                          aligned(g, sizeof(Vec<T, N>)) && aligned(qp, sizeof(Vec<A, N>));
  if (vectorised) {
    launch_student_kernel<T, N>(s, qp, g, loss, up, ncrops, batch, dim, inv_tau, grad_scale,
                                blocks, stream);
  } else {
    launch_student_kernel<T, 1>(s, qp, g, loss, up, ncrops, batch, dim, inv_tau, grad_scale,
                                blocks, stream);
  }
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_teacher(const void* teacher, const void* center, void* q, int rows, int dim,
                   double inv_temp, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  constexpr int N = kVecBytes / sizeof(T);
  if (rows <= 0 || dim <= 0) return 0;
  const T* t = static_cast<const T*>(teacher);
  const A* c = static_cast<const A*>(center);
  A* out = static_cast<A*>(q);
  const bool vectorised = dim % N == 0 && aligned(t, sizeof(Vec<T, N>)) &&
                          aligned(c, sizeof(Vec<A, N>)) && aligned(out, sizeof(Vec<A, N>));
  if (vectorised) {
    teacher_kernel<T, N><<<rows, kThreads, 0, stream>>>(t, c, out, dim, A(inv_temp));
  } else {
    teacher_kernel<T, 1><<<rows, kThreads, 0, stream>>>(t, c, out, dim, A(inv_temp));
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

extern "C" int dino_loss_student_launch(int dtype, const void* student, const void* q,
                                        void* grad, void* row_loss, const void* upstream,
                                        int ncrops, int batch, int dim, double inv_tau,
                                        double grad_scale, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DINO_LOSS_FLOAT32:
      return launch_student<float>(student, q, grad, row_loss, upstream, ncrops, batch, dim,
                                   inv_tau, grad_scale, st);
    case DINO_LOSS_FLOAT16:
      return launch_student<__half>(student, q, grad, row_loss, upstream, ncrops, batch, dim,
                                    inv_tau, grad_scale, st);
    case DINO_LOSS_BFLOAT16:
      return launch_student<__nv_bfloat16>(student, q, grad, row_loss, upstream, ncrops,
                                           batch, dim, inv_tau, grad_scale, st);
    case DINO_LOSS_FLOAT64:
      return launch_student<double>(student, q, grad, row_loss, upstream, ncrops, batch, dim,
                                    inv_tau, grad_scale, st);
    default:
      return DINO_LOSS_BAD_DTYPE;
  }
}

extern "C" int dino_loss_teacher_launch(int dtype, const void* teacher, const void* center,
                                        void* q, int rows, int dim, double inv_temp,
                                        void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DINO_LOSS_FLOAT32:
      return launch_teacher<float>(teacher, center, q, rows, dim, inv_temp, st);
    case DINO_LOSS_FLOAT16:
      return launch_teacher<__half>(teacher, center, q, rows, dim, inv_temp, st);
    case DINO_LOSS_BFLOAT16:
      return launch_teacher<__nv_bfloat16>(teacher, center, q, rows, dim, inv_temp, st);
    case DINO_LOSS_FLOAT64:
      return launch_teacher<double>(teacher, center, q, rows, dim, inv_temp, st);
    default:
      return DINO_LOSS_BAD_DTYPE;
  }
}

extern "C" const char* dino_loss_error_string(int code) {
  if (code == DINO_LOSS_BAD_DTYPE) {
    return "unsupported dtype (expected float32, float16, bfloat16 or float64)";
  }
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
