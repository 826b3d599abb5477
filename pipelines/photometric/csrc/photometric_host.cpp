// The host twin of photometric_kernel.cu: the same header phases (photometric_tile.cuh) run
// with one "thread" (tid 0, nth 1), block after block in grid order, over a scratch array
// that stands in for a block's shared memory. Built with g++ by
// pipelines/photometric/host_twin.py and tested against the numba kernel and the torch ops;
// the CUDA kernel is then tested against this twin on a GPU.
//
// It differs from the kernel only in what a single thread cannot mimic: pass A's luma sum of
// a block is one sequential float sum instead of per-thread sums reduced by warps, and the
// host compiler does not contract multiply-adds into FMAs (built with -ffp-contract=off).
#include <vector>

#include "photometric_api.h"
#include "photometric_launch.cuh"
#include "photometric_tile.cuh"

using namespace photometric;

namespace {

template <class Out>
void fused_blocks(const Launch& L) {
  std::vector<float> scratch(scratch_floats(L.max_radius));
  for (int block = 0; block < L.blocks_b; ++block) {
    const Tile t = tile_of(L, block);
    if (!t.s.valid || !t.s.blur) {
      direct<Out>(t, 0, 1);
      continue;
    }
    float* P = scratch.data();
    float* Q = P + 3 * t.plane_p;
    float* taps = Q + 3 * t.plane_q;
    gaussian_taps(t.s.sigma, t.s.radius, taps);
    fill(t, P, 0, 1);
    PHOTO_DISPATCH_RADIUS(t.s.radius, hblur, t, P, Q, taps, 0, 1)
    PHOTO_DISPATCH_RADIUS(t.s.radius, vblur, t, Q, P, taps, 0, 1)
    store_tile<Out>(t, P, 0, 1);
  }
}

}  // namespace

// dino_photometric_finish on host memory (stream ignored); same arguments and codes.
extern "C" PHOTO_EXPORT int dino_photometric_host_finish(
    int num_segments, const void* const* crops, const void* const* rows, void* const* outs,
    const int* counts, const int* sizes, int rows_dtype, int out_dtype, const float* norm,
    float solarize_at, int max_radius, float* workspace, long long workspace_floats_given,
    void* /*stream*/) {
  Launch L;
  const int code = make_launch(num_segments, crops, rows, outs, counts, sizes, rows_dtype,
                               out_dtype, norm, solarize_at, max_radius, workspace,
                               workspace_floats_given, &L);
  if (code != 0) return code;
  for (int block = 0; block < L.blocks_a; ++block) {  // pass A
    const Part q = part_of(L, block);
    if (q.active)
      q.seg->partial[(size_t)q.n * q.seg->parts + q.y_begin / PART_ROWS] = part_sum(q, 0, 1);
  }
  switch (out_dtype) {  // pass B
    case PHOTO_FLOAT16: fused_blocks<OutF16>(L); break;
    case PHOTO_BFLOAT16: fused_blocks<OutBF16>(L); break;
    default: fused_blocks<OutF32>(L); break;
  }
  return 0;
}

extern "C" PHOTO_EXPORT long long dino_photometric_host_workspace_floats(int num_segments,
                                                                         const int* counts,
                                                                         const int* sizes) {
  return workspace_floats(num_segments, counts, sizes);
}

extern "C" PHOTO_EXPORT const char* dino_photometric_host_error_string(int code) {
  const char* own = own_error_string(code);
  return own != nullptr ? own : "unknown error code";
}

extern "C" PHOTO_EXPORT const char* dino_photometric_host_layout(void) { return PHOTO_LAYOUT; }
extern "C" PHOTO_EXPORT int dino_photometric_host_max_segments(void) { return MAX_SEGMENTS; }
extern "C" PHOTO_EXPORT int dino_photometric_host_max_radius(void) { return MAX_RADIUS; }

// The header's output conversions on n floats (tests: against torch's, on special values).
extern "C" PHOTO_EXPORT int dino_photometric_host_convert(const float* in, void* out,
                                                          long long n, int out_dtype) {
  uint16_t* half = static_cast<uint16_t*>(out);
  for (long long i = 0; i < n; ++i) {
    if (out_dtype == PHOTO_FLOAT16) {
      half[i] = to_float16(in[i]);
    } else if (out_dtype == PHOTO_BFLOAT16) {
      half[i] = to_bfloat16(in[i]);
    } else {
      return PHOTO_BAD_DTYPE;
    }
  }
  return 0;
}
