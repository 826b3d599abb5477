// The two passes of the photometric finish, as block-level __host__ __device__ phases. Each
// phase takes (tid, nth) and loops its work items `for (i = tid; i < n; i += nth)`: the CUDA
// kernel (photometric_kernel.cu) runs it with a block's threads and __syncthreads between
// phases; the host twin (photometric_host.cpp) runs the same phases with tid = 0, nth = 1,
// block after block, over arrays that stand in for shared memory. So the tiling, halos,
// edge clamping and stores are tested on the CPU, not only the per-pixel math.
//
// Pass A ("means"): one block per (view with jitter, PART_ROWS rows): the jitter ops before
//   contrast, summed as luma; one float per block into the workspace (no atomics: the
//   result does not depend on scheduling).
// Pass B ("fused"): one block per TILE x TILE output tile of a view. It adds the view's
//   partial sums (the contrast mean), then
//   - no blur: each thread loads GROUP pixels, runs the colour chain, solarize, normalise,
//     and stores GROUP outputs per channel;
//   - blur: fill a halo'd tile P (colour chain per pixel, columns halo'd to a multiple of
//     GROUP, rows by the radius, coordinates clamped: edge replicate), horizontal blur
//     P -> Q, vertical blur + solarize + normalise Q -> staging (P's memory), then stores
//     of STORE outputs. Gray views blur one plane instead of three.
// Loads are 3 x 32-bit words per GROUP pixels (rows 4-aligned: S % 4 == 0), stores 8 or 16
// bytes (S % 8 == 0, outputs 16-byte aligned); other sizes take byte loads and element
// stores. Shared-memory accesses of the blur passes are free of bank conflicts: work items
// run along rows in the horizontal pass (odd pitch) and along columns in the vertical one.
#ifndef DINO_PHOTOMETRIC_TILE_CUH_
#define DINO_PHOTOMETRIC_TILE_CUH_

#include "photometric.cuh"

