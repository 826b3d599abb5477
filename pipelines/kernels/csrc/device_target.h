// What differs between the kernel library's two targets, in one place:
//   - the GPU: nvcc builds the kernel sources for sm_XY (pipelines/kernels/build.py);
//   - the CPU emulation: g++ builds the SAME sources as C++ against stand-in CUDA headers
//     (pipelines/kernels/emulation/, -DDINO_EMULATION), one OS thread per CUDA thread, for
//     the tests and the sanitizers (`dino-build-kernels --emulate`).
// Kernel sources use the macros and the launch function below where g++ cannot take CUDA's
// own syntax (`extern __shared__` arrays, `<<<...>>>`, inline PTX). Under nvcc each of them
// is exactly what the sources wrote before; nothing here changes the GPU build's behaviour.
#ifndef DINO_DEVICE_TARGET_H_
#define DINO_DEVICE_TARGET_H_

#include <cuda_runtime.h>
#include <stddef.h>

#include <utility>

// The architecture inline PTX may target: __CUDA_ARCH__ in nvcc's device pass, 0 in its
// host pass and in the emulation. The emulation defines __CUDA_ARCH__ as 900 (the device it
// stands for, so that the sm_90 device paths, clusters included, are the ones it runs) but
// cannot execute PTX: code under `#if DINO_PTX_ARCH >= 800` takes its portable branch there.
#if defined(__CUDA_ARCH__) && !defined(DINO_EMULATION)
#define DINO_PTX_ARCH __CUDA_ARCH__
#else
#define DINO_PTX_ARCH 0
#endif

// `DINO_DYNAMIC_SHARED(T, name);` in a kernel body declares `name`, the block's dynamic shared
// memory as an array of T, 16-byte aligned. Under nvcc: `extern __shared__ __align__(16)
// T name[]`. Under emulation (where g++ has no per-block arrays): a T* to this block's
// buffer, sized by the launch exactly (an access past it is out of bounds for ASan).
#ifdef DINO_EMULATION
#define DINO_DYNAMIC_SHARED(T, name) \
  T* const name = reinterpret_cast<T*>(::dino_emu::dynamic_shared())
#else
#define DINO_DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]
#endif

namespace dino_target {

// One launch of `kernel` over `grid` x `block` threads with `smem` bytes of dynamic shared
// memory on `stream`: the CUDA runtime's typed cudaLaunchKernelEx (the arguments are
// converted to the kernel's parameter types, as `<<<...>>>` does), which the emulation
// implements too. Returns and clears the thread's last error, as `kernel<<<...>>>(...)`
// followed by cudaGetLastError() does: cudaSuccess once the launch is queued.
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  const cudaError_t last = cudaGetLastError();
  return err != cudaSuccess ? err : last;
}

}  // namespace dino_target

#endif  // DINO_DEVICE_TARGET_H_
