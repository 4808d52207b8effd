// The NEON depth-wise 7x7 kernel our ARM depth-wise schedule calls (schedules/neon_depthwise.py).
//
// Why hand-written: for 7 outputs of a row, one channel vector, each kernel row needs 13 input
// vectors and 7 weight vectors for 49 multiply-adds. Held in registers (7 accumulators, 7
// weights, 2 inputs in flight: all 16 q registers) that is 20 loads per 49 multiply-adds;
// LLVM, given that nest, hoisted the loads, spilled and reloaded (1.1 loads per multiply-add
// in its best tile of 2 outputs), and the RK3288 estimate prices a SIMD load at ~2.6
// multiply-adds.
#include <stdint.h>

// C[0:7, 0:4] += sum over ry, rx < 7 of A[ry, x + rx, 0:4] * B[ry, rx, 0:4] for x < 7: C is 7
// vectors of 4 floats (contiguous), A the padded input (row stride `a_row`, pixel stride
// `a_pixel`, in floats), B the HWIO weights of one channel vector (tap stride `b_tap`, kernel
// row stride `b_row`: the weight pointer walks the 49 taps in one stride, so rows must be 7
// taps apart; anything else traps rather than compute a wrong conv). Strides are in floats;
// vectors need not be 16-byte aligned (vld1 takes either).
extern "C" __attribute__((visibility("default")))
int32_t parcnet_dwconv_7x7_x7(float* c, const float* a, int32_t a_row, int32_t a_pixel,
                              const float* b, int32_t b_row, int32_t b_tap) {
  if (b_row != 7 * b_tap) __builtin_trap();
  int32_t row_bytes = a_row * 4;
  int32_t pixel_bytes = a_pixel * 4;
  int32_t tap_bytes = b_tap * 4;
  int32_t rows = 7;
  const float* a_next = a;
  asm volatile(
      "vld1.32 {d16-d19}, [%[c]]!\n"
      "vld1.32 {d20-d23}, [%[c]]!\n"
      "vld1.32 {d24-d27}, [%[c]]!\n"
      "vld1.32 {d28-d29}, [%[c]]\n"
      "1:\n"
      "mov %[a], %[an]\n"
      "add %[an], %[an], %[rs]\n"
      "vld1.32 {d2-d3}, [%[b]], %[ts]\n"
      "vld1.32 {d4-d5}, [%[b]], %[ts]\n"
      "vld1.32 {d6-d7}, [%[b]], %[ts]\n"
      "vld1.32 {d8-d9}, [%[b]], %[ts]\n"
      "vld1.32 {d10-d11}, [%[b]], %[ts]\n"
      "vld1.32 {d12-d13}, [%[b]], %[ts]\n"
      "vld1.32 {d14-d15}, [%[b]], %[ts]\n"
      "vld1.32 {d0-d1}, [%[a]], %[ps]\n"
      "vld1.32 {d30-d31}, [%[a]], %[ps]\n"
      "vmla.f32 q8, q1, q0\n"
      "vld1.32 {d0-d1}, [%[a]], %[ps]\n"
      "vmla.f32 q9, q1, q15\n" "vmla.f32 q8, q2, q15\n"
      "vld1.32 {d30-d31}, [%[a]], %[ps]\n"
      "vmla.f32 q10, q1, q0\n" "vmla.f32 q9, q2, q0\n" "vmla.f32 q8, q3, q0\n"
      "vld1.32 {d0-d1}, [%[a]], %[ps]\n"
      "vmla.f32 q11, q1, q15\n" "vmla.f32 q10, q2, q15\n" "vmla.f32 q9, q3, q15\n" "vmla.f32 q8, q4, q15\n"
      "vld1.32 {d30-d31}, [%[a]], %[ps]\n"
      "vmla.f32 q12, q1, q0\n" "vmla.f32 q11, q2, q0\n" "vmla.f32 q10, q3, q0\n" "vmla.f32 q9, q4, q0\n" "vmla.f32 q8, q5, q0\n"
      "vld1.32 {d0-d1}, [%[a]], %[ps]\n"
      "vmla.f32 q13, q1, q15\n" "vmla.f32 q12, q2, q15\n" "vmla.f32 q11, q3, q15\n" "vmla.f32 q10, q4, q15\n" "vmla.f32 q9, q5, q15\n" "vmla.f32 q8, q6, q15\n"
      "vld1.32 {d30-d31}, [%[a]], %[ps]\n"
      "vmla.f32 q14, q1, q0\n" "vmla.f32 q13, q2, q0\n" "vmla.f32 q12, q3, q0\n" "vmla.f32 q11, q4, q0\n" "vmla.f32 q10, q5, q0\n" "vmla.f32 q9, q6, q0\n" "vmla.f32 q8, q7, q0\n"
      "vld1.32 {d0-d1}, [%[a]], %[ps]\n"
      "vmla.f32 q14, q2, q15\n" "vmla.f32 q13, q3, q15\n" "vmla.f32 q12, q4, q15\n" "vmla.f32 q11, q5, q15\n" "vmla.f32 q10, q6, q15\n" "vmla.f32 q9, q7, q15\n"
      "vld1.32 {d30-d31}, [%[a]], %[ps]\n"
      "vmla.f32 q14, q3, q0\n" "vmla.f32 q13, q4, q0\n" "vmla.f32 q12, q5, q0\n" "vmla.f32 q11, q6, q0\n" "vmla.f32 q10, q7, q0\n"
      "vld1.32 {d0-d1}, [%[a]], %[ps]\n"
      "vmla.f32 q14, q4, q15\n" "vmla.f32 q13, q5, q15\n" "vmla.f32 q12, q6, q15\n" "vmla.f32 q11, q7, q15\n"
      "vld1.32 {d30-d31}, [%[a]], %[ps]\n"
      "vmla.f32 q14, q5, q0\n" "vmla.f32 q13, q6, q0\n" "vmla.f32 q12, q7, q0\n"
      "vld1.32 {d0-d1}, [%[a]], %[ps]\n"
      "vmla.f32 q14, q6, q15\n" "vmla.f32 q13, q7, q15\n"
      "vmla.f32 q14, q7, q0\n"
      "subs %[n], %[n], #1\n"
      "bne 1b\n"
      "sub %[c], %[c], #96\n"
      "vst1.32 {d16-d19}, [%[c]]!\n"
      "vst1.32 {d20-d23}, [%[c]]!\n"
      "vst1.32 {d24-d27}, [%[c]]!\n"
      "vst1.32 {d28-d29}, [%[c]]\n"
      : [c] "+r"(c), [a] "+r"(a), [an] "+r"(a_next), [b] "+r"(b), [n] "+r"(rows)
      : [rs] "r"(row_bytes), [ps] "r"(pixel_bytes), [ts] "r"(tap_bytes)
      : "cc", "memory", "q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8", "q9", "q10", "q11",
        "q12", "q13", "q14", "q15");
  return 0;
}
