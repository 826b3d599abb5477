// Host side of a photometric launch, shared by the CUDA glue (photometric_kernel.cu) and the
// host twin (photometric_host.cpp): argument checks, the launch description, error strings.
#ifndef DINO_PHOTOMETRIC_LAUNCH_CUH_
#define DINO_PHOTOMETRIC_LAUNCH_CUH_

#include "photometric_api.h"
#include "photometric_tile.cuh"

namespace photometric {

inline long long workspace_floats(int num_segments, const int* counts, const int* sizes) {
  long long total = 0;
  for (int i = 0; i < num_segments; ++i)
    if (counts[i] > 0 && sizes[i] > 0) total += (long long)counts[i] * parts_of(sizes[i]);
  return total;
}

// Checks the arguments of dino_photometric_finish and describes the launch in L.
inline int make_launch(int num_segments, const void* const* crops, const void* const* rows,
                       void* const* outs, const int* counts, const int* sizes, int rows_dtype,
                       int out_dtype, const float* norm, float solarize_at, int max_radius,
                       float* workspace, long long workspace_floats_given, Launch* L) {
  if (num_segments < 1 || !crops || !rows || !outs || !counts || !sizes || !norm)
    return PHOTO_BAD_ARGUMENT;
  if (num_segments > MAX_SEGMENTS) return PHOTO_TOO_MANY_SEGMENTS;
  if ((rows_dtype != PHOTO_FLOAT32 && rows_dtype != PHOTO_FLOAT64) ||
      (out_dtype != PHOTO_FLOAT32 && out_dtype != PHOTO_FLOAT16 && out_dtype != PHOTO_BFLOAT16))
    return PHOTO_BAD_DTYPE;
  if (max_radius < 1 || max_radius > MAX_RADIUS) return PHOTO_BAD_RADIUS;
  memset(L, 0, sizeof(*L));
  L->num_segments = num_segments;
  L->rows_f64 = rows_dtype == PHOTO_FLOAT64;
  L->max_radius = max_radius;
  L->solarize_at = solarize_at;
  for (int c = 0; c < 3; ++c) L->scale[c] = norm[c], L->shift[c] = norm[3 + c];
  long long blocks_a = 0, blocks_b = 0, offset = 0;
  for (int i = 0; i < num_segments; ++i) {
    Segment& g = L->seg[i];
    if (counts[i] < 0 || sizes[i] < 1 || sizes[i] > 32768) return PHOTO_BAD_ARGUMENT;
    if (counts[i] > 0 && (!crops[i] || !rows[i] || !outs[i] || !workspace))
      return PHOTO_BAD_ARGUMENT;
    g.crops = static_cast<const uint8_t*>(crops[i]);
    g.rows = rows[i];
    g.out = outs[i];
    g.count = counts[i];
    g.size = sizes[i];
    g.tiles_x = (g.size + TILE - 1) / TILE;
    g.parts = parts_of(g.size);
    g.partial = workspace ? workspace + offset : nullptr;
    g.first_a = (int)blocks_a;
    g.first_b = (int)blocks_b;
    g.vec_in = g.size % 4 == 0 && reinterpret_cast<uintptr_t>(g.crops) % 4 == 0;
    g.vec_out = g.size % 8 == 0 && reinterpret_cast<uintptr_t>(g.out) % 16 == 0;
    offset += (long long)g.count * g.parts;
    blocks_a += (long long)g.count * g.parts;
    blocks_b += (long long)g.count * g.tiles_x * g.tiles_x;
    if (blocks_a > 0x7fffffffLL || blocks_b > 0x7fffffffLL) return PHOTO_BAD_ARGUMENT;
  }
  if (offset > workspace_floats_given) return PHOTO_SMALL_WORKSPACE;
  L->blocks_a = (int)blocks_a;
  L->blocks_b = (int)blocks_b;
  return 0;
}

inline const char* own_error_string(int code) {
  switch (code) {
    case 0: return "no error";
    case PHOTO_BAD_DTYPE:
      return "unsupported dtype (rows: float32/float64; out: float32/float16/bfloat16)";
    case PHOTO_BAD_ARGUMENT:
      return "bad argument (null pointer, negative count, size outside 1..32768, or more "
             "than 2^31 blocks)";
    case PHOTO_TOO_MANY_SEGMENTS: return "more segments than dino_photometric_max_segments()";
    case PHOTO_BAD_RADIUS: return "max_radius outside 1 .. dino_photometric_max_radius()";
    case PHOTO_SMALL_WORKSPACE: return "workspace smaller than dino_photometric_workspace_floats()";
    default: return nullptr;
  }
}

}  // namespace photometric

#endif  // DINO_PHOTOMETRIC_LAUNCH_CUH_
