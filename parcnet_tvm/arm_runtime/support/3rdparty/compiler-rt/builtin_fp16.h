// Bit-exact conversions between IEEE-754 binary formats, written generically
// over the format parameters so that builtin_fp16.cc can instantiate
//   float  -> half  : __truncXfYf2__<float, uint32_t, 23, uint16_t, uint16_t, 10>
//   double -> half  : __truncXfYf2__<double, uint64_t, 52, uint16_t, uint16_t, 10>
//   half   -> float : __extendXfYf2__<uint16_t, uint16_t, 10, float, uint32_t, 23>
// Each format is described by a storage type T, an unsigned integer type REP
// of the same size holding its bits, and the number of explicit significand
// bits; the exponent takes all remaining bits below the sign bit. Half values
// are passed around as their uint16_t bit patterns.
// Narrowing rounds to nearest, ties to even, produces subnormals and
// overflows to infinity; NaNs stay (quiet) NaNs and keep their top payload bits.
#ifndef TVM_3RDPARTY_COMPILER_RT_BUILTIN_FP16_H_
#define TVM_3RDPARTY_COMPILER_RT_BUILTIN_FP16_H_

#include <cstdint>
#include <cstring>

namespace tvm_fp_convert {

template <typename REP, int SIG_BITS>
struct Format {
  static constexpr int kBits = static_cast<int>(sizeof(REP) * 8);
  static constexpr int kSig = SIG_BITS;
  static constexpr int kExpBits = kBits - 1 - SIG_BITS;
  static constexpr int kExpMax = (1 << kExpBits) - 1;  // all-ones exponent (inf / NaN)
  static constexpr int kBias = (1 << (kExpBits - 1)) - 1;
  static constexpr uint64_t kSigMask = (uint64_t{1} << SIG_BITS) - 1;
};

template <typename REP, typename T>
inline REP ToBits(const T& value) {
  static_assert(sizeof(REP) == sizeof(T), "representation size mismatch");
  REP bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

template <typename T, typename REP>
inline T FromBits(REP bits) {
  static_assert(sizeof(REP) == sizeof(T), "representation size mismatch");
  T value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// Shifts `sig` right by `shift` (>= 1) bits, rounding to nearest, ties to even.
inline uint64_t ShiftRightRoundEven(uint64_t sig, int shift) {
  if (shift >= 64) return 0;  // < half an ulp of the result: rounds to zero
  uint64_t kept = sig >> shift;
  uint64_t rest = sig & ((uint64_t{1} << shift) - 1);
  uint64_t half = uint64_t{1} << (shift - 1);
  if (rest > half || (rest == half && (kept & 1))) ++kept;
  return kept;
}

}  // namespace tvm_fp_convert

// Narrowing conversion (source format wider than destination).
template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T, typename DST_REP_T,
          int DST_SIG_BITS>
static inline DST_T __truncXfYf2__(SRC_T a) {
  using Src = tvm_fp_convert::Format<SRC_REP_T, SRC_SIG_BITS>;
  using Dst = tvm_fp_convert::Format<DST_REP_T, DST_SIG_BITS>;
  static_assert(SRC_SIG_BITS > DST_SIG_BITS && Src::kExpBits >= Dst::kExpBits,
                "__truncXfYf2__ only narrows");
  constexpr int kDrop = SRC_SIG_BITS - DST_SIG_BITS;

  const uint64_t bits = static_cast<uint64_t>(tvm_fp_convert::ToBits<SRC_REP_T>(a));
  const uint64_t sign = (bits >> (Src::kBits - 1)) & 1;
  const int exp = static_cast<int>((bits >> SRC_SIG_BITS) & static_cast<uint64_t>(Src::kExpMax));
  const uint64_t frac = bits & Src::kSigMask;
  uint64_t out;  // destination magnitude bits

  if (exp == Src::kExpMax) {
    out = static_cast<uint64_t>(Dst::kExpMax) << DST_SIG_BITS;
    if (frac != 0) {  // NaN: keep the top payload bits and force a quiet NaN
      out |= (frac >> kDrop) | (uint64_t{1} << (DST_SIG_BITS - 1));
    }
  } else {
    // value = sig * 2^(e - SRC_SIG_BITS), with the hidden bit made explicit.
    const uint64_t sig = exp != 0 ? (frac | (uint64_t{1} << SRC_SIG_BITS)) : frac;
    const int e = (exp != 0 ? exp : 1) - Src::kBias;
    const int dst_exp = e + Dst::kBias;
    if (sig == 0) {
      out = 0;
    } else if (dst_exp >= Dst::kExpMax) {
      out = static_cast<uint64_t>(Dst::kExpMax) << DST_SIG_BITS;  // overflow -> inf
    } else if (dst_exp >= 1) {
      // Normal result. Adding the rounded significand (hidden bit included)
      // to (dst_exp - 1) << DST_SIG_BITS lets a rounding carry bump the
      // exponent, up to and including infinity.
      uint64_t rounded = tvm_fp_convert::ShiftRightRoundEven(sig, kDrop);
      out = (static_cast<uint64_t>(dst_exp - 1) << DST_SIG_BITS) + rounded;
    } else {
      // Subnormal (or zero) result; a carry turns it into the smallest normal.
      out = tvm_fp_convert::ShiftRightRoundEven(sig, kDrop + 1 - dst_exp);
    }
  }
  out |= sign << (Dst::kBits - 1);
  return tvm_fp_convert::FromBits<DST_T>(static_cast<DST_REP_T>(out));
}

// Widening conversion (every source value is exactly representable).
template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T, typename DST_REP_T,
          int DST_SIG_BITS>
static inline DST_T __extendXfYf2__(SRC_T a) {
  using Src = tvm_fp_convert::Format<SRC_REP_T, SRC_SIG_BITS>;
  using Dst = tvm_fp_convert::Format<DST_REP_T, DST_SIG_BITS>;
  static_assert(DST_SIG_BITS > SRC_SIG_BITS && Dst::kExpBits >= Src::kExpBits,
                "__extendXfYf2__ only widens");
  constexpr int kGrow = DST_SIG_BITS - SRC_SIG_BITS;

  const uint64_t bits = static_cast<uint64_t>(tvm_fp_convert::ToBits<SRC_REP_T>(a));
  const uint64_t sign = (bits >> (Src::kBits - 1)) & 1;
  const int exp = static_cast<int>((bits >> SRC_SIG_BITS) & static_cast<uint64_t>(Src::kExpMax));
  const uint64_t frac = bits & Src::kSigMask;
  uint64_t out;

  if (exp == Src::kExpMax) {  // inf / NaN (payload kept, NaN made quiet)
    out = static_cast<uint64_t>(Dst::kExpMax) << DST_SIG_BITS;
    if (frac != 0) out |= (frac << kGrow) | (uint64_t{1} << (DST_SIG_BITS - 1));
  } else if (exp != 0) {  // normal
    out = (static_cast<uint64_t>(exp - Src::kBias + Dst::kBias) << DST_SIG_BITS) |
          (frac << kGrow);
  } else if (frac == 0) {  // zero
    out = 0;
  } else {  // subnormal source: normalise
    int msb = 0;  // index of the highest set bit of frac
    while ((frac >> (msb + 1)) != 0) ++msb;
    // value = frac * 2^(1 - bias - SRC_SIG_BITS) = 1.xxx * 2^(msb + 1 - bias - SRC_SIG_BITS)
    const int dst_exp = msb + 1 - Src::kBias - SRC_SIG_BITS + Dst::kBias;
    const uint64_t mant = (frac << (DST_SIG_BITS - msb)) & Dst::kSigMask;
    out = (static_cast<uint64_t>(dst_exp) << DST_SIG_BITS) | mant;
  }
  out |= sign << (Dst::kBits - 1);
  return tvm_fp_convert::FromBits<DST_T>(static_cast<DST_REP_T>(out));
}

#endif  // TVM_3RDPARTY_COMPILER_RT_BUILTIN_FP16_H_
