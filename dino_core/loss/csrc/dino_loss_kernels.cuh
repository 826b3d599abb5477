// The DINO loss CUDA kernels: loss, gradient and teacher softmax of a sample in one launch
// (forward_kernel), the one-pass gradient from saved statistics (backward_kernel), and the
// upstream factor (rescale_kernel). Launched by dino_loss_kernel.cu; the math is in
// dino_loss_math.h, shared with the host twin dino_loss_host.cpp.
//
// Layout: one CLUSTER of `clusters` blocks per sample b (a thread-block cluster on sm_90+;
// one block elsewhere); block r covers columns [r*chunk, (r+1)*chunk) of ALL the sample's rows
// (its V student views and 2 teacher views), so each teacher value is read once per sample
// and serves every view. A block runs:
//   P0  (resident plans) async-copies its student columns into shared memory;
//   P1  partial softmax statistics of its part of each row: teacher rows (block reduction,
//       overlapping P0's copies), then student rows (one warp per row, from shared memory);
//   --  cluster barrier; every block combines the cluster's partials over the distributed
//       shared memory (ranks in the same order, so all blocks get the same numbers): lse2 of
//       every row;
//   P2  <Q_v, y_v> and the teacher masses n_t over its columns, now that q is known;
//   --  cluster barrier; combine: dots, masses; rank 0 writes the row losses and the stats;
//   P3  gradient of its columns (teacher probabilities recomputed, once per column for all
//       views), written in the logits' dtype.
// Memory traffic: the student logits are read from memory once (resident plans keep them in
// shared memory for P1-P3; streaming plans read them again, from L2 when they are still
// there), the teacher once (its re-reads in P2/P3 come from L2: the block just read them),
// and the gradient written once. Nothing of size [rows, K] is written besides the gradient.
//
// In place (grad == student): resident plans have copied every student value they need to
// shared memory before P3 writes; streaming plans re-read each vector in P3 in the thread that
// then writes exactly that vector, after the barriers that end P1-P2; other blocks own other
// columns. Hence no __restrict__ on the logits and gradient pointers.
// Inputs are assumed finite; a NaN anywhere in a row makes its loss NaN.
#ifndef DINO_LOSS_KERNELS_CUH_
#define DINO_LOSS_KERNELS_CUH_

#include "dino_loss_device.cuh"

namespace dino_loss {

// ----------------------------------------------------------------- gradient (P3)
// grad rows of this chunk = scale * (n_v 2^(y - lse2_v) - Q_v), teacher probabilities
// recomputed once per column vector for all views.
template <typename T, int N>
__device__ __forceinline__ void write_gradient(const Args<T>& a, Rows<T> rows, T* g,
                                               const T* t0, const T* t1, const Acc<T>* c,
                                               int nvec, const Acc<T>* view_lse, Acc<T> l0,
                                               Acc<T> l1, Acc<T> n0, Acc<T> n1, Acc<T> scale) {
  using A = Acc<T>;
  const int views = a.ncrops;
  const int64_t gstride = static_cast<int64_t>(a.batch) * a.dim;
  for (int j = threadIdx.x; j < nvec; j += kThreads) {
    A q0[N], q1[N];
    teacher_probs<T, A, N>(t0, t1, c, j * N, a.beta, l0, l1, q0, q1);
    for (int v = 0; v < views; ++v) {
      A y[N];
      load_exponents<T, A, N>(rows.row(v) + j * N, a.alpha, y);
      const A lse = view_lse[v];
      const A mass = view_weight(v, n0, n1);
      Vec<T, N> out;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        from_acc(gradient(y[i], lse, mass, view_weight(v, q0[i], q1[i]), scale), out.v[i]);
      }
      store_vec<T, N>(g + v * gstride + j * N, out);  // the vector this thread just read
    }
  }
}

