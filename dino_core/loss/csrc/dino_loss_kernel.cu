// Host side of the DINO loss CUDA kernels: layout planning, launches and the C interface
// (dino_loss_kernel.h) that libdino_fast_kernels.so exports and dino_core/loss/cuda.py calls
// with ctypes. Only CUDA headers are included (no torch), so nvcc builds it anywhere
// (pipelines/kernels/build.py); g++ builds it too, against the CPU emulation's stand-in
// headers (pipelines/kernels/emulation), for the tests. The kernels are in
// dino_loss_kernels.cuh. Every launch names its kernel with its type (cudaLaunchKernelEx),
// which the emulation needs to call it.
#include <cuda_runtime.h>
#include <stdint.h>

#include "dino_loss_kernel.h"
#include "dino_loss_kernels.cuh"

namespace {
using namespace dino_loss;

bool aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

int ceil_div(int a, int b) { return (a + b - 1) / b; }

template <typename T>
using Kernel = void (*)(Args<T>);

template <typename T, bool kResident>
Kernel<T> forward_fn(bool vector) {
  constexpr int N = kVecBytes / sizeof(T);
  return vector ? forward_kernel<T, N, kResident> : forward_kernel<T, 1, kResident>;
}

template <typename T>
Kernel<T> forward_fn(bool vector, bool resident) {
  return resident ? forward_fn<T, true>(vector) : forward_fn<T, false>(vector);
}

cudaLaunchConfig_t launch_config(int blocks, int smem, int clusters, cudaStream_t stream,
                                 cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = static_cast<size_t>(smem);
  config.stream = stream;
  if (clusters > 1) {  // a plain launch is a cluster of one block
    attr->id = cudaLaunchAttributeClusterDimension;
    attr->val.clusterDim.x = static_cast<unsigned>(clusters);
    attr->val.clusterDim.y = 1;
    attr->val.clusterDim.z = 1;
    config.attrs = attr;
    config.numAttrs = 1;
  }
  return config;
}

// Lets every forward kernel of T use all the opt-in shared memory a block may have and (sm_90+)
// clusters of up to kMaxClusters blocks; the launch's own sizes decide what it takes. Returns
// the dynamic shared memory a block may use in *budget.
template <typename T>
cudaError_t prepare_attributes(int optin_smem, int major, int* budget) {
  *budget = optin_smem;
  for (int resident = 0; resident < 2; ++resident) {
    for (int vector = 0; vector < 2; ++vector) {
      const Kernel<T> fn = forward_fn<T>(vector != 0, resident != 0);
      cudaFuncAttributes attr;
      cudaError_t err = cudaFuncGetAttributes(&attr, fn);
      const int dynamic = optin_smem - static_cast<int>(attr.sharedSizeBytes);
      if (err == cudaSuccess) {
        err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, dynamic);
      }
      if (err == cudaSuccess && major >= 9) {
        err = cudaFuncSetAttribute(fn, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
      }
      if (err != cudaSuccess) return err;
      *budget = dynamic < *budget ? dynamic : *budget;
    }
  }
  return cudaSuccess;
}

template <typename T>
int plan(int ncrops, int dim, int max_clusters, int allow_resident, DinoLossPlan* out) {
  constexpr int N = kVecBytes / sizeof(T);
  if (ncrops < 2 || dim < 1 || out == nullptr) return DINO_LOSS_BAD_ARGUMENT;
  int device = 0, major = 0, optin = 0, budget = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  }
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  if (err == cudaSuccess) err = prepare_attributes<T>(optin, major, &budget);
  if (err != cudaSuccess) {
    cudaGetLastError();  // reported by this call: not left for the next launch to return
    return static_cast<int>(err);
  }
  const bool vector = dim % N == 0;
  const int width = vector ? N : 1;
  int cap = major >= 9 ? max_clusters : 1;
  cap = cap < 1 ? 1 : (cap > kMaxClusters ? kMaxClusters : cap);
  // Blocks per sample, in the order tried: first enough for one vector per thread and row (as
  // far as the cluster size allows), then more (smaller chunks fit shared memory), then, when
  // none of those clusters can be scheduled (a MIG slice, a part whose GPCs have fewer free
  // SMs), fewer blocks with wider chunks: ... 8 ... 4 ... 2, 1.
  int first = ceil_div(dim, kThreads * width);
  first = first < 1 ? 1 : (first > cap ? cap : first);
  int order[kMaxClusters];
  int tries = 0;
  for (int c = first; c <= cap; ++c) order[tries++] = c;
  for (int c = first - 1; c >= 1; --c) order[tries++] = c;
  const Layout layout{ncrops, static_cast<int>(sizeof(Acc<T>))};
  for (int resident = allow_resident ? 1 : 0; resident >= 0; --resident) {
    for (int i = 0; i < tries; ++i) {
      const int c = order[i];
      const int chunk = ceil_div(ceil_div(dim, c), width) * width;
      const int clusters = ceil_div(dim, chunk);
      const int smem = layout.bytes(chunk, sizeof(T), resident != 0);
      if (smem > budget) continue;  // more blocks per sample: smaller chunks
      if (clusters > 1) {
        cudaLaunchAttribute attr;
        cudaLaunchConfig_t config = launch_config(clusters, smem, clusters, nullptr, &attr);
        int active = 0;
        err = cudaOccupancyMaxActiveClusters(&active, forward_fn<T>(vector, resident != 0),
                                             &config);
        if (err != cudaSuccess || active < 1) {
          cudaGetLastError();  // clear a refusal; try the next layout
          continue;
        }
      }
      *out = DinoLossPlan{clusters, chunk, resident, smem};
      return 0;
    }
  }
  // One block per sample, re-reading its rows: launchable wherever a block of kThreads is.
  const int smem = layout.bytes(dim, sizeof(T), false);
  if (smem > budget) return DINO_LOSS_NO_LAUNCHABLE_PLAN;
  *out = DinoLossPlan{1, dim, 0, smem};
  return 0;
}

