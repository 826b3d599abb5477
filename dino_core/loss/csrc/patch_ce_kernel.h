// C interface of the iBOT patch-loss CUDA kernel (patch_ce_kernel.cu), exported by
// libdino_fast_kernels.so (pipelines/kernels/build.py) and declared for ctypes in
// dino_core/loss/patch_cuda.py. Plain C types only. Returns 0 on success, a cudaError_t value
// after a failed CUDA call, or a DINO_LOSS_* code (dino_loss_kernel.h), which
// dino_loss_error_string names; dtype codes are DinoLossDtype's.
//
// Shapes (contiguous, on the current device; "acc" is float64 for float64 logits, float32
// for every other dtype):
//   student       [rows, dim]  logits s
//   teacher_probs [rows, dim]  acc, q (no gradient)
//   weight        [rows]       acc, w
//   grad          [rows, dim]  logits' dtype, or null: scale * w (m softmax(x) - q); must not
//                              overlap the inputs
//   row_loss      [rows]       acc, or null: w (m lse(x) - <q, x>), x = s * inv_student_temp
//   upstream      [1]          acc, or null (1): the loss's upstream gradient, read on the
//                              device and folded into the gradient before rounding
// scale = grad_scale * upstream[0]; the math is in patch_ce_math.h.
#ifndef PATCH_CE_KERNEL_H_
#define PATCH_CE_KERNEL_H_

#include "dino_loss_kernel.h"

#ifdef __cplusplus
extern "C" {
#endif

// One launch, one block per row: the row's statistics, then its loss term and (unless grad is
// null) its gradient. rows == 0 launches nothing; dim must be >= 1 when rows > 0.
DINO_LOSS_EXPORT int patch_ce_rows(int dtype, const void* student, const void* teacher_probs,
                                   const void* weight, void* grad, void* row_loss,
                                   const void* upstream, int rows, int dim,
                                   double inv_student_temp, double grad_scale, void* stream);

#ifdef __cplusplus
}
#endif

#endif  // PATCH_CE_KERNEL_H_
