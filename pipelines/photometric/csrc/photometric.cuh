// Per-pixel math of the photometric finish: the semantics of pipelines/photometric/torch_ops.py
// (its docstring states them) with the float32 formulas of cpu_kernel.py, as __host__
// __device__ functions. nvcc builds them into the CUDA kernel (photometric_kernel.cu); g++
// builds the same header into the host twin (photometric_host.cpp), which the CPU tests hold
// against the numba kernel and the torch ops.
//
// Nothing here is rounded to uint8 between ops. Values are float32 in [0, 1] until
// normalisation; the output is converted to float32 / float16 / bfloat16 by round to nearest
// even (the conversions are bit manipulations, so host and device round identically).
#ifndef DINO_PHOTOMETRIC_CUH_
#define DINO_PHOTOMETRIC_CUH_

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define PHOTO_HD __host__ __device__ __forceinline__
#define PHOTO_UNROLL _Pragma("unroll")
#elif defined(DINO_EMULATION)  // the CPU emulation (pipelines/kernels/emulation): the
#define PHOTO_HD inline          // unrolled blur runs took 8x g++'s compile time there and
#define PHOTO_UNROLL             // buy nothing where barriers dominate the run time
#else
#define PHOTO_HD inline
#define PHOTO_UNROLL _Pragma("GCC unroll 64")
#endif

namespace photometric {

// Columns of a parameter row (pipelines/sampling/param_row.py NAMES) and the jitter op
// indices (pipelines/sampling JITTER_OPS). LAYOUT is checked against both from Python.
namespace col {
enum : int { top, left, height, width, flip, jitter, order0, order1, order2, order3, brightness,
             contrast, saturation, hue, grayscale, blur, sigma, solarize, WIDTH };
}
enum Op : int { BRIGHTNESS = 0, CONTRAST = 1, SATURATION = 2, HUE = 3 };
#define PHOTO_LAYOUT                                                                        \
  "top,left,height,width,flip,jitter,order0,order1,order2,order3,brightness,contrast,"      \
  "saturation,hue,grayscale,blur,sigma,solarize;brightness,contrast,saturation,hue"

constexpr int MAX_RADIUS = 12;  // widest blur half-width compiled (sigma <= 4)
constexpr float LR = 0.299f, LG = 0.587f, LB = 0.114f;  // ITU-R 601-2 luma, PIL's "L"
constexpr float MIN_CHROMA = 1e-12f;                     // the hue's division guard

struct Pixel {
  float r, g, b;
};

PHOTO_HD float clip01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }

// uint8 levels -> [0, 1] by a division, as torch_ops (x * (1/255) differs in the last bit).
PHOTO_HD Pixel load_pixel(uint8_t r, uint8_t g, uint8_t b) {
  return {float(r) / 255.0f, float(g) / 255.0f, float(b) / 255.0f};
}

PHOTO_HD float luma(Pixel p) { return p.r * LR + p.g * LG + p.b * LB; }

PHOTO_HD Pixel brightness(Pixel p, float f) {
  return {clip01(p.r * f), clip01(p.g * f), clip01(p.b * f)};
}

// Blend toward the mean luma m of the whole current image (ImageEnhance.Contrast).
PHOTO_HD Pixel contrast(Pixel p, float f, float m) {
  return {clip01(m + f * (p.r - m)), clip01(m + f * (p.g - m)), clip01(m + f * (p.b - m))};
}

// Blend toward the pixel's own luma (ImageEnhance.Color).
PHOTO_HD Pixel saturation(Pixel p, float f) {
  const float y = luma(p);
  return {clip01(y + f * (p.r - y)), clip01(y + f * (p.g - y)), clip01(y + f * (p.b - y))};
}

// clamp(min(k, 4 - k), 0, 1) with k taken mod 6: one HSV -> RGB channel weight. Near a
// multiple of 6 either wrap gives a weight of 0, so k * (1/6) (not k / 6) is harmless.
PHOTO_HD float wheel(float k) {
  k = k - 6.0f * floorf(k * (1.0f / 6.0f));
  const float w = k < 4.0f - k ? k : 4.0f - k;
  return clip01(w);
}

