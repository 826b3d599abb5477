// C interface of the DINO loss CUDA kernels (dino_loss_kernel.cu), exported by
// libdino_fast_kernels.so (pipelines/kernels/build.py) and declared for ctypes in
// dino_core/loss/cuda.py. Plain C types only. Every function returns 0 on success, a
// cudaError_t value after a failed CUDA call, or one of the DINO_LOSS_* codes below;
// dino_loss_error_string names any of them.
//
// Shapes (all arrays contiguous, on the current device; "acc" is float64 for DINO_LOSS_FLOAT64
// logits and float32 for every other dtype):
//   student  [ncrops * batch, dim]  logits, view-major (rows v*batch .. v*batch+batch-1: view v)
//   teacher  [2 * batch, dim]       teacher logits, same dtype
//   center   [dim]                  acc
//   grad     [ncrops * batch, dim]  the gradient, logits' dtype; may be `student` itself (written
//                                   over the logits); any other overlap is not allowed
//   row_loss [ncrops * batch]       acc: n_v lse(x_v) - <Q_v, x_v> per student row
//   stats    [(ncrops + 4) * batch] acc, what the one-pass backward needs: lse2 of each student
//                                   row, then lse2 of each teacher row, then each teacher row's
//                                   mass (dino_loss_math.h)
//   upstream [1]                    acc, the loss's upstream gradient, read on the device
// The math is in dino_loss_math.h; x_v = s_v / student_temp, q_t = softmax((t_t - c) /
// teacher_temp), Q_v and n_v as there.
#ifndef DINO_LOSS_KERNEL_H_
#define DINO_LOSS_KERNEL_H_

#ifdef __cplusplus
extern "C" {
#endif

#define DINO_LOSS_EXPORT __attribute__((visibility("default")))

enum DinoLossDtype {
  DINO_LOSS_FLOAT32 = 0,
  DINO_LOSS_FLOAT16 = 1,
  DINO_LOSS_BFLOAT16 = 2,
  DINO_LOSS_FLOAT64 = 3,
};

#define DINO_LOSS_BAD_DTYPE (-1)
#define DINO_LOSS_BAD_ARGUMENT (-2)
#define DINO_LOSS_NO_LAUNCHABLE_PLAN (-3)

// How the per-sample kernel is laid out on the current device: `clusters` blocks per sample
// (a thread-block cluster on sm_90+, else 1), each over `chunk` columns of all the sample's
// views; `resident`: each block holds its columns of the student logits in `smem_bytes` of
// shared memory, so they are read from memory once.
typedef struct DinoLossPlan {
  int clusters;
  int chunk;
  int resident;
  int smem_bytes;
} DinoLossPlan;

// Chooses a plan for (dtype, ncrops, dim) and prepares the kernels' attributes for it.
// max_clusters caps the cluster size (16 at most; 1 disables clusters); allow_resident = 0
// forces the streaming variant (tests). Call it once per shape, outside stream capture.
DINO_LOSS_EXPORT int dino_loss_plan(int dtype, int ncrops, int dim, int max_clusters,
                                    int allow_resident, DinoLossPlan* plan);

// Forward: row_loss always; grad (= grad_scale * (n_v softmax(x_v) - Q_v), upstream 1) unless
// null; stats unless null. One launch: the teacher side is read once per sample.
DINO_LOSS_EXPORT int dino_loss_forward(int dtype, const DinoLossPlan* plan, const void* student,
                                       const void* teacher, const void* center, void* grad,
                                       void* row_loss, void* stats, int ncrops, int batch,
                                       int dim, double inv_student_temp,
                                       double inv_teacher_temp, double grad_scale,
                                       void* stream);

// One-pass backward from the forward's stats: grad = grad_scale * upstream[0] *
// (n_v softmax(x_v) - Q_v), the factor applied before rounding to the logits' dtype.
DINO_LOSS_EXPORT int dino_loss_backward(int dtype, const DinoLossPlan* plan,
                                        const void* student, const void* teacher,
                                        const void* center, const void* stats,
                                        const void* upstream, void* grad, int ncrops, int batch,
                                        int dim, double inv_student_temp,
                                        double inv_teacher_temp, double grad_scale,
                                        void* stream);

// grad[i] *= upstream[0] over `count` elements, unless upstream[0] == 1: then every block
// returns after one load (no host sync decides it).
DINO_LOSS_EXPORT int dino_loss_rescale(int dtype, void* grad, long long count,
                                       const void* upstream, void* stream);

DINO_LOSS_EXPORT const char* dino_loss_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif  // DINO_LOSS_KERNEL_H_
