// Probes of the CPU emulation's stand-in runtime (tests/pipelines/kernels/test_emulation.py):
// small kernels with known answers for each emulated mechanism (shuffles, votes, barriers
// with exited threads, atomics, clusters, shared memory) and launches the CUDA runtime
// refuses. Built with build_emulation(sources=(this file,)); every probe_* function returns
// the launch's error code and clears the thread's last error (but probe_last_error).
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include "device_target.h"

#define PROBE extern "C" __attribute__((visibility("default")))

namespace cg = cooperative_groups;

// Per thread, 8 ints: xor 1, down 3 within 8 lanes, up 2, lane 5's value, a ballot of odd
// lanes, all(lane < 32), any(lane == 7), a double moved by xor 16 (x 2).
__global__ void shuffles(int* out) {
  const int lane = threadIdx.x % 32;
  int* o = out + threadIdx.x * 8;
  o[0] = __shfl_xor_sync(0xffffffffu, lane * 10, 1);
  o[1] = __shfl_down_sync(0xffffffffu, lane * 10, 3, 8);
  o[2] = __shfl_up_sync(0xffffffffu, lane * 10, 2);
  o[3] = __shfl_sync(0xffffffffu, lane * 10, 5);
  o[4] = static_cast<int>(__ballot_sync(0xffffffffu, lane & 1));
  o[5] = __all_sync(0xffffffffu, lane < 32);
  o[6] = __any_sync(0xffffffffu, lane == 7);
  o[7] = static_cast<int>(2.0 * __shfl_xor_sync(0xffffffffu, lane + 0.25, 16));
}

// The first `active` threads sum their indices through shared memory across two barriers;
// the others return at once (they must not hold the barriers up).
__global__ void early_exit(int active, int* out) {
  DINO_DYNAMIC_SHARED(int, slots);
  if (static_cast<int>(threadIdx.x) >= active) return;
  slots[threadIdx.x] = static_cast<int>(threadIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) {
    int sum = 0;
    for (int i = 0; i < active; ++i) sum += slots[i];
    slots[0] = sum;
  }
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = slots[0];
}

__global__ void atomics(int* count, float* sum, int* largest) {
  atomicAdd(count, 1);
  atomicAdd(sum, 0.5f);
  atomicMax(largest, static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x));
}

// Each block of a cluster stores its rank; after the cluster barrier it reads the next
// rank's value from that block's shared memory.
__global__ void cluster_ring(int* out) {
  DINO_DYNAMIC_SHARED(int, mine);
  const cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank(), size = cluster.num_blocks();
  if (threadIdx.x == 0) mine[0] = 100 * static_cast<int>(blockIdx.x) + static_cast<int>(rank);
  cluster.sync();
  const int* next = cluster.map_shared_rank(mine, (rank + 1) % size);
  if (threadIdx.x == 0) out[blockIdx.x] = next[0];
  cluster.barrier_arrive();
  cluster.barrier_wait();
}

__global__ void static_shared(int* out) {
  __shared__ int cell[1];
  if (threadIdx.x == 0) cell[0] = static_cast<int>(blockIdx.x);
  __syncthreads();
  if (threadIdx.x == blockDim.x - 1) out[blockIdx.x] = cell[0];
}

// Reads the dynamic shared memory before anything is written to it.
__global__ void read_unwritten(unsigned* out) {
  DINO_DYNAMIC_SHARED(unsigned, smem);
  if (threadIdx.x == 0) out[0] = smem[1];
}

// Lane 1 returns (the barrier completes once it has); the others then shuffle from it.
__global__ void shuffle_from_exited(int* out) {
  if (threadIdx.x == 1) return;
  __syncthreads();
  out[threadIdx.x] = __shfl_sync(0xffffffffu, 7, 1);
}

__global__ void arrive_without_wait() {
  cg::this_cluster().barrier_arrive();
}

__global__ void nothing() {}

