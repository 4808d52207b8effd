// The NEON GEMM micro-kernel our ARM GEMM schedule calls (schedules/neon_gemm.py).
//
// Why hand-written: ARMv7's multiply-accumulate by lane (`vmla.f32 q, q, d[x]`) lets one load
// of A feed six rows' multiply-adds, but LLVM does not emit it for TVM's loops (under TVM's
// fused FP contraction it makes `vdup` + `vfma`, or one broadcast load per value): its best
// register tile (2 x 4 vectors) loaded 6 SIMD registers per 8 multiply-adds, this one loads
// 2 per 12, and the RK3288 estimate prices a SIMD load at ~2.6 multiply-adds.
#include <stdint.h>

// C[0:6, 0:8] += A[0:6, 0:k] @ B[0:k, 0:8] with A packed: the 6 values of each k next to each
// other (k x 6 floats, contiguous). A step of one k reads them (one `vld1` of 3 d registers)
// and one B row of 8 floats for 12 vmla: 1 load per 6 multiply-adds. 12 accumulators, A's 3 d
// registers and one B row take 15.5 of the 16 q registers. Four steps per loop iteration: the
// schedule calls it only for k % 4 == 0, k >= 4 (neon_gemm.fits); anything else traps rather
// than return a wrong tile.
extern "C" __attribute__((visibility("default")))
int32_t parcnet_sgemm_6x8_packed(float* c, int32_t ldc, const float* a, const float* b, int32_t ldb,
                                 int32_t k) {
  float* c1 = c + ldc;
  float* c2 = c1 + ldc;
  float* c3 = c2 + ldc;
  float* c4 = c3 + ldc;
  float* c5 = c4 + ldc;
  int32_t steps = k >> 2;
  int32_t b_bytes = ldb * 4;
  if (steps <= 0 || (k & 3)) __builtin_trap();
#define PARCNET_STEP_6X8                   \
  "vld1.32 {d0-d2}, [%[a]]!\n"             \
  "vld1.32 {d4-d7}, [%[b]], %[bs]\n"       \
  "vmla.f32 q4, q2, d0[0]\n"               \
  "vmla.f32 q5, q3, d0[0]\n"               \
  "vmla.f32 q6, q2, d0[1]\n"               \
  "vmla.f32 q7, q3, d0[1]\n"               \
  "vmla.f32 q8, q2, d1[0]\n"               \
  "vmla.f32 q9, q3, d1[0]\n"               \
  "vmla.f32 q10, q2, d1[1]\n"              \
  "vmla.f32 q11, q3, d1[1]\n"              \
  "vmla.f32 q12, q2, d2[0]\n"              \
  "vmla.f32 q13, q3, d2[0]\n"              \
  "vmla.f32 q14, q2, d2[1]\n"              \
  "vmla.f32 q15, q3, d2[1]\n"
  asm volatile(
      "vld1.32 {d8-d11}, [%[c0]]\n"
      "vld1.32 {d12-d15}, [%[c1]]\n"
      "vld1.32 {d16-d19}, [%[c2]]\n"
      "vld1.32 {d20-d23}, [%[c3]]\n"
      "vld1.32 {d24-d27}, [%[c4]]\n"
      "vld1.32 {d28-d31}, [%[c5]]\n"
      "1:\n"
      PARCNET_STEP_6X8
      PARCNET_STEP_6X8
      PARCNET_STEP_6X8
      PARCNET_STEP_6X8
      "subs %[n], %[n], #1\n"
      "bne 1b\n"
      "vst1.32 {d8-d11}, [%[c0]]\n"
      "vst1.32 {d12-d15}, [%[c1]]\n"
      "vst1.32 {d16-d19}, [%[c2]]\n"
      "vst1.32 {d20-d23}, [%[c3]]\n"
      "vst1.32 {d24-d27}, [%[c4]]\n"
      "vst1.32 {d28-d31}, [%[c5]]\n"
      : [a] "+r"(a), [b] "+r"(b), [n] "+r"(steps)
      : [c0] "r"(c), [c1] "r"(c1), [c2] "r"(c2), [c3] "r"(c3), [c4] "r"(c4), [c5] "r"(c5),
        [bs] "r"(b_bytes)
      : "cc", "memory", "q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8", "q9", "q10", "q11",
        "q12", "q13", "q14", "q15");
#undef PARCNET_STEP_6X8
  return 0;
}
