// Serializer<T> specializations for tvm::support::Stream.
//
// Wire format (must match what TVM writes on the host side):
//   * arithmetic values: their IEEE / two's complement bytes, little-endian,
//     sizeof(T) bytes (no size normalisation: size_t is 4 bytes on 32-bit);
//   * enums: as their underlying integer type;
//   * std::string, ffi::String, ffi::Bytes: uint64 byte count, then the bytes;
//   * std::vector<T>, ffi::Array<T>: uint64 element count, then the elements;
//   * std::pair<A, B>: first, then second;
//   * std::unordered_map<K, V>, ffi::Map<K, V>: uint64 count, then key/value
//     pairs;
//   * DLDataType: uint8 code, uint8 bits, uint16 lanes;
//   * DLDevice: int32 device_type, int32 device_id.
#ifndef TVM_SUPPORT_SERIALIZER_H_
#define TVM_SUPPORT_SERIALIZER_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/endian.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tvm {
namespace support {

namespace detail {

// Length prefix shared by all strings and containers.
inline void WriteCount(Stream* strm, size_t n) { strm->Write<uint64_t>(static_cast<uint64_t>(n)); }

inline bool ReadCount(Stream* strm, size_t* n) {
  uint64_t v = 0;
  if (!strm->Read<uint64_t>(&v)) return false;
  // Refuse counts that do not fit this platform's size_t (32-bit targets).
  if (v > static_cast<uint64_t>(SIZE_MAX)) return false;
  *n = static_cast<size_t>(v);
  return true;
}

inline void WriteBlob(Stream* strm, const char* data, size_t n) {
  WriteCount(strm, n);
  if (n != 0) strm->WriteFully(data, n);
}

inline bool ReadBlob(Stream* strm, std::string* out) {
  size_t n = 0;
  if (!ReadCount(strm, &n)) return false;
  out->resize(n);
  return n == 0 || strm->ReadFully(out->data(), n) == n;
}

}  // namespace detail

// Integers, floating point, bool, char.
template <typename T>
struct Serializer<T, std::enable_if_t<std::is_arithmetic_v<T>>> {
  static constexpr bool enabled = true;

  static void Write(Stream* strm, const T& value) {
    if constexpr (TVM_FFI_IO_NO_ENDIAN_SWAP) {
      strm->WriteFully(&value, sizeof(T));
    } else {
      T tmp = value;
      ffi::ByteSwap(&tmp, sizeof(T), 1);
      strm->WriteFully(&tmp, sizeof(T));
    }
  }

  static bool Read(Stream* strm, T* out) {
    if (strm->ReadFully(out, sizeof(T)) != sizeof(T)) return false;
    if constexpr (!TVM_FFI_IO_NO_ENDIAN_SWAP) ffi::ByteSwap(out, sizeof(T), 1);
    return true;
  }
};

// Enums travel as their underlying integer.
template <typename T>
struct Serializer<T, std::enable_if_t<std::is_enum_v<T>>> {
  static constexpr bool enabled = true;
  using Int = std::underlying_type_t<T>;

  static void Write(Stream* strm, const T& value) {
    Serializer<Int>::Write(strm, static_cast<Int>(value));
  }

  static bool Read(Stream* strm, T* out) {
    Int v{};
    if (!Serializer<Int>::Read(strm, &v)) return false;
    *out = static_cast<T>(v);
    return true;
  }
};

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::string& s) {
    detail::WriteBlob(strm, s.data(), s.size());
  }
  static bool Read(Stream* strm, std::string* out) { return detail::ReadBlob(strm, out); }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::String& s) {
    detail::WriteBlob(strm, s.data(), s.size());
  }
  static bool Read(Stream* strm, ffi::String* out) {
    std::string tmp;
    if (!detail::ReadBlob(strm, &tmp)) return false;
    *out = ffi::String(std::move(tmp));
    return true;
  }
};

template <>
struct Serializer<ffi::Bytes> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Bytes& b) {
    detail::WriteBlob(strm, b.data(), b.size());
  }
  static bool Read(Stream* strm, ffi::Bytes* out) {
    std::string tmp;
    if (!detail::ReadBlob(strm, &tmp)) return false;
    *out = ffi::Bytes(std::move(tmp));
    return true;
  }
};

template <typename T>
struct Serializer<std::vector<T>> {
  static constexpr bool enabled = true;
  // bool is excluded: std::vector<bool> has no contiguous storage.
  static constexpr bool kRaw =
      std::is_arithmetic_v<T> && !std::is_same_v<T, bool> && TVM_FFI_IO_NO_ENDIAN_SWAP;