namespace photometric {

constexpr int TILE = 32;       // output tile side (pixels); one block of pass B per tile
constexpr int THREADS = 256;   // threads per block, both passes
constexpr int PART_ROWS = 16;  // image rows per block of pass A
constexpr int GROUP = 4;       // pixels per load (12 bytes: 3 x 32-bit words)
constexpr int RUN = 16;        // outputs per work item of the blur passes
constexpr int STORE = 8;       // outputs per store of the blurred path
constexpr int PITCH_Q = TILE + 1;
constexpr int TAP_FLOATS = 32;  // >= 2 * MAX_RADIUS + 1
constexpr int MAX_SEGMENTS = 16;
static_assert(TILE % RUN == 0 && TILE % STORE == 0 && TILE % GROUP == 0, "tile shape");
static_assert(TAP_FLOATS >= 2 * MAX_RADIUS + 1, "taps");

struct Segment {
  const uint8_t* crops;  // [count, size, size, 3]
  const void* rows;      // [count, col::WIDTH]
  void* out;             // [count, 3, size, size]
  float* partial;        // [count, parts] luma sums of pass A
  int count, size, tiles_x, parts;
  int first_a, first_b;  // first block of this segment in the grid of pass A / B
  int vec_in, vec_out;   // word loads / vector stores allowed
};

struct Launch {
  Segment seg[MAX_SEGMENTS];
  int num_segments, rows_f64, max_radius, blocks_a, blocks_b;
  float scale[3], shift[3], solarize_at;
};

// ------------------------------------------------------------------------------ layout
PHOTO_HD int halo_x(int r) { return (r + GROUP - 1) / GROUP * GROUP; }
PHOTO_HD int tile_rows(int max_radius) { return TILE + 2 * max_radius; }
PHOTO_HD int pitch_p(int max_radius) { return TILE + 2 * halo_x(max_radius) + 1; }  // odd
PHOTO_HD int plane_p(int max_radius) { return tile_rows(max_radius) * pitch_p(max_radius); }
PHOTO_HD int plane_q(int max_radius) { return tile_rows(max_radius) * PITCH_Q; }
// Floats of a pass-B block's scratch: P [3, rows, pitch_p], Q [3, rows, PITCH_Q], taps.
PHOTO_HD int scratch_floats(int max_radius) {
  return 3 * (plane_p(max_radius) + plane_q(max_radius)) + TAP_FLOATS;
}
PHOTO_HD int parts_of(int size) { return (size + PART_ROWS - 1) / PART_ROWS; }
PHOTO_HD int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

PHOTO_HD float quiet_nan() {
  const uint32_t u = 0x7fc00000u;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

PHOTO_HD int find_segment(const Launch& L, int block, bool pass_b) {
  int s = 0;
  while (s + 1 < L.num_segments &&
         block >= (pass_b ? L.seg[s + 1].first_b : L.seg[s + 1].first_a))
    ++s;
  return s;
}

PHOTO_HD Sample sample_of(const Launch& L, const Segment& g, int n) {
  if (L.rows_f64)
    return decode_row(static_cast<const double*>(g.rows) + (size_t)n * col::WIDTH, L.max_radius);
  return decode_row(static_cast<const float*>(g.rows) + (size_t)n * col::WIDTH, L.max_radius);
}

// ------------------------------------------------------------------------------ memory
PHOTO_HD uint32_t load_word(const uint8_t* p) {
#ifdef __CUDA_ARCH__
  return __ldg(reinterpret_cast<const unsigned int*>(p));
#else
  uint32_t w;
  memcpy(&w, p, 4);
  return w;
#endif
}

// The GROUP pixels at row y, columns x .. x + GROUP - 1 clamped to the image (edge
// replicate; x may be negative). Word loads when the group lies inside and vec is set
// (x is then a multiple of GROUP and rows are 4-byte aligned).
PHOTO_HD void load_group(const uint8_t* img, int size, int y, int x, int vec, Pixel* px) {
  if (vec && x >= 0 && x + GROUP <= size) {
    const uint8_t* p = img + ((size_t)y * size + x) * 3;
    const uint32_t w0 = load_word(p), w1 = load_word(p + 4), w2 = load_word(p + 8);
    px[0] = load_pixel(w0 & 0xff, (w0 >> 8) & 0xff, (w0 >> 16) & 0xff);
    px[1] = load_pixel(w0 >> 24, w1 & 0xff, (w1 >> 8) & 0xff);
    px[2] = load_pixel((w1 >> 16) & 0xff, w1 >> 24, w2 & 0xff);
    px[3] = load_pixel((w2 >> 8) & 0xff, (w2 >> 16) & 0xff, w2 >> 24);
    return;
  }
  PHOTO_UNROLL
  for (int k = 0; k < GROUP; ++k) {
    const uint8_t* p = img + ((size_t)y * size + clampi(x + k, 0, size - 1)) * 3;
    px[k] = load_pixel(p[0], p[1], p[2]);
  }
}

// K outputs (K * sizeof(T) = 8, 16 or 32 bytes, dst aligned to that or 16) in one or two
// vector stores.
template <class Out, int K>
PHOTO_HD void store_vec(typename Out::T* dst, const float* v) {
  constexpr int WORDS = K * (int)sizeof(typename Out::T) / 4;
  uint32_t w[WORDS];
  if (sizeof(typename Out::T) == 4) {
    PHOTO_UNROLL
    for (int i = 0; i < K; ++i) w[i] = float_bits(v[i]);
  } else {
    PHOTO_UNROLL
    for (int i = 0; i < K / 2; ++i)
      w[i] = (uint32_t)Out::convert(v[2 * i]) | ((uint32_t)Out::convert(v[2 * i + 1]) << 16);
  }
#ifdef __CUDA_ARCH__
  if (WORDS == 2) {
    *reinterpret_cast<uint2*>(dst) = make_uint2(w[0], w[1]);
  } else {
    PHOTO_UNROLL
    for (int q = 0; q < WORDS / 4; ++q)
      reinterpret_cast<uint4*>(dst)[q] = make_uint4(w[4 * q], w[4 * q + 1], w[4 * q + 2],
                                                    w[4 * q + 3]);
  }
#else
  memcpy(dst, w, sizeof(w));
#endif
}

// v[0 .. K) to dst[0 .. K) where x + k < size: vector stores when allowed and whole.
template <class Out, int K>
PHOTO_HD void store_outputs(typename Out::T* dst, const float* v, int x, int size, int vec) {
  if (vec && x + K <= size) {
    store_vec<Out, K>(dst, v);
    return;
  }
  PHOTO_UNROLL
  for (int k = 0; k < K; ++k)
    if (x + k < size) dst[k] = Out::convert(v[k]);
}

// ------------------------------------------------------------------------------ pass A
struct Part {
  const Segment* seg;
  int n, y_begin, y_end, active;
  Sample s;
};

PHOTO_HD Part part_of(const Launch& L, int block) {
  Part q;
  const Segment& g = L.seg[find_segment(L, block, false)];
  const int local = block - g.first_a;
  q.seg = &g;
  q.n = local / g.parts;
  q.y_begin = (local % g.parts) * PART_ROWS;
  q.y_end = q.y_begin + PART_ROWS < g.size ? q.y_begin + PART_ROWS : g.size;
  q.s = sample_of(L, g, q.n);
  q.active = q.s.valid && q.s.jitter;
  return q;
}

// This thread's share of the luma sum (after the jitter ops before contrast) of the part's
// rows; the host twin (nth = 1) gets the whole part's sum.
PHOTO_HD float part_sum(const Part& q, int tid, int nth) {
  const int size = q.seg->size, groups = (size + GROUP - 1) / GROUP;
  const uint8_t* img = q.seg->crops + (size_t)q.n * size * size * 3;
  const int items = (q.y_end - q.y_begin) * groups;
  float sum = 0.0f;
  for (int it = tid; it < items; it += nth) {
    const int y = q.y_begin + it / groups, x = (it % groups) * GROUP;
    Pixel px[GROUP];
    load_group(img, size, y, x, q.seg->vec_in, px);
    PHOTO_UNROLL
    for (int k = 0; k < GROUP; ++k)
      if (x + k < size) sum += luma(before_contrast(px[k], q.s));
  }
  return sum;
}

// ------------------------------------------------------------------------------ pass B
struct Tile {
  const Segment* seg;
  const uint8_t* img;  // the view's crop
  int size, n, x0, y0, hx, pitch, plane_p, plane_q;
  Sample s;
  float mean, solarize_at, scale[3], shift[3];
};

PHOTO_HD Tile tile_of(const Launch& L, int block) {
  Tile t;
  const Segment& g = L.seg[find_segment(L, block, true)];
  const int local = block - g.first_b, tiles = g.tiles_x * g.tiles_x;
  const int k = local % tiles;
  t.seg = &g;
  t.size = g.size;
  t.n = local / tiles;
  t.y0 = (k / g.tiles_x) * TILE;
  t.x0 = (k % g.tiles_x) * TILE;
  t.img = g.crops + (size_t)t.n * g.size * g.size * 3;
  t.s = sample_of(L, g, t.n);
  t.hx = halo_x(t.s.radius);
  t.pitch = pitch_p(L.max_radius);
  t.plane_p = plane_p(L.max_radius);
  t.plane_q = plane_q(L.max_radius);
  t.mean = 0.0f;
  if (t.s.valid && t.s.jitter) {  // the contrast mean: pass A's sums of this view
    double total = 0.0;
    for (int p = 0; p < g.parts; ++p) total += (double)g.partial[(size_t)t.n * g.parts + p];
    t.mean = (float)(total / ((double)g.size * g.size));
  }
  t.solarize_at = L.solarize_at;
  PHOTO_UNROLL
  for (int c = 0; c < 3; ++c) t.scale[c] = L.scale[c], t.shift[c] = L.shift[c];
  return t;
}

// Channel c's normalisation, selected without indexing (a runtime index into the tile's
// arrays would put the whole tile description in local memory).
PHOTO_HD float finish_channel(const Tile& t, float v, int c) {
  const float scale = c == 0 ? t.scale[0] : (c == 1 ? t.scale[1] : t.scale[2]);
  const float shift = c == 0 ? t.shift[0] : (c == 1 ? t.shift[1] : t.shift[2]);
  return finish_value(v, t.s.solarize, t.solarize_at, scale, shift);
}

template <class Out>
PHOTO_HD typename Out::T* out_row(const Tile& t, int c, int y) {
  return static_cast<typename Out::T*>(t.seg->out) +
         (((size_t)t.n * 3 + c) * t.size + y) * t.size;
}

// Views without blur (and invalid rows, written as NaN): straight from the crop to the output.
template <class Out>
PHOTO_HD void direct(const Tile& t, int tid, int nth) {
  constexpr int groups = TILE / GROUP;
  for (int it = tid; it < TILE * groups; it += nth) {
    const int y = t.y0 + it / groups, x = t.x0 + (it % groups) * GROUP;
    if (y >= t.size || x >= t.size) continue;
    Pixel px[GROUP];
    load_group(t.img, t.size, y, x, t.seg->vec_in, px);
    float v[3][GROUP];
    PHOTO_UNROLL
    for (int k = 0; k < GROUP; ++k) {
      const Pixel q = color_chain(px[k], t.s, t.mean);
      v[0][k] = t.s.valid ? finish_channel(t, q.r, 0) : quiet_nan();
      v[1][k] = t.s.valid ? finish_channel(t, q.g, 1) : quiet_nan();
      v[2][k] = t.s.valid ? finish_channel(t, q.b, 2) : quiet_nan();
    }
    PHOTO_UNROLL
    for (int c = 0; c < 3; ++c)
      store_outputs<Out, GROUP>(out_row<Out>(t, c, y) + x, v[c], x, t.size, t.seg->vec_out);
  }
}

// P[c][i][q] = colour chain of the pixel at row y0 - r + i, column x0 - hx + q (clamped),
// for i < TILE + 2r, q < TILE + 2hx. Gray views fill plane 0 only.
PHOTO_HD void fill(const Tile& t, float* P, int tid, int nth) {
  const int r = t.s.radius, rows = TILE + 2 * r, groups = (TILE + 2 * t.hx) / GROUP;
  for (int it = tid; it < rows * groups; it += nth) {
    const int i = it / groups, q = (it % groups) * GROUP;
    const int y = clampi(t.y0 - r + i, 0, t.size - 1);
    Pixel px[GROUP];
    load_group(t.img, t.size, y, t.x0 - t.hx + q, t.seg->vec_in, px);
    float* dst = P + i * t.pitch + q;
    PHOTO_UNROLL
    for (int k = 0; k < GROUP; ++k) {
      const Pixel c = color_chain(px[k], t.s, t.mean);
      dst[k] = c.r;
      if (!t.s.gray) dst[t.plane_p + k] = c.g, dst[2 * t.plane_p + k] = c.b;
    }
  }
}

// The 2R + 1 taps (shared memory on the GPU) into a fixed-size array (registers).
template <int R>
PHOTO_HD void load_taps(const float* taps_in, float* taps) {
  PHOTO_UNROLL
  for (int j = 0; j <= 2 * R; ++j) taps[j] = taps_in[j];
}

// Q[c][i][x] = horizontal blur of P's row i at tile column x (x < TILE, i < TILE + 2R).
template <int R>
PHOTO_HD void hblur(const Tile& t, const float* P, float* Q, const float* taps_in, int tid,
                    int nth) {
  float taps[2 * R + 1];
  load_taps<R>(taps_in, taps);
  constexpr int rows = TILE + 2 * R, runs = TILE / RUN;
  const int items = (t.s.gray ? 1 : 3) * runs * rows;
  for (int it = tid; it < items; it += nth) {  // consecutive items: consecutive rows
    const int i = it % rows, run = (it / rows) % runs, c = it / (rows * runs);
    float out[RUN];
    blur_run<R, RUN>(P + c * t.plane_p + i * t.pitch + t.hx - R + run * RUN, 1, taps, out);
    float* dst = Q + c * t.plane_q + i * PITCH_Q + run * RUN;
    PHOTO_UNROLL
    for (int o = 0; o < RUN; ++o) dst[o] = out[o];
  }
}

// S[c][y][x] = solarize + normalise of the vertical blur of Q at tile row y, column x.
// S is P's memory (P is no longer read); a gray view's one plane feeds three channels.
template <int R>
PHOTO_HD void vblur(const Tile& t, const float* Q, float* S, const float* taps_in, int tid,
                    int nth) {
  float taps[2 * R + 1];
  load_taps<R>(taps_in, taps);
  constexpr int runs = TILE / RUN;
  const int items = (t.s.gray ? 1 : 3) * runs * TILE;
  for (int it = tid; it < items; it += nth) {  // consecutive items: consecutive columns
    const int x = it % TILE, run = (it / TILE) % runs, c = it / (TILE * runs);
    float out[RUN];
    blur_run<R, RUN>(Q + c * t.plane_q + run * RUN * PITCH_Q + x, PITCH_Q, taps, out);
    PHOTO_UNROLL
    for (int o = 0; o < RUN; ++o) {
      float* dst = S + (run * RUN + o) * t.pitch + x;
      if (t.s.gray) {
        PHOTO_UNROLL
        for (int oc = 0; oc < 3; ++oc) dst[oc * t.plane_p] = finish_channel(t, out[o], oc);
      } else {
        dst[c * t.plane_p] = finish_channel(t, out[o], c);
      }
    }
  }
}

// The staged tile S to the output, STORE outputs per store.
template <class Out>
PHOTO_HD void store_tile(const Tile& t, const float* S, int tid, int nth) {
  constexpr int groups = TILE / STORE;
  for (int it = tid; it < 3 * TILE * groups; it += nth) {
    const int g = it % groups, ty = (it / groups) % TILE, c = it / (groups * TILE);
    const int y = t.y0 + ty, x = t.x0 + g * STORE;
    if (y >= t.size || x >= t.size) continue;
    float v[STORE];
    const float* src = S + c * t.plane_p + ty * t.pitch + g * STORE;
    PHOTO_UNROLL
    for (int k = 0; k < STORE; ++k) v[k] = src[k];
    store_outputs<Out, STORE>(out_row<Out>(t, c, y) + x, v, x, t.size, t.seg->vec_out);
  }
}

// Calls F<R>(args...) for the tile's radius R (1 .. MAX_RADIUS).
#define PHOTO_RADIUS_CASE(R, F, ...) \
  case R: F<R>(__VA_ARGS__); break;
#define PHOTO_DISPATCH_RADIUS(r, F, ...)                                                     \
  switch (r) {                                                                               \
    PHOTO_RADIUS_CASE(1, F, __VA_ARGS__) PHOTO_RADIUS_CASE(2, F, __VA_ARGS__)                \
    PHOTO_RADIUS_CASE(3, F, __VA_ARGS__) PHOTO_RADIUS_CASE(4, F, __VA_ARGS__)                \
    PHOTO_RADIUS_CASE(5, F, __VA_ARGS__) PHOTO_RADIUS_CASE(6, F, __VA_ARGS__)                \
    PHOTO_RADIUS_CASE(7, F, __VA_ARGS__) PHOTO_RADIUS_CASE(8, F, __VA_ARGS__)                \
    PHOTO_RADIUS_CASE(9, F, __VA_ARGS__) PHOTO_RADIUS_CASE(10, F, __VA_ARGS__)               \
    PHOTO_RADIUS_CASE(11, F, __VA_ARGS__) PHOTO_RADIUS_CASE(12, F, __VA_ARGS__)              \
    default: break;                                                                          \
  }
static_assert(MAX_RADIUS == 12, "PHOTO_DISPATCH_RADIUS lists radii 1 .. MAX_RADIUS");

}  // namespace photometric

#endif  // DINO_PHOTOMETRIC_TILE_CUH_
