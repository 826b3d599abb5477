// Shared by the emulation's runtime.cpp (device, attributes, errors, launch checks) and
// scheduler.cpp (the threads that run a launch). Not seen by kernel code.
#ifndef DINO_EMULATION_INTERNAL_H_
#define DINO_EMULATION_INTERNAL_H_

#include "dino_emulation/types.h"

namespace dino_emu {

// The emulated device: an H100 (sm_90) as the CUDA runtime describes it.
constexpr int kSms = 132;
constexpr int kSmsPerGpc = 16;               // the largest cluster a GPC schedules (non-portable)
constexpr int kMaxPortableCluster = 8;
constexpr int kDefaultDynamicSmem = 48 * 1024;  // without the opt-in attribute
constexpr int kOptinSmemPerBlock = 232448;       // 227 KiB
constexpr int kSmemPerSm = 233472;               // 228 KiB
constexpr int kReservedSmemPerBlock = 1024;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kMaxThreadsPerSm = 2048;
constexpr int kMaxBlocksPerSm = 32;

// The sizes of a checked launch.
struct LaunchShape {
  dim3 cluster;            // blocks per cluster in each dimension (1, 1, 1 without one)
  unsigned cluster_blocks;  // their product
};

// Checks a launch as the CUDA runtime would (grid and block sizes, dynamic shared memory
// against the kernel's attribute, the cluster dimension against the grid, the portable size
// and the largest schedulable cluster) and returns its shape in *shape, or the error.
cudaError_t check_launch(const cudaLaunchConfig_t& config, const void* func, LaunchShape* shape);

// The thread's last error, as cudaGetLastError returns it.
void set_last_error(cudaError_t error);

}  // namespace dino_emu

#endif  // DINO_EMULATION_INTERNAL_H_
