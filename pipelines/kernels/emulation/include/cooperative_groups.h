// Stand-in for CUDA's cooperative groups (CPU emulation, pipelines/kernels/emulation): the
// block and the thread-block cluster. A cluster's blocks run at the same time, each on its
// own threads (scheduler.cpp); its barrier is a barrier of all their threads, split
// into arrive and wait as on sm_90; map_shared_rank maps an address in this block's dynamic
// shared memory to the same offset in a peer block's.
#ifndef DINO_EMULATION_COOPERATIVE_GROUPS_H_
#define DINO_EMULATION_COOPERATIVE_GROUPS_H_

#include "dino_emulation/device.h"

namespace dino_emu {
void cluster_sync();
void cluster_arrive();
void cluster_wait();
unsigned cluster_rank();
unsigned cluster_blocks();
dim3 cluster_dims();
// `offset` bytes into the dynamic shared memory of block `rank` of this cluster; the
// launch fails when `offset` is not inside this block's (an address of static shared memory
// or of another space).
unsigned char* cluster_peer(const void* address, unsigned rank);
}  // namespace dino_emu

namespace cooperative_groups {

class thread_block {
 public:
  void sync() const { __syncthreads(); }
  unsigned thread_rank() const {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  }
  unsigned size() const { return blockDim.x * blockDim.y * blockDim.z; }
  dim3 group_index() const { return dim3(blockIdx); }
  dim3 thread_index() const { return dim3(threadIdx); }
};

class cluster_group {
 public:
  void sync() const { dino_emu::cluster_sync(); }
  void barrier_arrive() const { dino_emu::cluster_arrive(); }
  void barrier_wait() const { dino_emu::cluster_wait(); }
  unsigned block_rank() const { return dino_emu::cluster_rank(); }
  unsigned num_blocks() const { return dino_emu::cluster_blocks(); }
  dim3 dim_blocks() const { return dino_emu::cluster_dims(); }
  template <typename T>
  T* map_shared_rank(T* address, unsigned rank) const {
    return reinterpret_cast<T*>(dino_emu::cluster_peer(address, rank));
  }
};

inline thread_block this_thread_block() { return thread_block(); }
inline cluster_group this_cluster() { return cluster_group(); }

}  // namespace cooperative_groups

#endif  // DINO_EMULATION_COOPERATIVE_GROUPS_H_
