// Host twin of the iBOT patch-loss kernel (patch_ce_kernel.cu): the same per-row passes with
// the same math (patch_ce_math.h), sequentially, a row's columns dealt to `lanes` simulated
// threads and their statistics combined in lane order. Built with a plain C++ compiler
// (tests/dino_core/loss/patch_host_twin.py) and tested against reference_patch_ce in float64
// and float32, so the arithmetic the GPU runs is checked on any machine. Only float32 and
// float64 (the accumulation type is the logits' type).
#include <stdint.h>

#include <vector>

#include "patch_ce_math.h"

namespace {
using namespace patch_ce;

template <typename A>
void rows_host(const A* s, const A* q, const A* w, A* grad, A* row_loss, int rows, int dim,
               int lanes, A alpha, A scale) {
  std::vector<RowStats<A>> part(lanes);
  for (int64_t i = 0; i < rows; ++i) {
    const A* si = s + i * dim;
    const A* qi = q + i * dim;
    for (int t = 0; t < lanes; ++t) {
      part[t] = empty_stats<A>();
      for (int k = t; k < dim; k += lanes) {
        add_column(part[t], dino_loss::student_exponent(si[k], alpha), qi[k]);
      }
    }
    RowStats<A> total = part[0];
    for (int t = 1; t < lanes; ++t) total = combine(total, part[t]);
    const A lse = dino_loss::lse2(total.soft);
    row_loss[i] = row_term(total, lse, w[i]);
    for (int k = 0; k < dim; ++k) {
      const A y = dino_loss::student_exponent(si[k], alpha);
      grad[i * dim + k] = dino_loss::gradient(y, lse, total.mass, qi[k], w[i] * scale);
    }
  }
}

}  // namespace

// dtype 0: float32, 3: float64 (DinoLossDtype); returns 0, or -1 for another dtype, -2 for a
// bad size. grad = scale * w (m softmax(x) - q); row_loss = w (m lse(x) - <q, x>).
extern "C" __attribute__((visibility("default"))) int patch_ce_host_rows(
    int dtype, const void* s, const void* q, const void* w, void* grad, void* row_loss,
    int rows, int dim, int lanes, double inv_tau, double scale) {
  if (rows < 0 || dim < 1 || lanes < 1) return -2;
  if (dtype == 0) {
    rows_host<float>(static_cast<const float*>(s), static_cast<const float*>(q),
                     static_cast<const float*>(w), static_cast<float*>(grad),
                     static_cast<float*>(row_loss), rows, dim, lanes,
                     static_cast<float>(dino_loss::student_exponent_scale(inv_tau)),
                     static_cast<float>(scale));
    return 0;
  }
  if (dtype == 3) {
    rows_host<double>(static_cast<const double*>(s), static_cast<const double*>(q),
                      static_cast<const double*>(w), static_cast<double*>(grad),
                      static_cast<double*>(row_loss), rows, dim, lanes,
                      dino_loss::student_exponent_scale(inv_tau), scale);
    return 0;
  }
  return -1;
}