// ----------------------------------------------------------------- forward
template <typename T, int N, bool kResident>
__global__ void __launch_bounds__(kThreads, min_blocks<T>()) forward_kernel(const Args<T> a) {
  using A = Acc<T>;
  DINO_DYNAMIC_SHARED(unsigned char, smem);
  const int views = a.ncrops;
  const Layout layout{views, static_cast<int>(sizeof(A))};
  Softmax2<A>* part = reinterpret_cast<Softmax2<A>*>(smem);
  A* dots = reinterpret_cast<A*>(smem) + 2 * (views + 2);
  A* lse = dots + (views + 2);
  A* fin = lse + (views + 2);
  A* scratch = fin + (views + 2);

  const int rank = blockIdx.x % a.clusters;
  const int b = blockIdx.x / a.clusters;
  const int k0 = rank * a.chunk;
  const int len = max(0, min(a.dim, k0 + a.chunk) - k0);
  const int nvec = len / N;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const T* t0 = a.teacher + static_cast<int64_t>(b) * a.dim + k0;
  const T* t1 = a.teacher + (static_cast<int64_t>(a.batch) + b) * a.dim + k0;
  const A* c = a.center + k0;
  const int64_t stride = static_cast<int64_t>(a.batch) * a.dim;
  const T* s = a.student + static_cast<int64_t>(b) * a.dim + k0;

  // P0: student columns into shared memory (resident plans), in flight during P1's teacher.
  Rows<T> rows{s, stride};
  if constexpr (kResident) {
    T* local = reinterpret_cast<T*>(smem + layout.rows_offset());
    copy_rows<T, N>(s, stride, local, a.chunk, views, nvec);
    rows = Rows<T>{local, a.chunk};
  }

  // P1: partial statistics of the two teacher rows, then of the student rows.
  Softmax2<A> st0 = empty_softmax<A>(), st1 = empty_softmax<A>();
  for (int j = threadIdx.x; j < nvec; j += kThreads) {
    A u0[N], u1[N];
    load_teacher<T, A, N>(t0, t1, c, j * N, a.beta, u0, u1);
    push(st0, u0);
    push(st1, u1);
  }
  block_softmax2(st0, st1, reinterpret_cast<Softmax2<A>*>(scratch), part + views);
  wait_copies();
  __syncthreads();
  for (int v = warp; v < views; v += kWarps) {
    Softmax2<A> st = empty_softmax<A>();
    for (int j = lane; j < nvec; j += 32) {
      A y[N];
      load_exponents<T, A, N>(rows.row(v) + j * N, a.alpha, y);
      push(st, y);
    }
    st = warp_reduce(st);
    if (lane == 0) part[v] = st;
  }
  cluster_sync();  // every block's partials are written

  // Round 1: lse2 of every row of the sample.
  combine_softmax(part, lse, views + 2, a.clusters);
  __syncthreads();
  const A l0 = lse[views], l1 = lse[views + 1];

  // P2: <Q_v, y_v> over this chunk, kViewGroup views per sweep; teacher masses in the first.
  for (int g0 = 0; g0 < views; g0 += kViewGroup) {
    A acc[kViewGroup + 2];
#pragma unroll
    for (int i = 0; i < kViewGroup + 2; ++i) acc[i] = A(0);
    for (int j = threadIdx.x; j < nvec; j += kThreads) {
      A q0[N], q1[N];
      teacher_probs<T, A, N>(t0, t1, c, j * N, a.beta, l0, l1, q0, q1);
#pragma unroll
      for (int i = 0; i < N; ++i) {
        acc[kViewGroup] += q0[i];
        acc[kViewGroup + 1] += q1[i];
      }
#pragma unroll
      for (int i = 0; i < kViewGroup; ++i) {
        const int v = g0 + i;
        if (v < views) {
          A y[N];
          load_exponents<T, A, N>(rows.row(v) + j * N, a.alpha, y);
#pragma unroll
          for (int n = 0; n < N; ++n) acc[i] += view_weight(v, q0[n], q1[n]) * y[n];
        }
      }
    }
    const int in_group = min(kViewGroup, views - g0);
    block_sums(acc, kViewGroup + 2, scratch, [&](int i, A sum) {
      if (i < in_group) dots[g0 + i] = sum;
      if (i >= kViewGroup && g0 == 0) dots[views + i - kViewGroup] = sum;
    });
  }
  cluster_sync();  // every block's dots are written (and round 1's reads are over)

  // Round 2: dots and teacher masses of the sample.
  combine_sums(dots, fin, views + 2, a.clusters);
  __syncthreads();
  cluster_arrive();  // this block reads no peer's shared memory any more
  const A n0 = fin[views], n1 = fin[views + 1];
  if (rank == 0 && threadIdx.x < views) {
    const int v = threadIdx.x;
    a.row_loss[static_cast<int64_t>(v) * a.batch + b] =
        loss_of_row(view_weight(v, n0, n1), lse[v], fin[v]);
    if (a.stats != nullptr) a.stats[static_cast<int64_t>(v) * a.batch + b] = lse[v];
  }
  if (rank == 0 && a.stats != nullptr && threadIdx.x < 2) {
    const int t = threadIdx.x;
    a.stats[static_cast<int64_t>(views + t) * a.batch + b] = lse[views + t];
    a.stats[static_cast<int64_t>(views + 2 + t) * a.batch + b] = fin[views + t];
  }

  // P3: the gradient of this chunk (upstream 1; dino_loss_rescale applies another).
  if (a.grad != nullptr) {
    write_gradient<T, N>(a, rows, a.grad + static_cast<int64_t>(b) * a.dim + k0, t0, t1, c,
                         nvec, lse, l0, l1, n0, n1, a.grad_scale);
  }
  cluster_wait();  // no block leaves while a peer may still read its shared memory
}