// HSV hue rotation by shift6 sextants (6 x the shift in turns); V and S are kept.
PHOTO_HD Pixel hue(Pixel p, float shift6) {
  float v = p.r > p.g ? p.r : p.g;
  v = v > p.b ? v : p.b;
  float mn = p.r < p.g ? p.r : p.g;
  mn = mn < p.b ? mn : p.b;
  const float c = v - mn;  // chroma
  float d, off;
  if (v == p.r) {
    d = p.g - p.b, off = 0.0f;
  } else if (v == p.g) {
    d = p.b - p.r, off = 2.0f;
  } else {
    d = p.r - p.g, off = 4.0f;
  }
  const float h6 = d / (c > MIN_CHROMA ? c : MIN_CHROMA) + (off + shift6);
  return {v - c * wheel(h6 + 5.0f), v - c * wheel(h6 + 3.0f), v - c * wheel(h6 + 1.0f)};
}

PHOTO_HD Pixel grayscale(Pixel p) {
  const float y = luma(p);
  return {y, y, y};
}

// ------------------------------------------------------------------------------ parameters
// One view's parameters, decoded from its row. valid = 0 marks a row the kernel cannot
// apply (a jitter order that is not a permutation of 0..3, a blur sigma that is not finite
// and positive or wider than max_radius): its view is written as NaN.
struct Sample {
  int valid, jitter, gray, blur, solarize;
  int order[4];
  int kc;           // position of contrast in the order
  float factor[3];  // brightness, contrast, saturation
  float shift6;     // hue shift in sextants
  float sigma;
  int radius;  // blur half-width, 0 without blur
};

// Half-width for float32 sigma: the smaller of torch_ops' tap mask (float32 ceil(3 sigma))
// and its window (blur_radius in float64), at least 1 (cpu_kernel._radius).
PHOTO_HD int blur_radius(float sigma) {
  const float a = ceilf(3.0f * sigma);
  const double b = ceil(3.0 * (double)sigma);
  const double r = (double)a < b ? (double)a : b;
  return r < 1.0 ? 1 : (int)r;
}

template <typename T>
PHOTO_HD Sample decode_row(const T* row, int max_radius) {
  Sample s;
  s.valid = 1;
  s.jitter = row[col::jitter] != T(0);
  s.gray = row[col::grayscale] != T(0);
  s.blur = row[col::blur] != T(0);
  s.solarize = row[col::solarize] != T(0);
  s.factor[0] = (float)row[col::brightness];
  s.factor[1] = (float)row[col::contrast];
  s.factor[2] = (float)row[col::saturation];
  s.shift6 = 6.0f * (float)row[col::hue];
  s.kc = 0;
  int seen = 0;
  PHOTO_UNROLL
  for (int k = 0; k < 4; ++k) {
    const T v = row[col::order0 + k];
    const int op = (v >= T(0) && v < T(4)) ? (int)v : 0;
    s.order[k] = op;
    seen |= (v >= T(0) && v < T(4)) ? 1 << op : 32;
    if (op == CONTRAST) s.kc = k;
  }
  if (s.jitter && seen != 15) s.valid = 0;
  s.sigma = (float)row[col::sigma];
  s.radius = 0;
  if (s.blur) {
    if (!(s.sigma > 0.0f && s.sigma <= (float)MAX_RADIUS)) {
      s.valid = 0;
    } else {
      s.radius = blur_radius(s.sigma);
      if (s.radius > max_radius) s.valid = 0;
    }
  }
  return s;
}

// ------------------------------------------------------------------------------ colour chain
PHOTO_HD Pixel jitter_op(int op, Pixel p, const Sample& s, float mean) {
  switch (op) {
    case BRIGHTNESS: return brightness(p, s.factor[0]);
    case CONTRAST: return contrast(p, s.factor[1], mean);
    case SATURATION: return saturation(p, s.factor[2]);
    default: return hue(p, s.shift6);
  }
}

