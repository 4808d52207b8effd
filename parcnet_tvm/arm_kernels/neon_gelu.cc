// The NEON GELU kernels our ARM graph pass calls (parcnet_tvm/gelu_gates.py): one row of a
// GELU, or of a GELU gate (a * GELU(b), the ParC V2 block's MLP), per call.
//
// Why hand-written: GELU runs through the fast erf polynomial (fast_math.py: erf(t) =
// t P(t^2) / Q(t^2), t clamped to +-4, 12 coefficients). LLVM's loop for it on ARMv7 reloaded
// the 13 constants from the constant pool for every vector (16 registers are too few to keep
// them as vectors) and divided lane by lane on the VFP (NEON has no divide): 15 loads and 4
// scalar divisions per 4 outputs. Here the constants sit four to a register and are used by
// lane (`vmla.f32 q, q, d[x]`); the division is a reciprocal estimate refined by two Newton
// steps: 2 loads (1 without a gate) and 1 store per 4 outputs, everything else in registers.
// Both polynomials are evaluated on the powers of t^2 (shared), not by Horner's rule: the same
// polynomials, rounded differently (within 4e-7 of erf, as TVM's fast erf is).
#include <arm_neon.h>
#include <stdint.h>

namespace {

// Lanes of the four constant registers. P's coefficients from t^12 down to t^0, Q's from t^8.
alignas(16) const float kConstants[16] = {
    -2.7261423674040941e-10f, 2.7706814620387377e-08f, -2.101023937939317e-06f, -5.6925062381196767e-05f,
    -0.00073499063728377223f, -0.0029545999132096767f, -0.016096033155918121f, -1.4566071513399947e-05f,
    -0.00021337404905352741f, -0.001682827016338706f, -0.0073733292520046234f, -0.014264739118516445f,
    0.70710678118654752f, 0.5f, 4.0f, -4.0f,
};

// x * (1/2 + erf(x / sqrt 2) / 2) for 4 values; c0..c3 hold kConstants.
inline float32x4_t gelu4(float32x4_t x, float32x4_t c0, float32x4_t c1, float32x4_t c2, float32x4_t c3) {
  const float32x2_t c0lo = vget_low_f32(c0), c0hi = vget_high_f32(c0);
  const float32x2_t c1lo = vget_low_f32(c1), c1hi = vget_high_f32(c1);
  const float32x2_t c2lo = vget_low_f32(c2), c2hi = vget_high_f32(c2);
  const float32x2_t c3lo = vget_low_f32(c3), c3hi = vget_high_f32(c3);
  float32x4_t t = vmulq_lane_f32(x, c3lo, 0);                       // x / sqrt 2
  t = vminq_f32(t, vdupq_lane_f32(c3hi, 0));                         // clamped to [-4, 4]
  t = vmaxq_f32(t, vdupq_lane_f32(c3hi, 1));
  const float32x4_t y = vmulq_f32(t, t);
  float32x4_t p = vdupq_lane_f32(c1hi, 0);                           // P: a6 + a5 y + ... + a0 y^6
  float32x4_t q = vdupq_lane_f32(c2hi, 1);                           // Q: b4 + b3 y + ... + b0 y^4
  float32x4_t power = y;
  p = vmlaq_lane_f32(p, power, c1lo, 1);
  q = vmlaq_lane_f32(q, power, c2hi, 0);
  power = vmulq_f32(power, y);
  p = vmlaq_lane_f32(p, power, c1lo, 0);
  q = vmlaq_lane_f32(q, power, c2lo, 1);
  power = vmulq_f32(power, y);
  p = vmlaq_lane_f32(p, power, c0hi, 1);
  q = vmlaq_lane_f32(q, power, c2lo, 0);
  power = vmulq_f32(power, y);
  p = vmlaq_lane_f32(p, power, c0hi, 0);
  q = vmlaq_lane_f32(q, power, c1hi, 1);
  power = vmulq_f32(power, y);
  p = vmlaq_lane_f32(p, power, c0lo, 1);
  power = vmulq_f32(power, y);
  p = vmlaq_lane_f32(p, power, c0lo, 0);
  // 1 / Q: Q <= b4 < 0 for every t, never 0. The estimate has 8 good bits, each step doubles them.
  float32x4_t r = vrecpeq_f32(q);
  r = vmulq_f32(r, vrecpsq_f32(q, r));
  r = vmulq_f32(r, vrecpsq_f32(q, r));
  const float32x4_t erf = vmulq_f32(vmulq_f32(t, p), r);
  float32x4_t h = vdupq_lane_f32(c3lo, 1);                           // 1/2 + erf / 2
  h = vmlaq_lane_f32(h, erf, c3lo, 1);
  return vmulq_f32(x, h);
}

template <bool kGated>
inline void rows(float* out, int32_t out_row, const float* x, int32_t x_row, const float* gate, int32_t gate_row,
                 int32_t first, int32_t count, int32_t cols) {
  if (cols <= 0 || (cols & 3)) __builtin_trap();  // whole vectors only (gelu_gates.fits)
  const float32x4_t c0 = vld1q_f32(kConstants), c1 = vld1q_f32(kConstants + 4);
  const float32x4_t c2 = vld1q_f32(kConstants + 8), c3 = vld1q_f32(kConstants + 12);
  for (int32_t row = first; row < first + count; ++row) {
    float* o = out + row * out_row;
    const float* a = x + row * x_row;
    const float* g = kGated ? gate + row * gate_row : nullptr;
    for (int32_t i = 0; i < cols; i += 4) {
      float32x4_t v = gelu4(vld1q_f32(a + i), c0, c1, c2, c3);
      if (kGated) v = vmulq_f32(v, vld1q_f32(g + i));
      vst1q_f32(o + i, v);
    }
  }
}

}  // namespace

// out[r, 0:cols] = GELU(x[r, 0:cols]) for rows r in [first, first + count); rows `*_row` floats apart.
extern "C" __attribute__((visibility("default")))
int32_t parcnet_gelu_rows(float* out, int32_t out_row, const float* x, int32_t x_row, int32_t first, int32_t count,
                          int32_t cols) {
  rows<false>(out, out_row, x, x_row, nullptr, 0, first, count, cols);
  return 0;
}

// out[r, 0:cols] = gate[r, 0:cols] * GELU(x[r, 0:cols]), the same rows.
extern "C" __attribute__((visibility("default")))
int32_t parcnet_gelu_gate_rows(float* out, int32_t out_row, const float* x, int32_t x_row, const float* gate,
                               int32_t gate_row, int32_t first, int32_t count, int32_t cols) {
  rows<true>(out, out_row, x, x_row, gate, gate_row, first, count, cols);
  return 0;
}
