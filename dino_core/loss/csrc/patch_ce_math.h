// Per-row math of the iBOT patch-loss kernel, for nvcc AND a plain C++ compiler: the kernel
// (patch_ce_kernel.cu) and its host twin (patch_ce_host.cpp, built with g++ and tested
// against dino_core/loss/patch_ce.py's reference_patch_ce) call these same functions, so the
// arithmetic the tests check on the CPU is the arithmetic the GPU runs.
//
// The patch loss is the DINO loss's student side with one teacher row per student row, so the
// per-element math is dino_loss_math.h's, in base 2: for token row i with logits s, teacher
// probabilities q, weight w, y = s * alpha (alpha = log2(e) / tau):
//   row term  = w * loss_of_row(m, lse2(y), <q, y>)        = w (m lse(x) - <q, x>),  x = s / tau
//   gradient  = gradient(y, lse2(y), m, q, w * u / tau)    = w u (m softmax(x) - q) / tau
// with m = sum_k q[k] and u the upstream gradient. The row statistics (online softmax, <q, y>,
// m) combine exactly across the parts of a row that different threads see (combine(), in an
// order the callers fix).
#ifndef PATCH_CE_MATH_H_
#define PATCH_CE_MATH_H_

#include "dino_loss_math.h"

namespace patch_ce {

using dino_loss::Softmax2;

// Statistics of (a part of) one row; A is float or double.
template <typename A>
struct RowStats {
  Softmax2<A> soft;  // running max of y and sum of 2^(y - max)
  A dot;             // <q, y>
  A mass;            // sum of q
};

template <typename A>
DINO_HD RowStats<A> empty_stats() {
  RowStats<A> st;
  st.soft = dino_loss::empty_softmax<A>();
  st.dot = A(0);
  st.mass = A(0);
  return st;
}

// Adds one column: its exponent y = s * alpha and its teacher probability q.
template <typename A>
DINO_HD void add_column(RowStats<A>& st, A y, A q) {
  const A z[1] = {y};
  dino_loss::push(st.soft, z);
  st.dot += q * y;
  st.mass += q;
}

// The statistics of two disjoint parts of a row.
template <typename A>
DINO_HD RowStats<A> combine(const RowStats<A>& a, const RowStats<A>& b) {
  RowStats<A> r;
  r.soft = dino_loss::combine(a.soft, b.soft);
  r.dot = a.dot + b.dot;
  r.mass = a.mass + b.mass;
  return r;
}

// The row's loss term w (m lse(x) - <q, x>) from its statistics and lse2.
template <typename A>
DINO_HD A row_term(const RowStats<A>& st, A row_lse2, A w) {
  return w * dino_loss::loss_of_row(st.mass, row_lse2, st.dot);
}

}  // namespace patch_ce

#endif  // PATCH_CE_MATH_H_
