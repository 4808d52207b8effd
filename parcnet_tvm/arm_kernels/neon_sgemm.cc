// The NEON GEMM micro-kernel our ARM GEMM schedule calls (schedules/neon_gemm.py):
//   C[0:4, 0:8] += A[0:4, 0:k] @ B[0:k, 0:8]   (fp32, row strides lda, ldb, ldc in floats)
//
// Why hand-written: the multiply-add ARMv7 has by lane (`vmla.f32 q, q, d[x]`) lets one loaded
// vector of A feed four steps, but LLVM never emits it under TVM's fused FP contraction (it
// makes `vdup` + `vfma` or a broadcast load per step). Here a step of 4 k reads 4 A vectors
// (one per row, 4 consecutive k) and 4 B rows of 8 floats (one `vld1` each) for 32 vmla:
// 1 load per 4 multiply-adds, against 3 per 4 in LLVM's 2x4 tile. The 8 accumulators,
// 4 A vectors and 2 B rows in flight take all 16 q registers. Needs k % 4 == 0, k >= 4.
#include <stdint.h>

extern "C" __attribute__((visibility("default")))
int32_t parcnet_sgemm_4x8(float* c, int32_t ldc, const float* a, int32_t lda, const float* b,
                          int32_t ldb, int32_t k) {
  const float* a1 = a + lda;
  const float* a2 = a1 + lda;
  const float* a3 = a2 + lda;
  float* c1 = c + ldc;
  float* c2 = c1 + ldc;
  float* c3 = c2 + ldc;
  int32_t steps = k >> 2;
  int32_t b_bytes = ldb * 4;
  if (steps <= 0) return 0;
  asm volatile(
      "vld1.32 {d16-d19}, [%[c0]]\n"
      "vld1.32 {d20-d23}, [%[c1]]\n"
      "vld1.32 {d24-d27}, [%[c2]]\n"
      "vld1.32 {d28-d31}, [%[c3]]\n"
      "1:\n"
      "vld1.32 {d0-d1}, [%[a0]]!\n"
      "vld1.32 {d2-d3}, [%[a1]]!\n"
      "vld1.32 {d4-d5}, [%[a2]]!\n"
      "vld1.32 {d6-d7}, [%[a3]]!\n"
      "vld1.32 {d8-d11}, [%[b]], %[bs]\n"
      "vld1.32 {d12-d15}, [%[b]], %[bs]\n"
      "vmla.f32 q8, q4, d0[0]\n"
      "vmla.f32 q9, q5, d0[0]\n"
      "vmla.f32 q10, q4, d2[0]\n"
      "vmla.f32 q11, q5, d2[0]\n"
      "vmla.f32 q12, q4, d4[0]\n"
      "vmla.f32 q13, q5, d4[0]\n"
      "vmla.f32 q14, q4, d6[0]\n"
      "vmla.f32 q15, q5, d6[0]\n"
      "vld1.32 {d8-d11}, [%[b]], %[bs]\n"
      "vmla.f32 q8, q6, d0[1]\n"
      "vmla.f32 q9, q7, d0[1]\n"
      "vmla.f32 q10, q6, d2[1]\n"
      "vmla.f32 q11, q7, d2[1]\n"
      "vmla.f32 q12, q6, d4[1]\n"
      "vmla.f32 q13, q7, d4[1]\n"
      "vmla.f32 q14, q6, d6[1]\n"
      "vmla.f32 q15, q7, d6[1]\n"
      "vld1.32 {d12-d15}, [%[b]], %[bs]\n"
      "vmla.f32 q8, q4, d1[0]\n"
      "vmla.f32 q9, q5, d1[0]\n"
      "vmla.f32 q10, q4, d3[0]\n"
      "vmla.f32 q11, q5, d3[0]\n"
      "vmla.f32 q12, q4, d5[0]\n"
      "vmla.f32 q13, q5, d5[0]\n"
      "vmla.f32 q14, q4, d7[0]\n"
      "vmla.f32 q15, q5, d7[0]\n"
      "vmla.f32 q8, q6, d1[1]\n"
      "vmla.f32 q9, q7, d1[1]\n"
      "vmla.f32 q10, q6, d3[1]\n"
      "vmla.f32 q11, q7, d3[1]\n"
      "vmla.f32 q12, q6, d5[1]\n"
      "vmla.f32 q13, q7, d5[1]\n"
      "vmla.f32 q14, q6, d7[1]\n"
      "vmla.f32 q15, q7, d7[1]\n"
      "subs %[n], %[n], #1\n"
      "bne 1b\n"
      "vst1.32 {d16-d19}, [%[c0]]\n"
      "vst1.32 {d20-d23}, [%[c1]]\n"
      "vst1.32 {d24-d27}, [%[c2]]\n"
      "vst1.32 {d28-d31}, [%[c3]]\n"
      : [a0] "+r"(a), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [b] "+r"(b), [n] "+r"(steps)
      : [c0] "r"(c), [c1] "r"(c1), [c2] "r"(c2), [c3] "r"(c3), [bs] "r"(b_bytes)
      : "cc", "memory", "q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8", "q9", "q10", "q11",
        "q12", "q13", "q14", "q15");
  return 0;
}
