// Base64 (RFC 4648 alphabet, '=' padding) adapters over tvm::support::Stream.
// Used to embed tensors in JSON text.
#ifndef TVM_SUPPORT_BASE64_H_
#define TVM_SUPPORT_BASE64_H_

#include <tvm/ffi/error.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <cstdio>
#include <string>

namespace tvm {
namespace support {

namespace base64 {

inline constexpr char kAlphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// Value of a base64 digit, or -1 for any other character.
inline int DigitValue(int c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

inline bool IsSpace(int c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

}  // namespace base64

// Decodes base64 text read from another stream. The encoded data ends at the
// first whitespace character, at the end of the source, or after '=' padding.
class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64InStream(Stream* src) : src_(src) {}

  // Skips whitespace before the encoded data (done on first Read otherwise).
  void InitPosition() {
    do {
      ch_ = NextChar();
    } while (base64::IsSpace(ch_));
  }

  // True once all encoded data has been consumed.
  bool IsEOF() const { return npending_ == 0 && (finished_ || AtTerminator()); }

  size_t Read(void* ptr, size_t size) final {
    unsigned char* out = static_cast<unsigned char*>(ptr);
    size_t done = 0;
    while (done < size) {
      if (npending_ == 0 && !DecodeQuantum()) break;
      size_t take = npending_;
      if (take > size - done) take = size - done;
      for (size_t i = 0; i < take; ++i) out[done + i] = pending_[pending_pos_ + i];
      pending_pos_ += static_cast<int>(take);
      npending_ -= static_cast<int>(take);
      done += take;
    }
    return done;
  }

  size_t Write(const void*, size_t) final {
    TVM_FFI_THROW(InternalError) << "Base64InStream is read-only";
    return 0;
  }

 private:
  bool AtTerminator() const { return ch_ == EOF || base64::IsSpace(ch_); }

  // Buffered single-character reader over the source stream.
  int NextChar() {
    if (buf_pos_ == buf_len_) {
      buf_len_ = src_->Read(buf_, sizeof(buf_));
      buf_pos_ = 0;
      if (buf_len_ == 0) return EOF;
    }
    return static_cast<unsigned char>(buf_[buf_pos_++]);
  }

  int Digit(int c) {
    int v = base64::DigitValue(c);
    TVM_FFI_ICHECK(v >= 0) << "invalid base64 character (code " << c << ")";
    return v;
  }

  // Decodes the next four characters into pending_; false at end of data.
  // ch_ always holds the first character not yet decoded.
  bool DecodeQuantum() {
    if (ch_ == kNotStarted) InitPosition();
    if (finished_ || AtTerminator()) return false;
    int c[4];
    c[0] = ch_;
    for (int i = 1; i < 4; ++i) {
      c[i] = NextChar();
      TVM_FFI_ICHECK(c[i] != EOF && !base64::IsSpace(c[i])) << "truncated base64 data";
    }
    uint32_t bits = (static_cast<uint32_t>(Digit(c[0])) << 18) |
                    (static_cast<uint32_t>(Digit(c[1])) << 12);
    pending_pos_ = 0;
    if (c[2] == '=') {
      TVM_FFI_ICHECK(c[3] == '=') << "invalid base64 padding";
      npending_ = 1;
      finished_ = true;
    } else if (c[3] == '=') {
      bits |= static_cast<uint32_t>(Digit(c[2])) << 6;
      npending_ = 2;
      finished_ = true;
    } else {
      bits |= (static_cast<uint32_t>(Digit(c[2])) << 6) | static_cast<uint32_t>(Digit(c[3]));
      npending_ = 3;
    }
    pending_[0] = static_cast<unsigned char>(bits >> 16);
    pending_[1] = static_cast<unsigned char>(bits >> 8);
    pending_[2] = static_cast<unsigned char>(bits);
    ch_ = NextChar();
    return true;
  }

  static constexpr int kNotStarted = -2;  // distinct from EOF and any byte
  Stream* src_;
  char buf_[256];
  size_t buf_len_{0};
  size_t buf_pos_{0};
  int ch_{kNotStarted};
  bool finished_{false};
  unsigned char pending_[3];
  int pending_pos_{0};
  int npending_{0};
};

// Encodes everything written into base64 text on another stream.
// Finish() must be called to emit the final (padded) quantum.
class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64OutStream(Stream* dst) : dst_(dst) {}

  size_t Write(const void* ptr, size_t size) final {
    const unsigned char* in = static_cast<const unsigned char*>(ptr);
    for (size_t i = 0; i < size; ++i) {
      group_[ngroup_++] = in[i];
      if (ngroup_ == 3) {
        EmitGroup(3);
        ngroup_ = 0;
      }
    }
    return size;
  }

  size_t Read(void*, size_t) final {
    TVM_FFI_THROW(InternalError) << "Base64OutStream is write-only";
    return 0;
  }

  // Pads and emits the trailing bytes, optionally appends `endch`, and flushes.
  void Finish(int endch = EOF) {
    if (ngroup_ != 0) {
      for (int i = ngroup_; i < 3; ++i) group_[i] = 0;
      EmitGroup(ngroup_);
      ngroup_ = 0;
    }
    if (endch != EOF) text_.push_back(static_cast<char>(endch));
    Flush();
  }

 private:
  // Emits one 4-character quantum for `n` (1..3) bytes of group_.
  void EmitGroup(int n) {
    uint32_t bits = (static_cast<uint32_t>(group_[0]) << 16) |
                    (static_cast<uint32_t>(group_[1]) << 8) | group_[2];
    text_.push_back(base64::kAlphabet[(bits >> 18) & 63]);
    text_.push_back(base64::kAlphabet[(bits >> 12) & 63]);
    text_.push_back(n > 1 ? base64::kAlphabet[(bits >> 6) & 63] : '=');
    text_.push_back(n > 2 ? base64::kAlphabet[bits & 63] : '=');
    if (text_.size() >= kFlushSize) Flush();
  }

  void Flush() {
    if (!text_.empty()) {
      dst_->WriteFully(text_.data(), text_.size());
      text_.clear();
    }
  }

  static constexpr size_t kFlushSize = 1024;
  Stream* dst_;
  unsigned char group_[3];
  int ngroup_{0};
  std::string text_;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_BASE64_H_
