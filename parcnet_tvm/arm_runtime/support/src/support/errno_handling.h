// Retrying of POSIX calls interrupted by signals (EINTR).
#ifndef TVM_SUPPORT_ERRNO_HANDLING_H_
#define TVM_SUPPORT_ERRNO_HANDLING_H_

#include <errno.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/c_env_api.h>

#include "ssize.h"

namespace tvm {
namespace support {

// Calls `func` (returning -1 on failure) until it either succeeds or fails
// with an error other than EINTR; returns its last result. Between retries the
// embedding environment (e.g. Python) may report a pending signal such as
// Ctrl-C, which is then rethrown instead of retrying.
template <typename Func, typename GetErrorCode>
inline ssize_t RetryCallOnEINTR(Func func, GetErrorCode get_error_code) {
  while (true) {
    ssize_t ret = static_cast<ssize_t>(func());
    if (ret != -1 || get_error_code() != EINTR) return ret;
    if (TVMFFIEnvCheckSignals() != 0) throw ffi::EnvErrorAlreadySet();
  }
}

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_ERRNO_HANDLING_H_
