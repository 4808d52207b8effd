// ssize_t for the POSIX targets this runtime is built for.
#ifndef TVM_SUPPORT_SSIZE_H_
#define TVM_SUPPORT_SSIZE_H_

#include <sys/types.h>

#endif  // TVM_SUPPORT_SSIZE_H_
