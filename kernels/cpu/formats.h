// Number formats of the checkpoints and of the reference's rounding steps: BF16, FP8 E4M3 (OCP "FN":
// no infinities, max 448), FP4 E2M1 (max 6), and E8M0 power-of-two scales. Header-only, no state.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

namespace dsv4::kernels {

inline float Bf16ToFloat(uint16_t v) { return std::bit_cast<float>(static_cast<uint32_t>(v) << 16); }

// Round-to-nearest-even, NaN stays NaN.
inline uint16_t FloatToBf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// E8M0: value 2^(e - 127); 0xFF is NaN.
inline float E8m0ToFloat(uint8_t e) {
  if (e == 0xff) return std::numeric_limits<float>::quiet_NaN();
  if (e == 0) return std::ldexp(1.0f, -127);
  return std::bit_cast<float>(static_cast<uint32_t>(e) << 23);
}

struct Fp8E4m3Table {
  float v[256];
  constexpr Fp8E4m3Table() : v() {
    for (int i = 0; i < 256; ++i) {
      const int s = i >> 7, e = (i >> 3) & 0xf, m = i & 7;
      float mag;
      if (e == 0xf && m == 7) {
        mag = __builtin_nanf("");
      } else if (e == 0) {
        mag = static_cast<float>(m) / 8.0f / 64.0f;  // subnormal: m/8 * 2^-6
      } else {
        float p = 1.0f;
        for (int k = 7; k < e; ++k) p *= 2.0f;
        for (int k = e; k < 7; ++k) p /= 2.0f;
        mag = (1.0f + static_cast<float>(m) / 8.0f) * p;
      }
      v[i] = s ? -mag : mag;
    }
  }
};
inline constexpr Fp8E4m3Table kFp8E4m3;
inline float Fp8E4m3ToFloat(uint8_t b) { return kFp8E4m3.v[b]; }

// E2M1 codes, low nibble = even element in packed checkpoints.
inline constexpr float kFp4E2m1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                       -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// Round a float to the nearest E4M3 value (ties to even), saturating at +-448. Used by the
// quantize-dequantize steps; exact for every finite input.
inline float RoundToFp8E4m3(float x) {
  if (std::isnan(x)) return x;
  const float a = std::fabs(x);
  if (a >= 448.0f) return std::copysign(448.0f, x);
  // Spacing: subnormal range (a < 2^-6) has step 2^-9; otherwise 2^(floor(log2 a) - 3).
  int exp;
  std::frexp(a, &exp);  // a = f * 2^exp, f in [0.5, 1)
  int e = exp - 1;      // floor(log2 a)
  if (e < -6) e = -6;
  const float step = std::ldexp(1.0f, e - 3);
  const float q = std::nearbyint(a / step) * step;  // default rounding mode is to-nearest-even
  return std::copysign(q > 448.0f ? 448.0f : q, x);
}

// Round a float to the nearest E2M1 value {0, .5, 1, 1.5, 2, 3, 4, 6}, ties to even code.
inline float RoundToFp4E2m1(float x) {
  if (std::isnan(x)) return x;
  const float a = std::fabs(x);
  float q;
  if (a >= 6.0f) {
    q = 6.0f;
  } else if (a >= 2.0f) {  // step 1 in [2, 4), step 2 in [4, 6]
    q = a < 4.0f ? std::nearbyint(a) : 2.0f * std::nearbyint(a / 2.0f);  // 5 -> 4: even code
  } else {                    // step 0.5 below 2
    q = 0.5f * std::nearbyint(a * 2.0f);
  }
  return std::copysign(q, x);
}

// 2^ceil(log2(v)) for a positive normal float, by bit manipulation (as the reference does).
inline float Pow2Ceil(float v) {
  const uint32_t bits = std::bit_cast<uint32_t>(v);
  const int exp = static_cast<int>((bits >> 23) & 0xff) - 127 + ((bits & 0x7fffffu) != 0 ? 1 : 0);
  return std::bit_cast<float>(static_cast<uint32_t>(exp + 127) << 23);
}

}  // namespace dsv4::kernels
