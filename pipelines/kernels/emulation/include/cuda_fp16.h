// Stand-in for CUDA's half-precision header (CPU emulation, pipelines/kernels/emulation):
// __half as its IEEE binary16 bits, with the conversions the kernels use. float -> half
// rounds to nearest even (ties to even, overflow to infinity, subnormals kept), NaN stays
// NaN; half -> float is exact. Tested bit for bit against torch's conversions.
#ifndef DINO_EMULATION_CUDA_FP16_H_
#define DINO_EMULATION_CUDA_FP16_H_

#include "dino_emulation/rounding.h"

struct __half {
  uint16_t bits;
};
static_assert(sizeof(__half) == 2 && alignof(__half) == 2, "binary16 storage");

inline __half __float2half_rn(float x) { return __half{dino_emu::float_to_half_bits(x)}; }
inline __half __float2half(float x) { return __float2half_rn(x); }
inline float __half2float(__half h) { return dino_emu::half_bits_to_float(h.bits); }

#endif  // DINO_EMULATION_CUDA_FP16_H_
