// The CPU emulation of CUDA device code (pipelines/kernels/emulation): qualifiers, barriers,
// warp shuffles and votes, atomics, intrinsics. Kernel code compiled with g++ against these
// definitions runs with one OS thread per CUDA thread (scheduler.cpp):
//   __syncthreads        a barrier of the block's threads (std::barrier's semantics on a
//                        futex: barrier.h); a thread that returns from the kernel arrives
//                        and drops, as an exited warp does on the GPU;
//   __shfl_*_sync, votes a per-warp exchange buffer (two slots, alternating) and a barrier of
//                        the warp's lanes: each lane publishes its value, waits, reads its
//                        source lane's. Only whole-warp masks are supported (checked);
//   atomics              std::atomic_ref on the same addresses;
//   static __shared__    a function-local `static` (one copy): correct because the blocks of
//                        a launch without clusters run one at a time; a kernel launched with
//                        clusters must not have one (the launch then fails: __shared__
//                        below checks it each time a thread passes the declaration).
// Dynamic shared memory is a per-block buffer (DINO_DYNAMIC_SHARED in
// pipelines/kernels/csrc/device_target.h), filled with 0xFF bytes (NaN in every float
// type) at the start of each block, so a read before a write shows up in the results.
#ifndef DINO_EMULATION_DEVICE_H_
#define DINO_EMULATION_DEVICE_H_

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <atomic>
#include <type_traits>

#include "dino_emulation/types.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) __attribute__((aligned(n)))
// A function-local static array, after a check that the launch is not a cluster launch (a
// cluster's blocks run together and would share it). Inside kernels only.
#define __shared__ ::dino_emu::note_static_shared(); static

namespace dino_emu {

// This block's dynamic shared memory (the launch's dynamicSmemBytes, exactly).
unsigned char* dynamic_shared();
void note_static_shared();
void syncthreads();
void syncwarp(unsigned mask);
// The 64 bits lane `src` (of this warp) published, after every lane of `mask` published its
// own `bits`; src < 0: this lane's own (it still takes part).
uint64_t exchange(unsigned mask, uint64_t bits, int src);
// The same exchange, every lane's bits into all[0 .. 31] (lanes not in the mask: 0).
void gather(unsigned mask, uint64_t bits, uint64_t* all);
unsigned lane_id();
unsigned active_mask();

template <typename T>
T shuffle(unsigned mask, T value, int src) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>,
                "the emulated shuffles move up to 8 bytes");
  uint64_t bits = 0;
  memcpy(&bits, &value, sizeof(T));
  bits = exchange(mask, bits, src);
  T out;
  memcpy(&out, &bits, sizeof(T));
  return out;
}

// The first lane of the `width`-lane segment holding this lane.
inline int segment_base(int width) { return static_cast<int>(lane_id()) & ~(width - 1); }

}  // namespace dino_emu

inline void __syncthreads() { dino_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { dino_emu::syncwarp(mask); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline unsigned __activemask() { return dino_emu::active_mask(); }

// Shuffles (CUDA's semantics for width < 32: segments of `width` lanes; a source outside
// the caller's segment yields the caller's own value).
template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  const int base = dino_emu::segment_base(width);
  return dino_emu::shuffle(mask, var, base + (src_lane & (width - 1)));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  const int lane = static_cast<int>(dino_emu::lane_id());
  const int src = lane ^ lane_mask;
  const int base = dino_emu::segment_base(width);
  return dino_emu::shuffle(mask, var, src >= base + width ? -1 : src);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  const int lane = static_cast<int>(dino_emu::lane_id());
  const int base = dino_emu::segment_base(width);
  const int src = lane + static_cast<int>(delta);
  return dino_emu::shuffle(mask, var, src >= base + width ? -1 : src);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  const int lane = static_cast<int>(dino_emu::lane_id());
  const int base = dino_emu::segment_base(width);
  const int src = lane - static_cast<int>(delta);
  return dino_emu::shuffle(mask, var, src < base ? -1 : src);
}

// Votes: every lane of the mask publishes its predicate; the bits of the mask's lanes.
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  uint64_t all[32];
  dino_emu::gather(mask, predicate != 0, all);
  unsigned bits = 0;
  for (int lane = 0; lane < warpSize; ++lane) bits |= static_cast<unsigned>(all[lane] != 0) << lane;
  return bits & mask;
}
inline int __all_sync(unsigned mask, int predicate) {
  return __ballot_sync(mask, predicate) == mask;
}
inline int __any_sync(unsigned mask, int predicate) {
  return __ballot_sync(mask, predicate) != 0;
}

// Atomics: read-modify-write of the value at `address`, returning the old value.
template <typename T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}
template <typename T>
T atomicExch(T* address, T value) {
  return std::atomic_ref<T>(*address).exchange(value);
}
template <typename T>
T atomicCAS(T* address, T compare, T value) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value);
  return compare;  // the old value, whether or not it was replaced
}
namespace dino_emu {
// Replaces *address by value while replace(old, value) holds; returns the old value.
template <typename T, typename Replace>
T atomic_update(T* address, T value, Replace replace) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (replace(old, value) && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}
}  // namespace dino_emu
template <typename T>
T atomicMax(T* address, T value) {
  return dino_emu::atomic_update(address, value, [](T old, T v) { return old < v; });
}
template <typename T>
T atomicMin(T* address, T value) {
  return dino_emu::atomic_update(address, value, [](T old, T v) { return v < old; });
}

// Loads through the read-only cache are plain loads here.
template <typename T>
T __ldg(const T* p) {
  return *p;
}

// Fast-math intrinsics: the exact host functions (the GPU's approximations, ex2.approx and
// friends, differ in the last bits: the emulation does not model them).
inline float __expf(float x) { return expf(x); }
inline float __exp2f(float x) { return exp2f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

// CUDA's device min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

#endif  // DINO_EMULATION_DEVICE_H_
