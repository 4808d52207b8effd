// Small string helpers used by the runtime.
#ifndef TVM_SUPPORT_UTILS_H_
#define TVM_SUPPORT_UTILS_H_

#include <tvm/ffi/string.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tvm {
namespace support {

// True for a non-empty string made only of decimal digits.
inline bool IsNumber(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// True when `str` begins with the NUL-terminated `prefix`.
inline bool StartsWith(const ffi::String& str, const char* prefix) {
  std::string_view p(prefix);
  return str.size() >= p.size() && std::string_view(str.data(), p.size()) == p;
}

// True when `value` ends with `suffix`.
inline bool EndsWith(const std::string& value, const std::string& suffix) {
  return value.size() >= suffix.size() &&
         value.compare(value.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Splits on every occurrence of `delim`; a trailing delimiter adds no empty item.
inline std::vector<std::string> Split(const std::string& s, char delim) {
  std::vector<std::string> parts;
  size_t begin = 0;
  while (begin < s.size()) {
    size_t end = s.find(delim, begin);
    if (end == std::string::npos) end = s.size();
    parts.emplace_back(s, begin, end - begin);
    begin = end + 1;
  }
  return parts;
}

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_UTILS_H_
