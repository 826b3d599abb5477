// Stand-in for CUDA's bfloat16 header (CPU emulation, pipelines/kernels/emulation):
// __nv_bfloat16 as its bits (the high half of a float32), with the conversions the kernels
// use. float -> bfloat16 rounds to nearest even, NaN stays NaN; bfloat16 -> float is exact.
// Tested bit for bit against torch's conversions.
#ifndef DINO_EMULATION_CUDA_BF16_H_
#define DINO_EMULATION_CUDA_BF16_H_

#include "dino_emulation/rounding.h"

struct __nv_bfloat16 {
  uint16_t bits;
};
static_assert(sizeof(__nv_bfloat16) == 2 && alignof(__nv_bfloat16) == 2, "bfloat16 storage");

inline __nv_bfloat16 __float2bfloat16_rn(float x) {
  return __nv_bfloat16{dino_emu::float_to_bfloat16_bits(x)};
}
inline __nv_bfloat16 __float2bfloat16(float x) { return __float2bfloat16_rn(x); }
inline float __bfloat162float(__nv_bfloat16 h) { return dino_emu::bfloat16_bits_to_float(h.bits); }

#endif  // DINO_EMULATION_CUDA_BF16_H_
