// Host twin of the DINO loss kernels (dino_loss_kernels.cuh): the same phases over the same
// column chunks, sequentially, with the same math (dino_loss_math.h). Built with a plain C++
// compiler (tests/dino_core/loss/host_twin.py) and tested against dino_core/loss/reference.py
// in float64 and float32, so the arithmetic the GPU runs is checked on any machine.
//
// Per sample b, with C = ceil(dim / chunk) chunks standing for the blocks of a cluster:
//   P1: per chunk, softmax statistics of the teacher and student rows; combined over the
//       chunks in rank order -> lse2 of every row;
//   P2: per chunk, <Q_v, y_v> and the teacher masses; summed over the chunks;
//   loss rows and stats; P3: the gradient.
// Only float32 and float64 logits (the accumulation type is the logits' type).
#include <stdint.h>

#include <vector>

#include "dino_loss_math.h"

namespace {
using namespace dino_loss;

template <typename A>
struct Sample {
  const A* t0;
  const A* t1;
  const A* s;       // view 0 of this sample; view v at s + v * stride
  int64_t stride;   // batch * dim
};

template <typename A>
A teacher_prob(const A* t, const A* c, int k, A beta, A lse) {
  return exp2_(teacher_exponent(t[k], c[k], beta) - lse);
}

template <typename A>
void one_sample(const Sample<A>& x, const A* c, A* grad, A* row_loss, A* stats, int views,
                int batch, int b, int dim, int chunk, A alpha, A beta, A scale) {
  const int clusters = (dim + chunk - 1) / chunk;
  // P1: partial statistics per chunk (rows 0..V-1 student, V and V+1 teacher), combined.
  std::vector<Softmax2<A>> rows(views + 2, empty_softmax<A>());
  for (int r = 0; r < clusters; ++r) {
    const int k1 = (r + 1) * chunk < dim ? (r + 1) * chunk : dim;
    for (int i = 0; i < views + 2; ++i) {
      Softmax2<A> part = empty_softmax<A>();
      for (int k = r * chunk; k < k1; ++k) {
        A z[1];
        if (i < views) {
          z[0] = student_exponent(x.s[i * x.stride + k], alpha);
        } else {
          z[0] = teacher_exponent((i == views ? x.t0 : x.t1)[k], c[k], beta);
        }
        push(part, z);
      }
      rows[i] = combine(rows[i], part);
    }
  }
  std::vector<A> lse(views + 2);
  for (int i = 0; i < views + 2; ++i) lse[i] = lse2(rows[i]);
  const A l0 = lse[views], l1 = lse[views + 1];

  // P2: <Q_v, y_v> (v < V) and the teacher masses (V, V+1), per chunk, then summed.
  std::vector<A> fin(views + 2, A(0));
  for (int r = 0; r < clusters; ++r) {
    const int k1 = (r + 1) * chunk < dim ? (r + 1) * chunk : dim;
    std::vector<A> part(views + 2, A(0));
    for (int k = r * chunk; k < k1; ++k) {
      const A q0 = teacher_prob(x.t0, c, k, beta, l0);
      const A q1 = teacher_prob(x.t1, c, k, beta, l1);
      part[views] += q0;
      part[views + 1] += q1;
      for (int v = 0; v < views; ++v) {
        part[v] += view_weight(v, q0, q1) * student_exponent(x.s[v * x.stride + k], alpha);
      }
    }
    for (int i = 0; i < views + 2; ++i) fin[i] += part[i];
  }
  const A n0 = fin[views], n1 = fin[views + 1];
  for (int v = 0; v < views; ++v) {
    row_loss[static_cast<int64_t>(v) * batch + b] =
        loss_of_row(view_weight(v, n0, n1), lse[v], fin[v]);
  }
  if (stats != nullptr) {
    for (int v = 0; v < views; ++v) stats[static_cast<int64_t>(v) * batch + b] = lse[v];
    for (int t = 0; t < 2; ++t) {
      stats[static_cast<int64_t>(views + t) * batch + b] = lse[views + t];
      stats[static_cast<int64_t>(views + 2 + t) * batch + b] = fin[views + t];
    }
  }

  // P3: the gradient.
  if (grad == nullptr) return;
  for (int k = 0; k < dim; ++k) {
    const A q0 = teacher_prob(x.t0, c, k, beta, l0);
    const A q1 = teacher_prob(x.t1, c, k, beta, l1);
    for (int v = 0; v < views; ++v) {
      const int64_t at = v * x.stride + k;
      grad[at] = gradient(student_exponent(x.s[at], alpha), lse[v], view_weight(v, n0, n1),
                          view_weight(v, q0, q1), scale);
    }
  }
}

template <typename A>
int forward(const void* student, const void* teacher, const void* center, void* grad,
            void* row_loss, void* stats, int views, int batch, int dim, int chunk,
            double inv_student_temp, double inv_teacher_temp, double grad_scale) {
  if (views < 2 || batch < 0 || dim < 1 || chunk < 1) return -2;
  const A* s = static_cast<const A*>(student);
  const A* t = static_cast<const A*>(teacher);
  const int64_t stride = static_cast<int64_t>(batch) * dim;
  for (int b = 0; b < batch; ++b) {
    const int64_t offset = static_cast<int64_t>(b) * dim;
    const Sample<A> x{t + offset, t + stride + offset, s + offset, stride};
    one_sample<A>(x, static_cast<const A*>(center), grad ? static_cast<A*>(grad) + offset : nullptr,
                  static_cast<A*>(row_loss), static_cast<A*>(stats), views, batch, b, dim, chunk,
                  static_cast<A>(student_exponent_scale(inv_student_temp)),
                  static_cast<A>(teacher_exponent_scale(inv_teacher_temp)),
                  static_cast<A>(grad_scale));
  }
  return 0;
}

}  // namespace

// dtype 0: float32, 3: float64 (the codes of dino_loss_kernel.h). Same arrays as
// dino_loss_forward; grad_scale includes the upstream factor; chunk: columns per "block".
extern "C" int dino_loss_host_forward(int dtype, const void* student, const void* teacher,
                                      const void* center, void* grad, void* row_loss,
                                      void* stats, int ncrops, int batch, int dim, int chunk,
                                      double inv_student_temp, double inv_teacher_temp,
                                      double grad_scale) {
  if (dtype == 0) {
    return forward<float>(student, teacher, center, grad, row_loss, stats, ncrops, batch, dim,
                          chunk, inv_student_temp, inv_teacher_temp, grad_scale);
  }
  if (dtype == 3) {
    return forward<double>(student, teacher, center, grad, row_loss, stats, ncrops, batch, dim,
                           chunk, inv_student_temp, inv_teacher_temp, grad_scale);
  }
  return -1;
}
