// Thin torch binding of the DINO loss CUDA kernels (dino_loss_kernel.cu).
//
// Checks arguments, allocates outputs and passes raw pointers to the C launchers. It uses
// no torch CUDA header: the caller passes the current CUDA stream as an integer (Python's
// torch.cuda.current_stream().cuda_stream) and makes the tensors' device current.
#include <torch/extension.h>

#include <climits>
#include <vector>

#include "dino_loss_kernel.h"

namespace {

int dtype_code(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return DINO_LOSS_FLOAT32;
    case torch::kFloat16: return DINO_LOSS_FLOAT16;
    case torch::kBFloat16: return DINO_LOSS_BFLOAT16;
    case torch::kFloat64: return DINO_LOSS_FLOAT64;
    default:
      TORCH_CHECK(false, "dino_loss: unsupported dtype ", t.scalar_type(),
                  " (expected float32, float16, bfloat16 or float64)");
  }
  return DINO_LOSS_BAD_DTYPE;
}

torch::ScalarType accumulation_type(const torch::Tensor& t) {
  return t.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

void check_cuda_2d(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "dino_loss: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.dim() == 2, "dino_loss: ", name, " must be 2-d, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "dino_loss: ", name, " must be contiguous");
  TORCH_CHECK(t.size(0) <= INT_MAX && t.size(1) <= INT_MAX, "dino_loss: ", name,
              " is too large for 32-bit row/column indices: ", t.sizes());
}

void check_launch(int code, const char* what) {
  TORCH_CHECK(code == 0, "dino_loss: ", what, " failed: ", dino_loss_error_string(code));
}

// Checks student [ncrops*B, K] against q [2*B, K] and returns B.
int64_t check_student(const torch::Tensor& student, const torch::Tensor& q, int64_t ncrops) {
  check_cuda_2d(student, "student logits");
  check_cuda_2d(q, "teacher probabilities");
  TORCH_CHECK(student.device() == q.device(), "dino_loss: student and teacher on ",
              student.device(), " and ", q.device());
  TORCH_CHECK(q.scalar_type() == accumulation_type(student), "dino_loss: teacher probabilities ",
              "must be ", accumulation_type(student), " for ", student.scalar_type(),
              " student logits, got ", q.scalar_type());
  TORCH_CHECK(q.size(0) % 2 == 0, "dino_loss: teacher rows must be 2*B, got ", q.size(0));
  const int64_t batch = q.size(0) / 2;
  TORCH_CHECK(ncrops >= 2 && student.size(0) == ncrops * batch, "dino_loss: student rows ",
              student.size(0), " != ncrops (", ncrops, ") * B (", batch, ")");
  TORCH_CHECK(student.size(1) == q.size(1), "dino_loss: student K ", student.size(1),
              " != teacher K ", q.size(1));
  return batch;
}

// One launch of the student kernel (grad / row_loss / upstream may be undefined: null).
void launch_student(const torch::Tensor& student, const torch::Tensor& q, void* grad,
                    void* row_loss, const void* upstream, int64_t ncrops, int64_t batch,
                    double inv_tau, double grad_scale, int64_t stream) {
  const int code = dino_loss_student_launch(
      dtype_code(student), student.data_ptr(), q.data_ptr(), grad, row_loss, upstream,
      static_cast<int>(ncrops), static_cast<int>(batch), static_cast<int>(student.size(1)),
      inv_tau, grad_scale, reinterpret_cast<void*>(stream));
  check_launch(code, "student kernel launch");
}

}  // namespace

