// The fused photometric finish on a CUDA device: launch glue only. The math is in
// photometric.cuh (per pixel) and photometric_tile.cuh (per block), which the host twin
// (photometric_host.cpp) builds too; the C interface is declared in photometric_api.h.
//
// Per call, for all segments (view sizes) together, two launches on the caller's stream:
//   means_kernel  one block per (view, PART_ROWS rows), views with jitter only: the luma sum
//                 of the jitter ops before contrast -> workspace
//   fused_kernel  one block per TILE x TILE output tile: everything else, one read of the
//                 crop (plus the blur halo, from L2) and one write of the output.
// The launch description (pointers, sizes, spec constants) is a kernel argument: no
// host-to-device copy and no host sync; the calls can be captured in a CUDA graph.
// g++ builds this file too, against the CPU emulation's stand-in CUDA headers
// (pipelines/kernels/emulation): the launches go through dino_target::launch
// (device_target.h), and means_kernel's static shared array is one per block there because
// the emulation runs the blocks of a launch without clusters one at a time.
#include <cuda_runtime.h>

#include "device_target.h"
#include "photometric_api.h"
#include "photometric_launch.cuh"
#include "photometric_tile.cuh"

namespace photometric {

__global__ void __launch_bounds__(THREADS) means_kernel(const __grid_constant__ Launch L) {
  const Part q = part_of(L, blockIdx.x);
  if (!q.active) return;  // the same for every thread of the block
  float sum = part_sum(q, threadIdx.x, THREADS);
  for (int d = 16; d > 0; d >>= 1) sum += __shfl_down_sync(0xffffffffu, sum, d);
  __shared__ float warp_sums[THREADS / 32];
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < THREADS / 32; ++w) total += warp_sums[w];
    q.seg->partial[(size_t)q.n * q.seg->parts + q.y_begin / PART_ROWS] = total;
  }
}

template <class Out>
__global__ void __launch_bounds__(THREADS) fused_kernel(const __grid_constant__ Launch L) {
  DINO_DYNAMIC_SHARED(float, smem);
  const Tile t = tile_of(L, blockIdx.x);
  const int tid = threadIdx.x;
  if (!t.s.valid || !t.s.blur) {  // the same for every thread of the block
    direct<Out>(t, tid, THREADS);
    return;
  }
  float* P = smem;
  float* Q = P + 3 * t.plane_p;
  float* taps = Q + 3 * t.plane_q;
  if (tid == 0) gaussian_taps(t.s.sigma, t.s.radius, taps);
  fill(t, P, tid, THREADS);
  __syncthreads();
  PHOTO_DISPATCH_RADIUS(t.s.radius, hblur, t, P, Q, taps, tid, THREADS)
  __syncthreads();
  PHOTO_DISPATCH_RADIUS(t.s.radius, vblur, t, Q, P, taps, tid, THREADS)
  __syncthreads();
  store_tile<Out>(t, P, tid, THREADS);
}

template <class Out>
int launch_fused(const Launch& L, cudaStream_t stream) {
  const size_t smem = sizeof(float) * scratch_floats(L.max_radius);
  if (smem > 48 * 1024) {  // beyond the default: opt in (a host-side attribute, no sync)
    const cudaError_t err = cudaFuncSetAttribute(
        fused_kernel<Out>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess) {
      cudaGetLastError();  // reported by this call: not left for the next launch to return
      return (int)err;
    }
  }
  return (int)dino_target::launch(fused_kernel<Out>, dim3(L.blocks_b), dim3(THREADS), smem,
                                 stream, L);
}

}  // namespace photometric

using namespace photometric;

extern "C" PHOTO_EXPORT int dino_photometric_finish(
    int num_segments, const void* const* crops, const void* const* rows, void* const* outs,
    const int* counts, const int* sizes, int rows_dtype, int out_dtype, const float* norm,
    float solarize_at, int max_radius, float* workspace, long long workspace_floats_given,
    void* stream) {
  Launch L;
  int code = make_launch(num_segments, crops, rows, outs, counts, sizes, rows_dtype, out_dtype,
                         norm, solarize_at, max_radius, workspace, workspace_floats_given, &L);
  if (code != 0) return code;
  if (L.blocks_b == 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  code = (int)dino_target::launch(means_kernel, dim3(L.blocks_a), dim3(THREADS), 0, s, L);
  if (code != 0) return code;
  switch (out_dtype) {
    case PHOTO_FLOAT16: return launch_fused<OutF16>(L, s);
    case PHOTO_BFLOAT16: return launch_fused<OutBF16>(L, s);
    default: return launch_fused<OutF32>(L, s);
  }
}

extern "C" PHOTO_EXPORT long long dino_photometric_workspace_floats(int num_segments,
                                                                    const int* counts,
                                                                    const int* sizes) {
  return workspace_floats(num_segments, counts, sizes);
}

extern "C" PHOTO_EXPORT const char* dino_photometric_error_string(int code) {
  const char* own = own_error_string(code);
  if (own != nullptr) return own;
  return code > 0 ? cudaGetErrorString(static_cast<cudaError_t>(code)) : "unknown error code";
}

extern "C" PHOTO_EXPORT const char* dino_photometric_layout(void) { return PHOTO_LAYOUT; }
extern "C" PHOTO_EXPORT int dino_photometric_max_segments(void) { return MAX_SEGMENTS; }
extern "C" PHOTO_EXPORT int dino_photometric_max_radius(void) { return MAX_RADIUS; }
