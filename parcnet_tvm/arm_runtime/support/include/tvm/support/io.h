// Minimal binary stream interface used by the TVM runtime sources
// (model/executable (de)serialization, RPC message encoding).
#ifndef TVM_SUPPORT_IO_H_
#define TVM_SUPPORT_IO_H_

#include <tvm/ffi/endian.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace tvm {
namespace support {

// Per-type encoder/decoder. Specializations set `enabled = true` and provide
//   static void Write(Stream*, const T&);
//   static bool Read(Stream*, T*);
// The second parameter exists so that specializations can use enable_if.
template <typename T, typename = void>
struct Serializer {
  static constexpr bool enabled = false;
};

// Byte stream. Implementations override the two raw virtual methods; the
// typed template helpers dispatch to Serializer<T>. Derived classes that
// override the raw methods need `using Stream::Read; using Stream::Write;`
// to keep the typed overloads visible.
class Stream {
 public:
  virtual ~Stream() = default;

  // Reads up to `size` bytes, returns the number of bytes read.
  virtual size_t Read(void* ptr, size_t size) = 0;
  // Writes `size` bytes, returns the number of bytes written.
  virtual size_t Write(const void* ptr, size_t size) = 0;

  template <typename T>
  void Write(const T& value) {
    static_assert(Serializer<T>::enabled, "tvm::support::Serializer<T> is not specialized for T");
    Serializer<T>::Write(this, value);
  }

  template <typename T>
  bool Read(T* out) {
    static_assert(Serializer<T>::enabled, "tvm::support::Serializer<T> is not specialized for T");
    return Serializer<T>::Read(this, out);
  }

  // Writes `count` consecutive values, each encoded like Write<T>.
  template <typename T>
  void WriteArray(const T* values, size_t count) {
    if constexpr (kRawArithmetic<T>) {
      WriteFully(values, sizeof(T) * count);
    } else {
      for (size_t i = 0; i < count; ++i) this->Write<T>(values[i]);
    }
  }

  // Reads `count` consecutive values; false if the stream ran short.
  template <typename T>
  bool ReadArray(T* values, size_t count) {
    if constexpr (kRawArithmetic<T>) {
      size_t nbytes = sizeof(T) * count;
      return ReadFully(values, nbytes) == nbytes;
    } else {
      for (size_t i = 0; i < count; ++i) {
        if (!this->Read<T>(values + i)) return false;
      }
      return true;
    }
  }

  // Raw helpers that keep calling the virtual methods until `size` bytes have
  // moved or the stream stops making progress; return the bytes moved.
  size_t WriteFully(const void* ptr, size_t size) {
    const char* p = static_cast<const char*>(ptr);
    size_t done = 0;
    while (done < size) {
      size_t n = this->Write(static_cast<const void*>(p + done), size - done);
      if (n == 0) break;
      done += n;
    }
    return done;
  }
  size_t ReadFully(void* ptr, size_t size) {
    char* p = static_cast<char*>(ptr);
    size_t done = 0;
    while (done < size) {
      size_t n = this->Read(static_cast<void*>(p + done), size - done);
      if (n == 0) break;
      done += n;
    }
    return done;
  }

 private:
  // Arithmetic values are stored little-endian; on a little-endian host their
  // in-memory bytes already are the wire format, so arrays move as one block.
  template <typename T>
  static constexpr bool kRawArithmetic = std::is_arithmetic_v<T> && TVM_FFI_IO_NO_ENDIAN_SWAP;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_IO_H_
