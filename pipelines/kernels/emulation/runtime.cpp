// The CPU emulation's host runtime: the emulated device (an H100's limits), kernel
// attributes, the occupancy query, errors and versions, and the launch checks. The threads
// that run a launch are in scheduler.cpp. Every check returns the error code the CUDA
// runtime documents for it, so the kernel library's glue sees the same failures here as on a
// GPU (a launch above 48 KiB of dynamic shared memory without the opt-in, an opt-in above
// 227 KiB, a cluster the device cannot schedule).
//
// Test hooks (exported, emulation builds only):
//   dino_emulation_set_max_cluster(n)      the largest cluster the device schedules (as on a
//                                          MIG slice); 0 restores the device's 16
//   dino_emulation_set_optin_smem(bytes)   the opt-in shared memory per block (a smaller GPU:
//                                          99 KiB on sm_86 ...); 0 restores the H100's
//   dino_emulation_set_driver_version(v)   the version cudaDriverGetVersion reports (0: the
//                                          runtime's); below the runtime's major version
//                                          every call fails with cudaErrorInsufficientDriver
//   dino_emulation_round / _widen          the __half / __nv_bfloat16 conversions on arrays
#include <stdio.h>

#include <atomic>
#include <mutex>
#include <unordered_map>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "emulation_internal.h"

#define DINO_EMULATION_EXPORT extern "C" __attribute__((visibility("default")))

__thread uint3 threadIdx;
__thread uint3 blockIdx;
__thread dim3 blockDim;
__thread dim3 gridDim;

namespace dino_emu {
namespace {

struct FuncState {
  int max_dynamic_smem = kDefaultDynamicSmem;
  int carveout = -1;
  bool non_portable_clusters = false;
};

std::mutex attributes_mutex;
std::unordered_map<const void*, FuncState>& attributes() {
  static auto* map = new std::unordered_map<const void*, FuncState>();  // never destroyed:
  return *map;  // pool threads may outlive static destructors at exit
}

FuncState func_state(const void* func) {
  std::lock_guard<std::mutex> lock(attributes_mutex);
  auto it = attributes().find(func);
  return it == attributes().end() ? FuncState() : it->second;
}

std::atomic<int> forced_max_cluster{0};
std::atomic<int> forced_optin_smem{0};
std::atomic<int> driver_version{0};
__thread cudaError_t last_error = cudaSuccess;

int driver() {
  const int forced = driver_version.load();
  return forced != 0 ? forced : DINO_EMULATION_CUDART_VERSION;
}

// A CUDA 13 runtime runs on any CUDA 13 driver (minor version compatibility).
bool driver_supported() { return driver() / 1000 >= DINO_EMULATION_CUDART_VERSION / 1000; }

cudaError_t fail(cudaError_t error) {
  if (error != cudaSuccess) last_error = error;
  return error;
}

int optin_smem() {
  const int forced = forced_optin_smem.load();
  return forced > 0 ? forced : kOptinSmemPerBlock;
}

int max_cluster() {
  const int forced = forced_max_cluster.load();
  return forced > 0 ? forced : kSmsPerGpc;
}

// Checks everything but whether the cluster can be scheduled.
cudaError_t check_config(const cudaLaunchConfig_t& config, const void* func,
                         LaunchShape* shape) {
  if (!driver_supported()) return cudaErrorInsufficientDriver;
  if (func == nullptr) return cudaErrorInvalidDeviceFunction;
  const dim3 g = config.gridDim, b = config.blockDim;
  const unsigned long long threads = 1ull * b.x * b.y * b.z;
  if (g.x < 1 || g.y < 1 || g.z < 1 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535 ||
      threads < 1 || threads > kMaxThreadsPerBlock || b.x > 1024 || b.y > 1024 || b.z > 64) {
    return cudaErrorInvalidConfiguration;
  }
  const FuncState state = func_state(func);
  if (config.dynamicSmemBytes > static_cast<size_t>(state.max_dynamic_smem)) {
    return cudaErrorInvalidValue;
  }
  shape->cluster = dim3(1, 1, 1);
  for (unsigned i = 0; i < config.numAttrs; ++i) {
    const cudaLaunchAttribute& attr = config.attrs[i];
    if (attr.id == cudaLaunchAttributeClusterDimension) {
      shape->cluster = dim3(attr.val.clusterDim.x, attr.val.clusterDim.y, attr.val.clusterDim.z);
    } else if (attr.id != cudaLaunchAttributeIgnore) {
      return cudaErrorNotSupported;  // not emulated
    }
  }
  const dim3 c = shape->cluster;
  if (c.x < 1 || c.y < 1 || c.z < 1 || g.x % c.x || g.y % c.y || g.z % c.z) {
    return cudaErrorInvalidClusterSize;
  }
  shape->cluster_blocks = c.x * c.y * c.z;
  const unsigned limit = state.non_portable_clusters ? kSmsPerGpc : kMaxPortableCluster;
  if (shape->cluster_blocks > limit) return cudaErrorInvalidClusterSize;
  return cudaSuccess;
}

const char* error_name(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorInvalidClusterSize: return "cudaErrorInvalidClusterSize";
  }
  return "cudaErrorUnknown";
}

}  // namespace