// A plan made for this dtype, ncrops and dim (the launch trusts its sizes).
template <typename T>
bool plan_fits(const DinoLossPlan* p, int dim, int ncrops) {
  const Layout layout{ncrops, static_cast<int>(sizeof(Acc<T>))};
  return p != nullptr && ncrops >= 2 && p->clusters >= 1 && p->chunk >= 1 &&
         static_cast<int64_t>(p->clusters - 1) * p->chunk < dim &&
         static_cast<int64_t>(p->clusters) * p->chunk >= dim &&
         p->smem_bytes >= layout.bytes(p->chunk, sizeof(T), p->resident != 0);
}

template <typename T>
Args<T> make_args(const void* student, const void* teacher, const void* center, void* grad,
                  void* row_loss, void* stats, const void* upstream, int ncrops, int batch,
                  int dim, const DinoLossPlan* p, double inv_student_temp,
                  double inv_teacher_temp, double grad_scale) {
  using A = Acc<T>;
  Args<T> a;
  a.student = static_cast<const T*>(student);
  a.teacher = static_cast<const T*>(teacher);
  a.center = static_cast<const A*>(center);
  a.grad = static_cast<T*>(grad);
  a.row_loss = static_cast<A*>(row_loss);
  a.stats = static_cast<A*>(stats);
  a.upstream = static_cast<const A*>(upstream);
  a.ncrops = ncrops;
  a.batch = batch;
  a.dim = dim;
  a.chunk = p != nullptr ? p->chunk : 0;
  a.clusters = p != nullptr ? p->clusters : 0;
  a.alpha = static_cast<A>(student_exponent_scale(inv_student_temp));
  a.beta = static_cast<A>(teacher_exponent_scale(inv_teacher_temp));
  a.grad_scale = static_cast<A>(grad_scale);
  return a;
}

// The 16-byte path needs every row and chunk to start on a vector boundary.
template <typename T>
bool vectorisable(const Args<T>& a) {
  constexpr int N = kVecBytes / sizeof(T);
  return a.dim % N == 0 && a.chunk % N == 0 && aligned(a.student, kVecBytes) &&
         aligned(a.teacher, kVecBytes) && aligned(a.center, sizeof(Vec<Acc<T>, N>)) &&
         aligned(a.grad, kVecBytes);
}

template <typename T>
int forward(const DinoLossPlan* p, const Args<T>& a, cudaStream_t stream) {
  if (!plan_fits<T>(p, a.dim, a.ncrops) || a.row_loss == nullptr) return DINO_LOSS_BAD_ARGUMENT;
  if (a.batch == 0) return 0;
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t config =
      launch_config(p->clusters * a.batch, p->smem_bytes, p->clusters, stream, &attr);
  return static_cast<int>(
      cudaLaunchKernelEx(&config, forward_fn<T>(vectorisable(a), p->resident != 0), a));
}

template <typename T>
int backward(const DinoLossPlan* p, const Args<T>& a, cudaStream_t stream) {
  constexpr int N = kVecBytes / sizeof(T);
  if (!plan_fits<T>(p, a.dim, a.ncrops) || a.stats == nullptr || a.upstream == nullptr ||
      a.grad == nullptr) {
    return DINO_LOSS_BAD_ARGUMENT;
  }
  if (a.batch == 0) return 0;
  const unsigned blocks = static_cast<unsigned>(p->clusters) * static_cast<unsigned>(a.batch);
  const size_t smem = static_cast<size_t>(a.ncrops) * sizeof(Acc<T>);
  const Kernel<T> fn = vectorisable(a) ? backward_kernel<T, N> : backward_kernel<T, 1>;
  return static_cast<int>(dino_target::launch(fn, dim3(blocks), dim3(kThreads), smem, stream, a));
}

