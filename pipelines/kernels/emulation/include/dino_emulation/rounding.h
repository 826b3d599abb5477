// float32 <-> binary16 / bfloat16 for the emulation's __half and __nv_bfloat16. The rounding
// is done by the host's own floating point (round to nearest even, the default mode): the
// value is scaled by a power of two so that the target's significand is its integer part,
// rounded with nearbyint, and the bits assembled. Scaling by powers of two is exact in
// double, so the only rounding is nearbyint's.
#ifndef DINO_EMULATION_ROUNDING_H_
#define DINO_EMULATION_ROUNDING_H_

#include <math.h>
#include <stdint.h>
#include <string.h>

namespace dino_emu {

inline uint32_t float_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
}

inline float bits_float(uint32_t u) {
  float x;
  memcpy(&x, &u, 4);
  return x;
}

// |x| rounded to `digits` significant bits in a format whose smallest normal exponent is
// `min_exp` and whose exponent field has `bias`: the format's bits without the sign (an
// overflow gives the infinity's bits). x finite.
inline uint32_t round_magnitude(float x, int digits, int min_exp, int bias) {
  const double a = fabs(static_cast<double>(x));
  if (a < ldexp(1.0, min_exp)) {  // subnormal (or zero): units of 2^(min_exp - digits + 1)
    return static_cast<uint32_t>(nearbyint(ldexp(a, digits - 1 - min_exp)));
  }
  int e;
  frexp(a, &e);  // a in [2^(e-1), 2^e)
  const double q = nearbyint(ldexp(a, digits - e));  // in [2^(digits-1), 2^digits]
  // The exponent field counts from the significand's leading bit; q = 2^digits carries into
  // the next exponent by the addition, up to the infinity's bits.
  return (static_cast<uint32_t>(e - 1 + bias) << (digits - 1)) +
         static_cast<uint32_t>(q - ldexp(1.0, digits - 1));
}

inline uint16_t float_to_half_bits(float x) {
  const uint16_t sign = static_cast<uint16_t>((float_bits(x) >> 16) & 0x8000u);
  if (isnan(x)) return sign | 0x7e00u;
  if (isinf(x) || fabsf(x) >= 65520.0f) return sign | 0x7c00u;  // 65520 = max + half a step
  return sign | static_cast<uint16_t>(round_magnitude(x, 11, -14, 15));
}

inline uint16_t float_to_bfloat16_bits(float x) {
  const uint16_t sign = static_cast<uint16_t>((float_bits(x) >> 16) & 0x8000u);
  if (isnan(x)) return sign | 0x7fc0u;
  if (isinf(x)) return sign | 0x7f80u;
  const uint32_t m = round_magnitude(x, 8, -126, 127);
  return sign | static_cast<uint16_t>(m > 0x7f80u ? 0x7f80u : m);
}

inline float half_bits_to_float(uint16_t h) {
  const float sign = (h & 0x8000u) ? -1.0f : 1.0f;
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  if (exponent == 0x1f) return mantissa ? bits_float(0x7fc00000u) : sign * INFINITY;
  if (exponent == 0) return sign * ldexpf(static_cast<float>(mantissa), -24);
  return sign * ldexpf(static_cast<float>(1024 + mantissa), exponent - 25);
}

inline float bfloat16_bits_to_float(uint16_t b) {
  return bits_float(static_cast<uint32_t>(b) << 16);
}

}  // namespace dino_emu

#endif  // DINO_EMULATION_ROUNDING_H_
