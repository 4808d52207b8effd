// Thin wrappers over POSIX TCP sockets (Linux), used by the RPC runtime.
// Socket objects are plain handles: copying shares the descriptor and nothing
// is closed implicitly; call Close() explicitly.
#ifndef TVM_SUPPORT_SOCKET_H_
#define TVM_SUPPORT_SOCKET_H_

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <tvm/ffi/error.h>
#include <tvm/support/io.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>

#include "errno_handling.h"
#include "ssize.h"

namespace tvm {
namespace support {

// Name of this machine.
inline std::string GetHostName() {
  char buf[256] = {0};
  TVM_FFI_ICHECK_EQ(gethostname(buf, sizeof(buf) - 1), 0) << "gethostname failed";
  return std::string(buf);
}

// An IPv4 or IPv6 socket address.
struct SockAddr {
  sockaddr_storage addr;

  SockAddr() { std::memset(&addr, 0, sizeof(addr)); }

  // Resolves `host` (name or numeric address; empty or null = 0.0.0.0).
  SockAddr(const char* host, int port) : SockAddr() { Set(host, port); }

  // Parses "host:port", "[ipv6]:port" or the tracker form "('host', port)".
  explicit SockAddr(const std::string& url) : SockAddr() {
    std::string host;
    int port = 0;
    TVM_FFI_ICHECK(ParseHostPort(url, &host, &port)) << "cannot parse address: " << url;
    Set(host.c_str(), port);
  }

  // Splits an address string into host and port; false if malformed.
  static bool ParseHostPort(const std::string& url, std::string* host, int* port) {
    std::string h, p;
    if (url.size() >= 2 && url.front() == '(' && url.back() == ')') {
      size_t comma = url.find(',');
      if (comma == std::string::npos) return false;
      h = Trim(url.substr(1, comma - 1));
      p = Trim(url.substr(comma + 1, url.size() - comma - 2));
      if (h.size() >= 2 && (h.front() == '\'' || h.front() == '"') && h.back() == h.front()) {
        h = h.substr(1, h.size() - 2);
      }
    } else if (!url.empty() && url.front() == '[') {
      size_t close = url.find(']');
      if (close == std::string::npos || close + 1 >= url.size() || url[close + 1] != ':') {
        return false;
      }
      h = url.substr(1, close - 1);
      p = url.substr(close + 2);
    } else {
      size_t colon = url.rfind(':');
      if (colon == std::string::npos) return false;
      h = url.substr(0, colon);
      p = url.substr(colon + 1);
    }
    if (p.empty() || p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos) {
      return false;
    }
    int value = std::stoi(p);
    if (value > 65535) return false;
    *host = h;
    *port = value;
    return true;
  }

  // Resolves `host` and stores it with `port`; IPv4 results are preferred.
  void Set(const char* host, int port) {
    std::memset(&addr, 0, sizeof(addr));
    if (host == nullptr || host[0] == '\0') {  // wildcard: 0.0.0.0
      sockaddr_in* in4 = reinterpret_cast<sockaddr_in*>(&addr);
      in4->sin_family = AF_INET;
      in4->sin_addr.s_addr = htonl(INADDR_ANY);
      in4->sin_port = htons(static_cast<uint16_t>(port));
      return;
    }
    addrinfo hints;
    std::memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    int rc = getaddrinfo(host, nullptr, &hints, &res);
    TVM_FFI_ICHECK(rc == 0 && res != nullptr)
        << "cannot resolve address " << host << ": " << gai_strerror(rc);
    const addrinfo* pick = nullptr;
    for (const addrinfo* it = res; it != nullptr; it = it->ai_next) {
      if (it->ai_family == AF_INET) {
        pick = it;
        break;
      }
      if (it->ai_family == AF_INET6 && pick == nullptr) pick = it;
    }
    if (pick == nullptr) {
      freeaddrinfo(res);
      TVM_FFI_THROW(InternalError) << "no IPv4/IPv6 address for " << host;
    }
    std::memcpy(&addr, pick->ai_addr, pick->ai_addrlen);
    freeaddrinfo(res);
    uint16_t nport = htons(static_cast<uint16_t>(port));
    if (addr.ss_family == AF_INET) {
      reinterpret_cast<sockaddr_in*>(&addr)->sin_port = nport;
    } else {
      reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port = nport;
    }
  }

  int port() const {
    if (addr.ss_family == AF_INET6) {
      return ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
    }
    return ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
  }