namespace {
int settle(cudaError_t err) {
  cudaGetLastError();  // each probe starts from a clear last error
  return static_cast<int>(err);
}

// A launch of `blocks` blocks of `threads` in clusters of `cluster` (*attr: its attribute).
cudaLaunchConfig_t cluster_config(int blocks, int threads, int cluster, int smem,
                                  cudaLaunchAttribute* attr) {
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = static_cast<unsigned>(cluster);
  attr->val.clusterDim.y = attr->val.clusterDim.z = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(static_cast<unsigned>(threads));
  config.dynamicSmemBytes = static_cast<size_t>(smem);
  config.attrs = attr;
  config.numAttrs = 1;
  return config;
}

cudaError_t launch_cluster(void (*kernel)(int*), int blocks, int cluster, int smem, int* out) {
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t config = cluster_config(blocks, 64, cluster, smem, &attr);
  return cudaLaunchKernelEx(&config, kernel, out);
}
}  // namespace

PROBE int probe_shuffles(int threads, int* out) {
  return settle(dino_target::launch(shuffles, dim3(1), dim3(threads), 0, nullptr, out));
}

PROBE int probe_early_exit(int blocks, int threads, int active, int* out) {
  return settle(dino_target::launch(early_exit, dim3(blocks), dim3(threads),
                                    threads * sizeof(int), nullptr, active, out));
}

PROBE int probe_atomics(int blocks, int threads, int* count, float* sum, int* largest) {
  return settle(dino_target::launch(atomics, dim3(blocks), dim3(threads), 0, nullptr, count,
                                    sum, largest));
}

PROBE int probe_cluster_ring(int blocks, int cluster, int* out) {
  return settle(launch_cluster(cluster_ring, blocks, cluster, 16, out));
}

PROBE int probe_static_shared(int blocks, int cluster, int* out) {
  return settle(launch_cluster(static_shared, blocks, cluster, 0, out));
}

PROBE int probe_read_unwritten(unsigned* out) {
  return settle(dino_target::launch(read_unwritten, dim3(1), dim3(32), 64, nullptr, out));
}

PROBE int probe_shuffle_from_exited(int* out) {
  return settle(dino_target::launch(shuffle_from_exited, dim3(1), dim3(32), 0, nullptr, out));
}

PROBE int probe_arrive_without_wait(void) {
  return settle(dino_target::launch(arrive_without_wait, dim3(1), dim3(32), 0, nullptr));
}

// A launch of `threads` threads with `smem` bytes of dynamic shared memory, after setting
// the kernel's opt-in attribute to `optin` (< 0: left as it is).
PROBE int probe_launch(int threads, int smem, int optin) {
  if (optin >= 0) {
    const cudaError_t err =
        cudaFuncSetAttribute(nothing, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
    if (err != cudaSuccess) return settle(err);
  }
  return settle(dino_target::launch(nothing, dim3(1), dim3(threads), smem, nullptr));
}

// A cluster launch of `nothing`; `non_portable`: the attribute set first.
PROBE int probe_cluster_launch(int blocks, int cluster, int non_portable) {
  cudaFuncSetAttribute(nothing, cudaFuncAttributeNonPortableClusterSizeAllowed, non_portable);
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t config = cluster_config(blocks, 32, cluster, 0, &attr);
  return settle(cudaLaunchKernelEx(&config, nothing));
}

// cudaOccupancyMaxActiveClusters for clusters of `cluster` blocks of 512 threads with `smem`
// bytes each (non-portable sizes allowed), into *clusters.
PROBE int probe_occupancy(int cluster, int smem, int* clusters) {
  cudaFuncSetAttribute(nothing, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  cudaFuncSetAttribute(nothing, cudaFuncAttributeMaxDynamicSharedMemorySize, 232448);
  cudaLaunchAttribute attr;
  const cudaLaunchConfig_t config = cluster_config(cluster, 512, cluster, smem, &attr);
  return settle(cudaOccupancyMaxActiveClusters(clusters, nothing, &config));
}

// The last error after a refused launch, read twice: (code, then cudaSuccess).
PROBE int probe_last_error(int* first, int* second) {
  const int err = dino_target::launch(nothing, dim3(1), dim3(2048), 0, nullptr);
  dino_target::launch(nothing, dim3(1), dim3(2048), 0, nullptr);  // clears as it returns
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(1);
  config.blockDim = dim3(2048);
  cudaLaunchKernelEx(&config, nothing);  // leaves it set
  *first = cudaGetLastError();
  *second = cudaGetLastError();
  return err;
}
