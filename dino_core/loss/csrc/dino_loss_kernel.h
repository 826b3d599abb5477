// C interface of the DINO loss CUDA kernels (dino_loss_kernel.cu).
//
// Plain C types only (no CUDA and no torch headers), so that the torch binding and the
// kernels compile separately: the kernels with nvcc alone, the binding with torch alone.
// Every launcher returns 0 on success, a cudaError_t value after a failed launch, or
// DINO_LOSS_BAD_DTYPE; dino_loss_error_string names any of them.
#ifndef DINO_LOSS_KERNEL_H_
#define DINO_LOSS_KERNEL_H_

#ifdef __cplusplus
extern "C" {
#endif

// Element type of the student / teacher logits. Accumulation (and the teacher
// probabilities, the center and the per-row losses) is float64 for DINO_LOSS_FLOAT64 and
// float32 for every other type.
enum DinoLossDtype {
  DINO_LOSS_FLOAT32 = 0,
  DINO_LOSS_FLOAT16 = 1,
  DINO_LOSS_BFLOAT16 = 2,
  DINO_LOSS_FLOAT64 = 3,
};

#define DINO_LOSS_BAD_DTYPE (-1)

// Student side, loss and gradient in one launch: one block per student row.
//   student  [ncrops * batch, dim]  logits, view-major (rows v*batch .. v*batch+batch-1: view v)
//   q        [2 * batch, dim]       teacher probabilities (accumulation type)
//   grad     [ncrops * batch, dim]  out: grad_scale * u * (n_v * softmax(s_v * inv_tau) - Q_v);
//                                   null: no gradient (pass 2 skipped); == student: written
//                                   over the logits (the in-place backward). Any other overlap
//                                   with student is not allowed.
//   row_loss [ncrops * batch]       out: n_v * logsumexp(s_v * inv_tau) - <Q_v, s_v * inv_tau>;
//                                   null: not written
//   upstream [1]                    u, on the device (accumulation type); null: u = 1
// with Q_v = q of the other global view for v = 0, 1 and q_0 + q_1 for local views v >= 2,
// and n_v = sum_k Q_v[k]. All arrays contiguous; stream is a cudaStream_t (0: default).
int dino_loss_student_launch(int dtype, const void* student, const void* q, void* grad,
                             void* row_loss, const void* upstream, int ncrops, int batch,
                             int dim, double inv_tau, double grad_scale, void* stream);

// Teacher side: q = softmax((teacher - center) * inv_temp) per row, one block per row.
//   teacher [rows, dim] logits; center [dim] and q [rows, dim] in the accumulation type.
int dino_loss_teacher_launch(int dtype, const void* teacher, const void* center, void* q,
                             int rows, int dim, double inv_temp, void* stream);

// A readable message for a launcher's return code.
const char* dino_loss_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif  // DINO_LOSS_KERNEL_H_