// The jitter ops before contrast: what the contrast mean is taken over.
PHOTO_HD Pixel before_contrast(Pixel p, const Sample& s) {
  PHOTO_UNROLL
  for (int k = 0; k < 3; ++k) {
    if (k < s.kc) p = jitter_op(s.order[k], p, s, 0.0f);
  }
  return p;
}

// Everything before the blur: the jitter ops in the view's order (contrast toward `mean`,
// the mean luma of before_contrast over the image), then grayscale.
PHOTO_HD Pixel color_chain(Pixel p, const Sample& s, float mean) {
  if (s.jitter) {
    PHOTO_UNROLL
    for (int k = 0; k < 4; ++k) p = jitter_op(s.order[k], p, s, mean);
  }
  return s.gray ? grayscale(p) : p;
}

// ------------------------------------------------------------------------------ blur
// taps[0 .. 2r] = the normalised gaussian of float32 sigma, in float32 as torch_ops.
PHOTO_HD void gaussian_taps(float sigma, int r, float* taps) {
  float total = 0.0f;
  for (int j = 0; j <= 2 * r; ++j) {
    const float t = (float)(j - r) / sigma;
    taps[j] = expf(-0.5f * (t * t));
    total += taps[j];
  }
  for (int j = 0; j <= 2 * r; ++j) taps[j] = taps[j] / total;
}

// out[o] = sum_j taps[j] * src[(o + j) * stride] for o < M, j = 0 .. 2R, each output summed
// from j = 0 upward (torch_ops' and cpu_kernel's order). Streams the M + 2R inputs once.
template <int R, int M>
PHOTO_HD void blur_run(const float* src, int stride, const float* taps, float* out) {
  float acc[M];
  PHOTO_UNROLL
  for (int o = 0; o < M; ++o) acc[o] = 0.0f;
  PHOTO_UNROLL
  for (int i = 0; i < M + 2 * R; ++i) {
    const float v = src[i * stride];
    PHOTO_UNROLL
    for (int o = 0; o < M; ++o) {
      const int j = i - o;
      if (j >= 0 && j <= 2 * R) acc[o] += taps[j] * v;
    }
  }
  PHOTO_UNROLL
  for (int o = 0; o < M; ++o) out[o] = acc[o];
}

// ------------------------------------------------------------------------------ output
// Solarize (1 - v where v >= at) then (v - mean) / std as v * scale + shift.
PHOTO_HD float finish_value(float v, int solarize, float at, float scale, float shift) {
  if (solarize && v >= at) v = v + (1.0f - 2.0f * v);
  return v * scale + shift;
}

PHOTO_HD uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

// float32 -> bfloat16 bits, round to nearest even; NaN -> 0x7FC0 with the sign (as torch).
PHOTO_HD uint16_t to_bfloat16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(((u >> 16) & 0x8000u) | 0x7fc0u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

// float32 -> IEEE half bits, round to nearest even (subnormals, overflow to inf, NaN 0x7E00).
PHOTO_HD uint16_t to_float16(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {                                      // below 2^-14: subnormal
    if (ax <= 0x33000000u) return (uint16_t)sign;              // <= 2^-25: ties to 0
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - (ax >> 23);  // 14 .. 24: m * 2^(e - 126) in 2^-24 units
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return (uint16_t)(sign | r);
  }
  uint32_t r = (ax - 0x38000000u) >> 13;  // rebias the exponent by 127 - 15
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;  // a carry moves up a binade
  return (uint16_t)(sign | r);
}

// The output element types: float32 stores the value, the 16-bit types their bits.
struct OutF32 {
  using T = float;
  PHOTO_HD static T convert(float v) { return v; }
};
struct OutF16 {
  using T = uint16_t;
  PHOTO_HD static T convert(float v) { return to_float16(v); }
};
struct OutBF16 {
  using T = uint16_t;
  PHOTO_HD static T convert(float v) { return to_bfloat16(v); }
};

}  // namespace photometric

#endif  // DINO_PHOTOMETRIC_CUH_