// student [ncrops*B, K] (fp32/fp16/bf16/fp64), q [2*B, K] teacher probabilities in the
// accumulation type -> {row_loss [ncrops*B] (accumulation type), grad [ncrops*B, K]}.
std::vector<torch::Tensor> student_forward(const torch::Tensor& student, const torch::Tensor& q,
                                           int64_t ncrops, double inv_tau, double grad_scale,
                                           int64_t stream) {
  const int64_t batch = check_student(student, q, ncrops);
  auto grad = torch::empty_like(student);
  auto row_loss = torch::empty({student.size(0)}, q.options());
  launch_student(student, q, grad.data_ptr(), row_loss.data_ptr(), nullptr, ncrops, batch,
                 inv_tau, grad_scale, stream);
  return {row_loss, grad};
}

// The same without a gradient (the forward of the in-place variant) -> row_loss [ncrops*B].
torch::Tensor student_loss(const torch::Tensor& student, const torch::Tensor& q, int64_t ncrops,
                           double inv_tau, int64_t stream) {
  const int64_t batch = check_student(student, q, ncrops);
  auto row_loss = torch::empty({student.size(0)}, q.options());
  launch_student(student, q, nullptr, row_loss.data_ptr(), nullptr, ncrops, batch, inv_tau,
                 1.0, stream);
  return row_loss;
}

// Overwrites student with its gradient, grad_scale * upstream[0] * (n softmax(x) - Q), in its
// own dtype; upstream is the [1] (or 0-dim) upstream gradient on the device, accumulation
// type. Does not bump autograd's version counter: the caller does.
void student_grad_inplace(const torch::Tensor& student, const torch::Tensor& q, int64_t ncrops,
                          double inv_tau, double grad_scale, const torch::Tensor& upstream,
                          int64_t stream) {
  const int64_t batch = check_student(student, q, ncrops);
  TORCH_CHECK(upstream.is_cuda() && upstream.device() == student.device(),
              "dino_loss: the upstream gradient must be on ", student.device());
  TORCH_CHECK(upstream.numel() == 1 && upstream.scalar_type() == q.scalar_type(),
              "dino_loss: the upstream gradient must be one ", q.scalar_type(), " value, got ",
              upstream.numel(), " of ", upstream.scalar_type());
  launch_student(student, q, student.data_ptr(), nullptr, upstream.data_ptr(), ncrops, batch,
                 inv_tau, grad_scale, stream);
}

// teacher [2*B, K] logits, center [1, K] in the accumulation type ->
// q = softmax((teacher - center) * inv_temp) [2*B, K] in the accumulation type.
torch::Tensor teacher_probs(const torch::Tensor& teacher, const torch::Tensor& center,
                            double inv_temp, int64_t stream) {
  check_cuda_2d(teacher, "teacher logits");
  check_cuda_2d(center, "center");
  TORCH_CHECK(center.size(0) == 1 && center.size(1) == teacher.size(1),
              "dino_loss: center must be [1, ", teacher.size(1), "], got ", center.sizes());
  TORCH_CHECK(center.device() == teacher.device(), "dino_loss: center on ", center.device(),
              ", teacher on ", teacher.device());
  TORCH_CHECK(center.scalar_type() == accumulation_type(teacher), "dino_loss: center must be ",
              accumulation_type(teacher), " for ", teacher.scalar_type(), " teacher logits");
  auto q = torch::empty(teacher.sizes(), center.options());
  const int code = dino_loss_teacher_launch(
      dtype_code(teacher), teacher.data_ptr(), center.data_ptr(), q.data_ptr(),
      static_cast<int>(teacher.size(0)), static_cast<int>(teacher.size(1)), inv_temp,
      reinterpret_cast<void*>(stream));
  check_launch(code, "teacher kernel launch");
  return q;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "DINO loss CUDA kernels (see dino_core/loss/cuda.py)";
  m.def("student_forward", &student_forward,
        "row losses and gradient of the DINO loss w.r.t. the student logits");
  m.def("student_loss", &student_loss, "row losses of the DINO loss, no gradient");
  m.def("student_grad_inplace", &student_grad_inplace,
        "the gradient w.r.t. the student logits, written over the logits");
  m.def("teacher_probs", &teacher_probs, "teacher softmax((t - center) * inv_temp)");
}