template <typename T>
int rescale(void* grad, long long count, const void* upstream, cudaStream_t stream) {
  constexpr int N = kVecBytes / sizeof(T);
  if (count < 0 || upstream == nullptr || (count > 0 && grad == nullptr)) {
    return DINO_LOSS_BAD_ARGUMENT;
  }
  if (count == 0) return 0;
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const bool vector = count % N == 0 && aligned(grad, kVecBytes);
  const long long units = vector ? count / N : count;
  const long long wanted = (units + 255) / 256;
  const unsigned blocks = static_cast<unsigned>(wanted < 4LL * sms ? wanted : 4LL * sms);
  T* g = static_cast<T*>(grad);
  const Acc<T>* u = static_cast<const Acc<T>*>(upstream);
  const auto fn = vector ? rescale_kernel<T, N> : rescale_kernel<T, 1>;
  return static_cast<int>(dino_target::launch(fn, dim3(blocks), dim3(256), 0, stream, g,
                                              static_cast<int64_t>(count), u));
}

}  // namespace

#define DINO_LOSS_DISPATCH(dtype, CALL)                                 \
  switch (dtype) {                                                      \
    case DINO_LOSS_FLOAT32: { using T = float; return CALL; }           \
    case DINO_LOSS_FLOAT16: { using T = __half; return CALL; }          \
    case DINO_LOSS_BFLOAT16: { using T = __nv_bfloat16; return CALL; }  \
    case DINO_LOSS_FLOAT64: { using T = double; return CALL; }          \
    default: return DINO_LOSS_BAD_DTYPE;                                \
  }

extern "C" DINO_LOSS_EXPORT int dino_loss_plan(int dtype, int ncrops, int dim, int max_clusters,
                                               int allow_resident, DinoLossPlan* out) {
  DINO_LOSS_DISPATCH(dtype, plan<T>(ncrops, dim, max_clusters, allow_resident, out))
}

extern "C" DINO_LOSS_EXPORT int dino_loss_forward(
    int dtype, const DinoLossPlan* p, const void* student, const void* teacher,
    const void* center, void* grad, void* row_loss, void* stats, int ncrops, int batch, int dim,
    double inv_student_temp, double inv_teacher_temp, double grad_scale, void* stream) {
  DINO_LOSS_DISPATCH(dtype, forward<T>(p, make_args<T>(student, teacher, center, grad, row_loss,
                                                       stats, nullptr, ncrops, batch, dim, p,
                                                       inv_student_temp, inv_teacher_temp,
                                                       grad_scale),
                                       static_cast<cudaStream_t>(stream)))
}

extern "C" DINO_LOSS_EXPORT int dino_loss_backward(
    int dtype, const DinoLossPlan* p, const void* student, const void* teacher,
    const void* center, const void* stats, const void* upstream, void* grad, int ncrops,
    int batch, int dim, double inv_student_temp, double inv_teacher_temp, double grad_scale,
    void* stream) {
  DINO_LOSS_DISPATCH(dtype, backward<T>(p, make_args<T>(student, teacher, center, grad, nullptr,
                                                        const_cast<void*>(stats), upstream,
                                                        ncrops, batch, dim, p,
                                                        inv_student_temp, inv_teacher_temp,
                                                        grad_scale),
                                        static_cast<cudaStream_t>(stream)))
}

extern "C" DINO_LOSS_EXPORT int dino_loss_rescale(int dtype, void* grad, long long count,
                                                  const void* upstream, void* stream) {
  DINO_LOSS_DISPATCH(dtype, rescale<T>(grad, count, upstream, static_cast<cudaStream_t>(stream)))
}

extern "C" DINO_LOSS_EXPORT const char* dino_loss_error_string(int code) {
  switch (code) {
    case DINO_LOSS_BAD_DTYPE:
      return "unsupported dtype (expected float32, float16, bfloat16 or float64)";
    case DINO_LOSS_BAD_ARGUMENT:
      return "bad argument (a null pointer, a plan for another shape, or ncrops < 2)";
    case DINO_LOSS_NO_LAUNCHABLE_PLAN:
      return "no launchable layout for this shape on this device";
    default:
      return cudaGetErrorString(static_cast<cudaError_t>(code));
  }
}