cudaError_t check_launch(const cudaLaunchConfig_t& config, const void* func,
                         LaunchShape* shape) {
  cudaError_t error = check_config(config, func, shape);
  if (error == cudaSuccess && static_cast<int>(shape->cluster_blocks) > max_cluster()) {
    error = cudaErrorInvalidClusterSize;  // this device cannot schedule such a cluster
  }
  return fail(error);
}

void set_last_error(cudaError_t error) { fail(error); }

}  // namespace dino_emu

using namespace dino_emu;

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return fail(cudaErrorInvalidValue);
  if (!driver_supported()) return fail(cudaErrorInsufficientDriver);
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (!driver_supported()) return fail(cudaErrorInsufficientDriver);
  return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice);
}

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return fail(cudaErrorInvalidValue);
  if (!driver_supported()) return fail(cudaErrorInsufficientDriver);
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (value == nullptr) return fail(cudaErrorInvalidValue);
  if (!driver_supported()) return fail(cudaErrorInsufficientDriver);
  if (device != 0) return fail(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = kMaxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: *value = 1024; break;
    case cudaDevAttrMaxGridDimX: *value = 0x7fffffff; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = kDefaultDynamicSmem; break;
    case cudaDevAttrWarpSize: *value = warpSize; break;
    case cudaDevAttrMultiProcessorCount: *value = kSms; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = kSmemPerSm; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = kMaxThreadsPerSm; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = optin_smem(); break;
    case cudaDevAttrMaxRegistersPerBlock: *value = 65536; break;
    case cudaDevAttrL2CacheSize: *value = 50 * 1024 * 1024; break;
    case cudaDevAttrClusterLaunch: *value = 1; break;
    default: return fail(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }  // launches are synchronous
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaGetLastError(void) {
  const cudaError_t error = last_error;
  last_error = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError(void) { return last_error; }

const char* cudaGetErrorName(cudaError_t error) { return error_name(error); }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInsufficientDriver:
      return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorInvalidClusterSize: return "cluster size is invalid";
  }
  return "unrecognized error code";
}

