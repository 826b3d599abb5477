// Device building blocks of the DINO loss kernels (dino_loss_kernels.cuh): dtypes and
// vectors, the launch arguments, cluster operations (no-ops for one-block clusters below
// sm_90), the shared-memory layout, loads, async copies, block and cluster reductions.
// The per-element math is in dino_loss_math.h; the design in dino_loss_kernels.cuh.
#ifndef DINO_LOSS_DEVICE_CUH_
#define DINO_LOSS_DEVICE_CUH_

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "device_target.h"
#include "dino_loss_math.h"

// Thread-block clusters (sm_90+); the CPU emulation stands for an sm_90 device and defines
// __CUDA_ARCH__ 900, so its clusters of 2, 3 ... 16 blocks run this code too.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define DINO_LOSS_CLUSTERS 1
#endif

namespace dino_loss {

namespace cg = cooperative_groups;

constexpr int kThreads = 512;  // threads per block (whole warps; the reductions rely on it)
constexpr int kWarps = kThreads / 32;
constexpr int kVecBytes = 16;    // one 128-bit load of logits per step
constexpr int kViewGroup = 16;   // views whose dot products a thread accumulates in one sweep
constexpr int kMaxClusters = 16; // the largest (non-portable) cluster on sm_90
static_assert(kMaxClusters <= 16, "the cluster combines give each rank one lane of 16");

// Blocks per SM the register budget is sized for: two for 2-byte logits (a resident block of
// bf16/fp16 at K = 65536 takes under half an SM's shared memory), one otherwise.
template <typename T>
constexpr int min_blocks() {
  return sizeof(T) == 2 ? 2 : 1;
}

// ----------------------------------------------------------------- types
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using Acc = typename AccOf<T>::type;

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

// N consecutive elements moved as one aligned vector.
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

// Everything a launch passes; `student` and `grad` may be the same array.
template <typename T>
struct Args {
  const T* student;
  const T* teacher;
  const Acc<T>* center;
  T* grad;
  Acc<T>* row_loss;
  Acc<T>* stats;
  const Acc<T>* upstream;
  int ncrops, batch, dim, chunk, clusters;
  Acc<T> alpha, beta, grad_scale;
};

// The V rows of one sample's column chunk: in global memory (stride batch*dim) or in shared
// memory (stride chunk).
template <typename T>
struct Rows {
  const T* base;
  int64_t stride;
  __device__ __forceinline__ const T* row(int v) const { return base + v * stride; }
};

// ----------------------------------------------------------------- clusters
__device__ __forceinline__ void cluster_sync() {
#ifdef DINO_LOSS_CLUSTERS
  cg::this_cluster().sync();
#else
  __syncthreads();  // clusters of one block
#endif
}

__device__ __forceinline__ void cluster_arrive() {
#ifdef DINO_LOSS_CLUSTERS
  cg::this_cluster().barrier_arrive();
#endif
}

__device__ __forceinline__ void cluster_wait() {
#ifdef DINO_LOSS_CLUSTERS
  cg::this_cluster().barrier_wait();
#endif
}

// `p` (this block's shared memory) as seen in block `rank` of the cluster.
template <typename X>
__device__ __forceinline__ X* cluster_peer(X* p, int rank) {
#ifdef DINO_LOSS_CLUSTERS
  return cg::this_cluster().map_shared_rank(p, rank);
#else
  return p;
#endif
}

// ----------------------------------------------------------------- shared memory
// Dynamic shared memory of the forward kernel, in accumulation-type units, then the rows:
//   part[V+2] (Softmax2: student rows, then teacher rows)   round-1 partials, read by peers
//   dots[V+2] (<Q_v, y_v>, then teacher masses)             round-2 partials, read by peers
//   lse[V+2], fin[V+2]                                      combined values
//   scratch[kWarps * (kViewGroup + 2)]                      block reductions
//   rows[V * chunk] (logits' dtype, 16-byte aligned)        resident plans only
struct Layout {
  int views;
  int acc_bytes;
  __host__ __device__ int head_count() const { return 5 * (views + 2) + kWarps * (kViewGroup + 2); }
  __host__ __device__ int rows_offset() const { return (head_count() * acc_bytes + 15) / 16 * 16; }
  __host__ __device__ int bytes(int chunk, int elem_bytes, bool resident) const {
    return rows_offset() + (resident ? views * chunk * elem_bytes : 0);
  }
};

// ----------------------------------------------------------------- loads
template <typename T, typename A, int N>
__device__ __forceinline__ void load_exponents(const T* p, A alpha, A (&y)[N]) {
  const Vec<T, N> v = load_vec<T, N>(p);
#pragma unroll
  for (int j = 0; j < N; ++j) y[j] = student_exponent(static_cast<A>(to_acc(v.v[j])), alpha);
}

template <typename T, typename A, int N>
__device__ __forceinline__ void load_teacher(const T* t0, const T* t1, const A* c, int k, A beta,
                                             A (&u0)[N], A (&u1)[N]) {
  const Vec<T, N> a = load_vec<T, N>(t0 + k);
  const Vec<T, N> b = load_vec<T, N>(t1 + k);
  const Vec<A, N> cv = load_vec<A, N>(c + k);
#pragma unroll
  for (int j = 0; j < N; ++j) {
    u0[j] = teacher_exponent(static_cast<A>(to_acc(a.v[j])), cv.v[j], beta);
    u1[j] = teacher_exponent(static_cast<A>(to_acc(b.v[j])), cv.v[j], beta);
  }
}

template <typename T, typename A, int N>
__device__ __forceinline__ void teacher_probs(const T* t0, const T* t1, const A* c, int k, A beta,
                                              A l0, A l1, A (&q0)[N], A (&q1)[N]) {
  load_teacher<T, A, N>(t0, t1, c, k, beta, q0, q1);
#pragma unroll
  for (int j = 0; j < N; ++j) {
    q0[j] = exp2_(q0[j] - l0);
    q1[j] = exp2_(q1[j] - l1);
  }
}

// P0: the V rows of the chunk into shared memory, 16 bytes per cp.async (sm_80+), in flight
// together; wait_copies() waits for this thread's copies (a barrier must follow). Without
// inline PTX (the CPU emulation: DINO_PTX_ARCH 0) a plain 16-byte load and store per vector.
template <typename T, int N>
__device__ __forceinline__ void copy_rows(const T* src, int64_t stride, T* dst, int chunk,
                                          int views, int nvec) {
  const int total = views * nvec;
  for (int i = threadIdx.x; i < total; i += kThreads) {
    const int v = i / nvec;
    const int j = i - v * nvec;
    const T* from = src + v * stride + j * N;
    T* to = dst + v * chunk + j * N;
#if DINO_PTX_ARCH >= 800
    if constexpr (sizeof(T) * N == 16) {
      const unsigned saddr = static_cast<unsigned>(__cvta_generic_to_shared(to));
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(saddr), "l"(from)
                   : "memory");
      continue;
    }
#endif
    store_vec<T, N>(to, load_vec<T, N>(from));
  }
}

