// The CPU emulation of the CUDA runtime (pipelines/kernels/emulation): types and the host
// API. Written for this project from the CUDA documentation's names and meanings; only what
// the kernel sources use is here. Error codes keep CUDA's numbers, so a code the Python glue
// prints means the same on both targets.
//
// Model: an emulated sm_90 device (an H100's limits). One OS thread per CUDA thread; the
// blocks of a launch run one cluster at a time (a plain launch: one block at a time), each
// cluster's threads concurrently; launches are synchronous (results are ready when the call
// returns) and every stream is the same one.
#ifndef DINO_EMULATION_TYPES_H_
#define DINO_EMULATION_TYPES_H_

#include <stddef.h>
#include <stdint.h>

#define DINO_EMULATION_CUDART_VERSION 13000  // the runtime version the stand-in reports
#ifndef CUDART_VERSION
#define CUDART_VERSION DINO_EMULATION_CUDART_VERSION
#endif

struct uint2 {
  unsigned int x, y;
};
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
inline uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
  return {x, y, z, w};
}

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInsufficientDriver = 35,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
  cudaErrorInvalidClusterSize = 912,
};
typedef cudaError_t cudaError;

typedef struct CUstream_st* cudaStream_t;  // never dereferenced: every stream is one queue

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock,
  cudaDevAttrMaxBlockDimX,
  cudaDevAttrMaxGridDimX,
  cudaDevAttrMaxSharedMemoryPerBlock,
  cudaDevAttrWarpSize,
  cudaDevAttrMultiProcessorCount,
  cudaDevAttrComputeCapabilityMajor,
  cudaDevAttrComputeCapabilityMinor,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor,
  cudaDevAttrMaxThreadsPerMultiProcessor,
  cudaDevAttrMaxSharedMemoryPerBlockOptin,
  cudaDevAttrMaxRegistersPerBlock,
  cudaDevAttrL2CacheSize,
  cudaDevAttrClusterLaunch,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize,
  cudaFuncAttributePreferredSharedMemoryCarveout,
  cudaFuncAttributeNonPortableClusterSizeAllowed,
};

struct cudaFuncAttributes {
  size_t sharedSizeBytes;  // static shared memory: not known to the emulation, reported 0
  size_t constSizeBytes;
  size_t localSizeBytes;
  int maxThreadsPerBlock;
  int numRegs;  // not known to the emulation, reported 0
  int ptxVersion;
  int binaryVersion;
  int cacheModeCA;
  int maxDynamicSharedSizeBytes;
  int preferredShmemCarveout;
  int clusterDimMustBeSet;
  int requiredClusterWidth;
  int requiredClusterHeight;
  int requiredClusterDepth;
  int clusterSchedulingPolicyPreference;
  int nonPortableClusterSizeAllowed;
};

enum cudaLaunchAttributeID {
  cudaLaunchAttributeIgnore = 0,
  cudaLaunchAttributeClusterDimension = 4,
};

union cudaLaunchAttributeValue {
  char pad[64];
  struct {
    unsigned int x, y, z;
  } clusterDim;
};

struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  cudaLaunchAttributeValue val;
};

struct cudaLaunchConfig_t {
  dim3 gridDim;
  dim3 blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  cudaLaunchAttribute* attrs;
  unsigned int numAttrs;
};

// ------------------------------------------------------------------------------ host API
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char* cudaGetErrorString(cudaError_t error);
const char* cudaGetErrorName(cudaError_t error);
cudaError_t cudaDriverGetVersion(int* version);
cudaError_t cudaRuntimeGetVersion(int* version);
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void* func);
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
cudaError_t cudaOccupancyMaxActiveClusters(int* clusters, const void* func,
                                           const cudaLaunchConfig_t* config);

// The CUDA built-in variables, per emulated thread (set by the scheduler before it calls
// the kernel).
extern __thread uint3 threadIdx;
extern __thread uint3 blockIdx;
extern __thread dim3 blockDim;
extern __thread dim3 gridDim;
constexpr int warpSize = 32;

namespace dino_emu {

// A kernel call with its arguments bound: the scheduler runs `run(args)` once per thread.
struct Thunk {
  void (*run)(void* args);
  void* args;
};

// Checks `config` against the device and `func`'s attributes (CUDA's error codes), then runs
// every block and returns when all are done: cudaSuccess, or the first error the kernel's
// threads reported (cudaErrorLaunchFailure for a misuse the emulation detects, with a
// message on stderr).
cudaError_t launch(const cudaLaunchConfig_t& config, const void* func, Thunk thunk);

}  // namespace dino_emu

#endif  // DINO_EMULATION_TYPES_H_