  static void Write(Stream* strm, const std::vector<T>& vec) {
    detail::WriteCount(strm, vec.size());
    if constexpr (kRaw) {
      if (!vec.empty()) strm->WriteFully(vec.data(), sizeof(T) * vec.size());
    } else {
      for (const auto& v : vec) Serializer<T>::Write(strm, v);
    }
  }

  static bool Read(Stream* strm, std::vector<T>* vec) {
    size_t n = 0;
    if (!detail::ReadCount(strm, &n)) return false;
    if constexpr (kRaw) {
      if (n > SIZE_MAX / sizeof(T)) return false;
      vec->resize(n);
      return n == 0 || strm->ReadFully(vec->data(), sizeof(T) * n) == sizeof(T) * n;
    } else {
      vec->clear();
      vec->reserve(n);
      for (size_t i = 0; i < n; ++i) {
        T item{};
        if (!Serializer<T>::Read(strm, &item)) return false;
        vec->push_back(std::move(item));
      }
      return true;
    }
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::pair<A, B>& p) {
    Serializer<A>::Write(strm, p.first);
    Serializer<B>::Write(strm, p.second);
  }
  static bool Read(Stream* strm, std::pair<A, B>* p) {
    return Serializer<A>::Read(strm, &p->first) && Serializer<B>::Read(strm, &p->second);
  }
};

template <typename K, typename V>
struct Serializer<std::unordered_map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::unordered_map<K, V>& m) {
    detail::WriteCount(strm, m.size());
    for (const auto& kv : m) {
      Serializer<K>::Write(strm, kv.first);
      Serializer<V>::Write(strm, kv.second);
    }
  }
  static bool Read(Stream* strm, std::unordered_map<K, V>* m) {
    size_t n = 0;
    if (!detail::ReadCount(strm, &n)) return false;
    m->clear();
    for (size_t i = 0; i < n; ++i) {
      K key{};
      V val{};
      if (!Serializer<K>::Read(strm, &key) || !Serializer<V>::Read(strm, &val)) return false;
      (*m)[std::move(key)] = std::move(val);
    }
    return true;
  }
};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Array<T>& arr) {
    detail::WriteCount(strm, arr.size());
    for (const auto& v : arr) Serializer<T>::Write(strm, v);
  }
  static bool Read(Stream* strm, ffi::Array<T>* arr) {
    size_t n = 0;
    if (!detail::ReadCount(strm, &n)) return false;
    ffi::Array<T> result;
    for (size_t i = 0; i < n; ++i) {
      T item{};
      if (!Serializer<T>::Read(strm, &item)) return false;
      result.push_back(std::move(item));
    }
    *arr = std::move(result);
    return true;
  }
};

template <typename K, typename V>
struct Serializer<ffi::Map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Map<K, V>& m) {
    detail::WriteCount(strm, m.size());
    for (const auto& kv : m) {
      Serializer<K>::Write(strm, kv.first);
      Serializer<V>::Write(strm, kv.second);
    }
  }
  static bool Read(Stream* strm, ffi::Map<K, V>* m) {
    size_t n = 0;
    if (!detail::ReadCount(strm, &n)) return false;
    ffi::Map<K, V> result;
    for (size_t i = 0; i < n; ++i) {
      K key{};
      V val{};
      if (!Serializer<K>::Read(strm, &key) || !Serializer<V>::Read(strm, &val)) return false;
      result.Set(std::move(key), std::move(val));
    }
    *m = std::move(result);
    return true;
  }
};

template <>
struct Serializer<DLDataType> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const DLDataType& t) {
    strm->Write<uint8_t>(t.code);
    strm->Write<uint8_t>(t.bits);
    strm->Write<uint16_t>(t.lanes);
  }
  static bool Read(Stream* strm, DLDataType* t) {
    return strm->Read<uint8_t>(&t->code) && strm->Read<uint8_t>(&t->bits) &&
           strm->Read<uint16_t>(&t->lanes);
  }
};

template <>
struct Serializer<DLDevice> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const DLDevice& d) {
    strm->Write<int32_t>(static_cast<int32_t>(d.device_type));
    strm->Write<int32_t>(d.device_id);
  }
  static bool Read(Stream* strm, DLDevice* d) {
    int32_t type = 0;
    int32_t id = 0;
    if (!strm->Read<int32_t>(&type) || !strm->Read<int32_t>(&id)) return false;
    d->device_type = static_cast<DLDeviceType>(type);
    d->device_id = id;
    return true;
  }
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_SERIALIZER_H_