__device__ __forceinline__ void wait_copies() {
#if DINO_PTX_ARCH >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// ----------------------------------------------------------------- reductions
// Over groups of `Lanes` consecutive lanes (a whole warp by default), every lane of a group
// ending with the group's result.
template <typename A, int Lanes = 32>
__device__ __forceinline__ Softmax2<A> warp_reduce(Softmax2<A> st) {
#pragma unroll
  for (int offset = Lanes / 2; offset > 0; offset >>= 1) {
    Softmax2<A> other;
    other.max = __shfl_xor_sync(0xffffffffu, st.max, offset);
    other.sum = __shfl_xor_sync(0xffffffffu, st.sum, offset);
    st = combine(st, other);
  }
  return st;
}

template <typename A, int Lanes = 32>
__device__ __forceinline__ A warp_sum(A x) {
#pragma unroll
  for (int offset = Lanes / 2; offset > 0; offset >>= 1) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

// out[0], out[1] = the block's combined statistics of a and b (warps combined in order).
template <typename A>
__device__ void block_softmax2(Softmax2<A> a, Softmax2<A> b, Softmax2<A>* scratch,
                               Softmax2<A>* out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  a = warp_reduce(a);
  b = warp_reduce(b);
  if (lane == 0) {
    scratch[2 * warp] = a;
    scratch[2 * warp + 1] = b;
  }
  __syncthreads();
  if (threadIdx.x < 2) {
    Softmax2<A> st = empty_softmax<A>();
    for (int w = 0; w < kWarps; ++w) st = combine(st, scratch[2 * w + threadIdx.x]);
    out[threadIdx.x] = st;
  }
  __syncthreads();
}

// store(i, sum over the block of vals[i]) for i < count, by thread i (warps summed in order).
template <typename A, int M, typename Store>
__device__ void block_sums(const A (&vals)[M], int count, A* scratch, Store store) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int i = 0; i < M; ++i) {
    const A s = warp_sum(vals[i]);
    if (lane == 0) scratch[warp * M + i] = s;
  }
  __syncthreads();
  if (threadIdx.x < count) {
    A s = A(0);
    for (int w = 0; w < kWarps; ++w) s += scratch[w * M + threadIdx.x];
    store(threadIdx.x, s);
  }
  __syncthreads();
}

// ----------------------------------------------------------------- cluster combines
// Every block of a cluster combines the same partials the same way: one row per 16 lanes,
// lane r reading rank r's partial (one remote load each, in parallel), then a fixed shuffle
// tree; so all blocks get identical row values. kMaxClusters <= 16 ranks.
template <typename A>
__device__ void combine_softmax(Softmax2<A>* part, A* lse, int rows, int clusters) {
  const int rank = threadIdx.x & 15;
  for (int base = 0; base < rows; base += kThreads / 16) {
    const int i = base + static_cast<int>(threadIdx.x) / 16;
    Softmax2<A> st = empty_softmax<A>();
    if (i < rows && rank < clusters) st = cluster_peer(part, rank)[i];
    st = warp_reduce<A, 16>(st);
    if (i < rows && rank == 0) lse[i] = lse2(st);
  }
}

template <typename A>
__device__ void combine_sums(A* part, A* out, int rows, int clusters) {
  const int rank = threadIdx.x & 15;
  for (int base = 0; base < rows; base += kThreads / 16) {
    const int i = base + static_cast<int>(threadIdx.x) / 16;
    A sum = A(0);
    if (i < rows && rank < clusters) sum = cluster_peer(part, rank)[i];
    sum = warp_sum<A, 16>(sum);
    if (i < rows && rank == 0) out[i] = sum;
  }
}

}  // namespace dino_loss

#endif  // DINO_LOSS_DEVICE_CUH_
