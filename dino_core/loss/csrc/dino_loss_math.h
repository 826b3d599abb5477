// Per-element and per-row math of the DINO loss kernels, for nvcc AND a plain C++ compiler.
//
// The CUDA kernels (dino_loss_kernels.cuh) and their host twin (dino_loss_host.cpp, built with
// g++ and tested against dino_core/loss/reference.py) call these same functions, so the
// arithmetic the tests check on the CPU is the arithmetic the GPU runs.
//
// Notation (dino_core/loss/fused.py): for sample b, student view v (V views; 0 and 1 are the
// global crops the teacher also sees) and column k of K:
//   student exponent  y_v[k] = s_v[k] * alpha,            alpha = log2(e) / tau_s
//   teacher exponent  u_t[k] = (t_t[k] - c[k]) * beta,    beta  = log2(e) / tau_t,  t = 0, 1
// Working in base 2 (exp2/log2 are single hardware instructions on the GPU):
//   lse2(z)   = log2 sum_k 2^z[k]            (natural log-sum-exp = ln 2 * lse2 of z*log2 e)
//   q_t[k]    = 2^(u_t[k] - lse2(u_t))       teacher probabilities
//   Q_v       = q_1 (v = 0), q_0 (v = 1), q_0 + q_1 (v >= 2);   n_v = sum_k Q_v[k]
//   loss row  = ln 2 * (n_v * lse2(y_v) - <Q_v, y_v>)          = n_v lse(x_v) - <Q_v, x_v>
//   gradient  = scale * (n_v * 2^(y_v[k] - lse2(y_v)) - Q_v[k]),  scale = u / (tau_s P B)
// Softmax statistics are kept online as (running max m, sum of 2^(z - m)) so that a row split
// into column chunks (one per block of a cluster on the GPU) combines exactly.
#ifndef DINO_LOSS_MATH_H_
#define DINO_LOSS_MATH_H_

#include <math.h>

#if defined(__CUDACC__)
#define DINO_HD __host__ __device__ __forceinline__
#else
#define DINO_HD inline
#endif

namespace dino_loss {

DINO_HD float exp2_(float x) { return exp2f(x); }
DINO_HD double exp2_(double x) { return exp2(x); }
DINO_HD float log2_(float x) { return log2f(x); }
DINO_HD double log2_(double x) { return log2(x); }

template <typename A>
DINO_HD A neg_inf() {
  return -static_cast<A>(INFINITY);
}

constexpr double kLog2e = 1.4426950408889634074;  // log2(e)
constexpr double kLn2 = 0.69314718055994530942;   // ln(2)

// Online softmax statistics of one row (or of a part of it) in base 2.
template <typename A>
struct Softmax2 {
  A max;  // largest exponent seen; -inf before the first
  A sum;  // sum of 2^(z - max)
};

template <typename A>
DINO_HD Softmax2<A> empty_softmax() {
  Softmax2<A> st;
  st.max = neg_inf<A>();
  st.sum = A(0);
  return st;
}

// Adds N exponents: one rescale to the new running max (when it grows), one exp2 per value.
template <typename A, int N>
DINO_HD void push(Softmax2<A>& st, const A (&z)[N]) {
  A zmax = z[0];
  for (int j = 1; j < N; ++j) zmax = z[j] > zmax ? z[j] : zmax;
  if (zmax > st.max) {
    st.sum *= exp2_(st.max - zmax);  // 2^-inf = 0 on the first values
    st.max = zmax;
  }
  for (int j = 0; j < N; ++j) st.sum += exp2_(z[j] - st.max);
}

// Statistics of the union of two disjoint parts of a row.
template <typename A>
DINO_HD Softmax2<A> combine(const Softmax2<A>& a, const Softmax2<A>& b) {
  Softmax2<A> r;
  r.max = a.max > b.max ? a.max : b.max;
  if (r.max == neg_inf<A>()) {
    r.sum = A(0);  // both parts empty
  } else {
    r.sum = a.sum * exp2_(a.max - r.max) + b.sum * exp2_(b.max - r.max);
  }
  return r;
}

template <typename A>
DINO_HD A lse2(const Softmax2<A>& st) {
  return st.max + log2_(st.sum);
}

DINO_HD double student_exponent_scale(double student_temp_inv) { return student_temp_inv * kLog2e; }
DINO_HD double teacher_exponent_scale(double teacher_temp_inv) { return teacher_temp_inv * kLog2e; }

template <typename A>
DINO_HD A student_exponent(A s, A alpha) {
  return s * alpha;
}

template <typename A>
DINO_HD A teacher_exponent(A t, A c, A beta) {
  return (t - c) * beta;
}

// Q_v at one column, or n_v from the teacher masses: the view's teacher weight.
template <typename A>
DINO_HD A view_weight(int v, A q0, A q1) {
  return v == 0 ? q1 : (v == 1 ? q0 : q0 + q1);
}

// One gradient element before rounding to the logits' dtype.
template <typename A>
DINO_HD A gradient(A y, A row_lse2, A mass, A weight, A scale) {
  return scale * (mass * exp2_(y - row_lse2) - weight);
}

// One student row's loss in natural units from its lse2, mass n_v and <Q_v, y_v>.
template <typename A>
DINO_HD A loss_of_row(A mass, A row_lse2, A dot) {
  return (mass * row_lse2 - dot) * static_cast<A>(kLn2);
}

}  // namespace dino_loss

#endif  // DINO_LOSS_MATH_H_