  int ss_family() const { return addr.ss_family; }

  // Size of the address structure actually in use.
  socklen_t Length() const {
    return addr.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  }

  const sockaddr* Raw() const { return reinterpret_cast<const sockaddr*>(&addr); }

  // "ip:port" (IPv6 addresses in brackets).
  std::string AsString() const {
    char text[INET6_ADDRSTRLEN] = {0};
    const void* src = nullptr;
    if (addr.ss_family == AF_INET) {
      src = &reinterpret_cast<const sockaddr_in*>(&addr)->sin_addr;
    } else if (addr.ss_family == AF_INET6) {
      src = &reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_addr;
    } else {
      TVM_FFI_THROW(InternalError) << "SockAddr: unknown address family " << addr.ss_family;
    }
    TVM_FFI_ICHECK(inet_ntop(addr.ss_family, src, text, sizeof(text)) != nullptr)
        << "inet_ntop failed";
    std::ostringstream os;
    if (addr.ss_family == AF_INET6) {
      os << '[' << text << "]:" << port();
    } else {
      os << text << ':' << port();
    }
    return os.str();
  }

 private:
  static std::string Trim(const std::string& s) {
    size_t b = s.find_first_not_of(" \t");
    if (b == std::string::npos) return std::string();
    size_t e = s.find_last_not_of(" \t");
    return s.substr(b, e - b + 1);
  }
};

// Operations common to all socket kinds.
class Socket {
 public:
  using SockType = int;
  static constexpr SockType kInvalidSocket = -1;

  SockType sockfd;

  static int GetLastErrorCode() { return errno; }

  static bool LastErrorWouldBlock() {
    int err = GetLastErrorCode();
    return err == EAGAIN || err == EWOULDBLOCK;
  }

  // Throws an error naming the failed operation and the current errno.
  [[noreturn]] static void Error(const char* what) {
    int err = GetLastErrorCode();
    TVM_FFI_THROW(InternalError) << "Socket " << what << " Error:" << std::strerror(err);
  }

  // Process-wide socket library setup / teardown (nothing to do on POSIX).
  static void Startup() {}
  static void Finalize() {}

  bool IsClosed() const { return sockfd == kInvalidSocket; }

  // Pending error reported by the kernel for this socket (SO_ERROR).
  int GetSockError() const {
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(sockfd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) Error("GetSockError");
    return err;
  }

  // True if the socket is closed or unusable.
  bool BadSocket() const {
    if (IsClosed()) return true;
    int err = GetSockError();
    return err == EBADF || err == EINTR;
  }

  void Close() {
    if (sockfd == kInvalidSocket) {
      TVM_FFI_THROW(InternalError) << "Socket::Close: socket is not open";
    }
    ::close(sockfd);
    sockfd = kInvalidSocket;
  }

  void SetNonBlock(bool non_block) {
    int flags = fcntl(sockfd, F_GETFL, 0);
    if (flags == -1) Error("SetNonBlock");
    flags = non_block ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
    if (fcntl(sockfd, F_SETFL, flags) == -1) Error("SetNonBlock");
  }

  // Allows rebinding a port that still has connections in TIME_WAIT.
  void SetReuseAddr(bool on) {
    int opt = on ? 1 : 0;
    if (setsockopt(sockfd, SOL_SOCKET, SO_REUSEADDR, &opt, sizeof(opt)) != 0) {
      Error("SetReuseAddr");
    }
  }

  void Bind(const SockAddr& addr) {
    if (bind(sockfd, addr.Raw(), addr.Length()) != 0) Error("Bind");
  }

  // Binds to the first free port in [start_port, end_port) on `host`;
  // returns that port, or -1 if all of them are in use.
  int TryBindHost(const std::string& host, int start_port, int end_port) {
    for (int port = start_port; port < end_port; ++port) {
      SockAddr addr(host.c_str(), port);
      if (bind(sockfd, addr.Raw(), addr.Length()) == 0) return port;
      if (errno != EADDRINUSE) Error("TryBindHost");
    }
    return -1;
  }

 protected:
  explicit Socket(SockType fd) : sockfd(fd) {}
};

// A TCP stream socket; also usable as a blocking Stream.
class TCPSocket : public Socket, public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  TCPSocket() : Socket(kInvalidSocket) {}
  explicit TCPSocket(SockType fd) : Socket(fd) {}

