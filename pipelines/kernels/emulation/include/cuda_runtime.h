// Stand-in for the CUDA runtime header, for the CPU emulation of the kernel library
// (pipelines/kernels/emulation; built by `dino-build-kernels --emulate`). The types and
// the host API are in dino_emulation/types.h, the device side in dino_emulation/device.h;
// this file adds the typed templates CUDA's own header has: cudaLaunchKernelEx (the only
// way to launch here: `<<<...>>>` is nvcc syntax, and a type-erased kernel pointer cannot
// be called) and the attribute and occupancy queries on a kernel of any type.
#ifndef DINO_EMULATION_CUDA_RUNTIME_H_
#define DINO_EMULATION_CUDA_RUNTIME_H_

#include <tuple>
#include <utility>

#include "dino_emulation/device.h"
#include "dino_emulation/types.h"

namespace dino_emu {

template <typename... Params>
struct BoundKernel {
  void (*kernel)(Params...);
  std::tuple<std::decay_t<Params>...> params;

  // Every emulated thread calls the kernel with its own copy of the arguments.
  static void run(void* self) {
    auto* bound = static_cast<BoundKernel*>(self);
    std::apply(bound->kernel, bound->params);
  }
};

}  // namespace dino_emu

// Launches `kernel` with `args` converted to its parameter types, as CUDA's template does;
// returns when every block has run.
template <typename... Params, typename... Args>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(Params...),
                               Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "one argument per kernel parameter");
  if (config == nullptr || kernel == nullptr) return cudaErrorInvalidValue;
  dino_emu::BoundKernel<Params...> bound{kernel, {std::forward<Args>(args)...}};
  return dino_emu::launch(*config, reinterpret_cast<const void*>(kernel),
                          dino_emu::Thunk{&dino_emu::BoundKernel<Params...>::run, &bound});
}

template <typename T>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, T* entry) {
  return cudaFuncGetAttributes(attr, reinterpret_cast<const void*>(entry));
}

template <typename T>
cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}

template <typename T>
cudaError_t cudaOccupancyMaxActiveClusters(int* clusters, T* func,
                                           const cudaLaunchConfig_t* config) {
  return cudaOccupancyMaxActiveClusters(clusters, reinterpret_cast<const void*>(func), config);
}

#endif  // DINO_EMULATION_CUDA_RUNTIME_H_
