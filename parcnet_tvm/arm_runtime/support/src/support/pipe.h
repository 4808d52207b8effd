// Stream over a POSIX file descriptor (pipe ends used for RPC with a child).
#ifndef TVM_SUPPORT_PIPE_H_
#define TVM_SUPPORT_PIPE_H_

#include <errno.h>
#include <tvm/ffi/error.h>
#include <tvm/support/io.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

#include "errno_handling.h"

namespace tvm {
namespace support {

class Pipe : public Stream {
 public:
  using PipeHandle = int;
  using Stream::Read;
  using Stream::Write;

  explicit Pipe(int64_t handle) : handle_(static_cast<PipeHandle>(handle)) {}

  static int GetLastErrorCode() { return errno; }

  // Blocks until `size` bytes arrived or the writer closed its end; returns
  // the number of bytes read.
  size_t Read(void* ptr, size_t size) final {
    char* out = static_cast<char*>(ptr);
    size_t done = 0;
    while (done < size) {
      ssize_t n = RetryCallOnEINTR([&]() { return ::read(handle_, out + done, size - done); },
                                   GetLastErrorCode);
      TVM_FFI_ICHECK_NE(n, -1) << "Pipe read error: " << std::strerror(errno);
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    return done;
  }

  // Writes all `size` bytes; returns `size`.
  size_t Write(const void* ptr, size_t size) final {
    const char* in = static_cast<const char*>(ptr);
    size_t done = 0;
    while (done < size) {
      ssize_t n = RetryCallOnEINTR([&]() { return ::write(handle_, in + done, size - done); },
                                   GetLastErrorCode);
      TVM_FFI_ICHECK_NE(n, -1) << "Pipe write error: " << std::strerror(errno);
      done += static_cast<size_t>(n);
    }
    return done;
  }

  // Writes go straight to the descriptor; nothing to flush.
  void Flush() {}

  void Close() {
    if (handle_ >= 0) {
      ::close(handle_);
      handle_ = -1;
    }
  }

 private:
  PipeHandle handle_;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_PIPE_H_