  // Opens a new socket of address family `af` (AF_INET / AF_INET6).
  void Create(int af = AF_INET) {
    sockfd = socket(af, SOCK_STREAM, 0);
    if (sockfd == kInvalidSocket) Error("Create");
  }

  void SetKeepAlive(bool on) {
    int opt = on ? 1 : 0;
    if (setsockopt(sockfd, SOL_SOCKET, SO_KEEPALIVE, &opt, sizeof(opt)) != 0) {
      Error("SetKeepAlive");
    }
  }

  void Listen(int backlog = 16) {
    if (listen(sockfd, backlog) != 0) Error("Listen");
  }

  // Waits for an incoming connection.
  TCPSocket Accept() {
    ssize_t fd = RetryCallOnEINTR([&]() { return accept(sockfd, nullptr, nullptr); },
                                  GetLastErrorCode);
    if (fd == -1) Error("Accept");
    return TCPSocket(static_cast<SockType>(fd));
  }

  // Waits for an incoming connection and reports the peer address.
  TCPSocket Accept(SockAddr* peer) {
    socklen_t len = sizeof(peer->addr);
    ssize_t fd = RetryCallOnEINTR(
        [&]() { return accept(sockfd, reinterpret_cast<sockaddr*>(&peer->addr), &len); },
        GetLastErrorCode);
    if (fd == -1) Error("Accept");
    return TCPSocket(static_cast<SockType>(fd));
  }

  // True on success.
  bool Connect(const SockAddr& addr) { return connect(sockfd, addr.Raw(), addr.Length()) == 0; }

  // One send() call; returns bytes sent or -1. SIGPIPE is suppressed, a
  // closed peer shows up as an EPIPE error instead.
  ssize_t Send(const void* buf, size_t len, int flags = 0) {
    return RetryCallOnEINTR([&]() { return send(sockfd, buf, len, flags | MSG_NOSIGNAL); },
                            GetLastErrorCode);
  }

  // One recv() call; returns bytes received, 0 at end of stream, or -1.
  ssize_t Recv(void* buf, size_t len, int flags = 0) {
    return RetryCallOnEINTR([&]() { return recv(sockfd, buf, len, flags); }, GetLastErrorCode);
  }

  // Sends until all `len` bytes are out. Returns fewer only when a
  // non-blocking socket would block; throws on other errors.
  size_t SendAll(const void* buf, size_t len) {
    const char* p = static_cast<const char*>(buf);
    size_t done = 0;
    while (done < len) {
      ssize_t n = Send(p + done, len - done);
      if (n == -1) {
        if (LastErrorWouldBlock()) return done;
        Error("SendAll");
      }
      done += static_cast<size_t>(n);
    }
    return done;
  }

  // Receives until `len` bytes arrived. Returns fewer only if the peer closed
  // the connection; throws on errors.
  size_t RecvAll(void* buf, size_t len) {
    char* p = static_cast<char*>(buf);
    size_t done = 0;
    while (done < len) {
      ssize_t n = Recv(p + done, len - done, MSG_WAITALL);
      if (n == -1) {
        if (LastErrorWouldBlock()) {
          TVM_FFI_THROW(InternalError) << "Socket RecvAll: operation would block";
        }
        Error("RecvAll");
      }
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    return done;
  }

  // Message framing used by the RPC tracker: int32 length, then the bytes.
  void SendBytes(const std::string& data) {
    int32_t len = static_cast<int32_t>(data.size());
    TVM_FFI_ICHECK_EQ(SendAll(&len, sizeof(len)), sizeof(len));
    TVM_FFI_ICHECK_EQ(SendAll(data.data(), data.size()), data.size());
  }

  std::string RecvBytes() {
    int32_t len = 0;
    TVM_FFI_ICHECK_EQ(RecvAll(&len, sizeof(len)), sizeof(len));
    TVM_FFI_ICHECK_GE(len, 0) << "negative message length";
    std::string data(static_cast<size_t>(len), '\0');
    if (len != 0) {
      TVM_FFI_ICHECK_EQ(RecvAll(&data[0], data.size()), data.size());
    }
    return data;
  }

  // Stream interface: blocking, all-or-EOF transfers.
  size_t Read(void* ptr, size_t size) final { return RecvAll(ptr, size); }
  size_t Write(const void* ptr, size_t size) final { return SendAll(ptr, size); }
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_SOCKET_H_