// ----------------------------------------------------------------- backward
// One pass from the forward's stats; the same blocks as the forward, no cluster needed.
template <typename T, int N>
__global__ void __launch_bounds__(kThreads, min_blocks<T>()) backward_kernel(const Args<T> a) {
  using A = Acc<T>;
  DINO_DYNAMIC_SHARED(unsigned char, smem);
  A* view_lse = reinterpret_cast<A*>(smem);
  const int views = a.ncrops;
  const int rank = blockIdx.x % a.clusters;
  const int b = blockIdx.x / a.clusters;
  const int k0 = rank * a.chunk;
  const int len = max(0, min(a.dim, k0 + a.chunk) - k0);
  for (int v = threadIdx.x; v < views; v += kThreads) {
    view_lse[v] = a.stats[static_cast<int64_t>(v) * a.batch + b];
  }
  const A* teacher_stats = a.stats + static_cast<int64_t>(views) * a.batch + b;
  const A l0 = teacher_stats[0], l1 = teacher_stats[a.batch];
  const A n0 = teacher_stats[2 * a.batch], n1 = teacher_stats[3 * a.batch];
  const A scale = a.grad_scale * a.upstream[0];
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(a.batch) * a.dim;
  const int64_t offset = static_cast<int64_t>(b) * a.dim + k0;
  const T* t0 = a.teacher + offset;
  const T* t1 = t0 + static_cast<int64_t>(a.batch) * a.dim;
  write_gradient<T, N>(a, Rows<T>{a.student + offset, stride}, a.grad + offset, t0, t1,
                       a.center + k0, len / N, view_lse, l0, l1, n0, n1, scale);
}

// ----------------------------------------------------------------- rescale
template <typename T, int N>
__global__ void __launch_bounds__(256) rescale_kernel(T* g, int64_t count,
                                                      const Acc<T>* upstream) {
  using A = Acc<T>;
  const A u = upstream[0];
  if (u == A(1)) return;  // the usual case: decided on the device, no host sync
  const int64_t nvec = count / N;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < nvec;
       i += step) {
    Vec<T, N> x = load_vec<T, N>(g + i * N);
#pragma unroll
    for (int j = 0; j < N; ++j) from_acc(static_cast<A>(to_acc(x.v[j])) * u, x.v[j]);
    store_vec<T, N>(g + i * N, x);
  }
}

}  // namespace dino_loss

#endif  // DINO_LOSS_KERNELS_CUH_