cudaError_t cudaDriverGetVersion(int* version) {
  if (version == nullptr) return fail(cudaErrorInvalidValue);
  *version = driver();
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  if (version == nullptr) return fail(cudaErrorInvalidValue);
  *version = DINO_EMULATION_CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void* func) {
  if (attr == nullptr) return fail(cudaErrorInvalidValue);
  if (func == nullptr) return fail(cudaErrorInvalidDeviceFunction);
  const FuncState state = func_state(func);
  *attr = cudaFuncAttributes();
  attr->maxThreadsPerBlock = kMaxThreadsPerBlock;
  attr->ptxVersion = attr->binaryVersion = 90;
  attr->maxDynamicSharedSizeBytes = state.max_dynamic_smem;
  attr->preferredShmemCarveout = state.carveout;
  attr->nonPortableClusterSizeAllowed = state.non_portable_clusters;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (func == nullptr) return fail(cudaErrorInvalidDeviceFunction);
  if (!driver_supported()) return fail(cudaErrorInsufficientDriver);
  std::lock_guard<std::mutex> lock(attributes_mutex);
  FuncState& state = attributes()[func];
  switch (attr) {
    case cudaFuncAttributeMaxDynamicSharedMemorySize:
      // static shared memory is not known here (reported 0): the opt-in limit is all of it
      if (value < 0 || value > optin_smem()) return fail(cudaErrorInvalidValue);
      state.max_dynamic_smem = value;
      return cudaSuccess;
    case cudaFuncAttributePreferredSharedMemoryCarveout:
      if (value < -1 || value > 100) return fail(cudaErrorInvalidValue);
      state.carveout = value;
      return cudaSuccess;
    case cudaFuncAttributeNonPortableClusterSizeAllowed:
      if (value != 0 && value != 1) return fail(cudaErrorInvalidValue);
      state.non_portable_clusters = value == 1;
      return cudaSuccess;
  }
  return fail(cudaErrorInvalidValue);
}

// Clusters of the launch's shape that fit the device at once: per SM, blocks as threads and
// shared memory allow; per GPC (16 SMs), whole clusters of those. 0 when the cluster is
// larger than the largest schedulable one (dino_emulation_set_max_cluster).
cudaError_t cudaOccupancyMaxActiveClusters(int* clusters, const void* func,
                                           const cudaLaunchConfig_t* config) {
  if (clusters == nullptr || config == nullptr) return fail(cudaErrorInvalidValue);
  LaunchShape shape;
  const cudaError_t error = check_config(*config, func, &shape);
  if (error != cudaSuccess) return fail(error);
  const dim3 b = config->blockDim;
  const int threads = (static_cast<int>(b.x * b.y * b.z) + 31) / 32 * 32;
  const int by_smem =
      kSmemPerSm / (static_cast<int>(config->dynamicSmemBytes) + kReservedSmemPerBlock);
  int per_sm = kMaxThreadsPerSm / threads;
  per_sm = per_sm < by_smem ? per_sm : by_smem;
  per_sm = per_sm < kMaxBlocksPerSm ? per_sm : kMaxBlocksPerSm;
  const int size = static_cast<int>(shape.cluster_blocks);
  *clusters = size > max_cluster() ? 0 : (kSms / kSmsPerGpc) * (kSmsPerGpc * per_sm / size);
  return cudaSuccess;
}

DINO_EMULATION_EXPORT int dino_emulation_set_max_cluster(int blocks) {
  return forced_max_cluster.exchange(blocks < 0 ? 0 : blocks);
}

DINO_EMULATION_EXPORT int dino_emulation_set_optin_smem(int bytes) {
  return forced_optin_smem.exchange(bytes < 0 ? 0 : bytes);
}

DINO_EMULATION_EXPORT int dino_emulation_set_driver_version(int version) {
  return driver_version.exchange(version < 0 ? 0 : version);
}

// values[0 .. n) -> their __half (dtype 1) or __nv_bfloat16 (dtype 2) bits; dtype codes as
// dino_loss_kernel.h's. Returns 0, or -1 for another dtype.
DINO_EMULATION_EXPORT int dino_emulation_round(const float* values, uint16_t* out, long long n,
                                               int dtype) {
  if (dtype != 1 && dtype != 2) return -1;
  for (long long i = 0; i < n; ++i) {
    out[i] = dtype == 1 ? __float2half_rn(values[i]).bits : __float2bfloat16_rn(values[i]).bits;
  }
  return 0;
}

DINO_EMULATION_EXPORT int dino_emulation_widen(const uint16_t* bits, float* out, long long n,
                                               int dtype) {
  if (dtype != 1 && dtype != 2) return -1;
  for (long long i = 0; i < n; ++i) {
    out[i] = dtype == 1 ? __half2float(__half{bits[i]}) : __bfloat162float(__nv_bfloat16{bits[i]});
  }
  return 0;
}
