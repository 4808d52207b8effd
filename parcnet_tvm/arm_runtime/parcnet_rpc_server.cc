// parcnet_rpc_server: a TVM RPC server for the board, so tune.py and bench.py can build
// on the host and measure here.
//
//   parcnet_rpc_server --port 9090 [--bind IP]          serve clients directly
//   parcnet_rpc_server --tracker HOST:9190 --key rk3288 [--port 9090] [--host-addr IP]
//   ... --allow IP[,IP...]                               serve only these clients
//
// A TVM RPC client runs whatever code it sends, so the server listens where it is told:
// --bind (default: loopback when serving directly; with a tracker, the interface that
// reaches it), and --allow refuses every other client before a byte of its is read.
// Speaks TVM's RPC handshake and tracker protocol (tvm/rpc/server.py is the reference):
// each accepted session runs in a forked child, in its own work directory, with the
// runtime's RPC server loop; a session's "-timeout=S" option kills it after S seconds.
// Until a session begins, every byte a client sends is distrusted: the handshake must finish
// within kHandshakeSeconds, every length it carries is bounded, and a client that fails it is
// dropped with one log line while the server goes on to the next.

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace tvm {
namespace runtime {
// The runtime's server loop over a connected socket (src/runtime/rpc/rpc_socket_impl.cc).
void RPCServerLoop(int sockfd);
}  // namespace runtime
}  // namespace tvm

namespace {

constexpr int32_t kRPCMagic = 0xFF271;          // client <-> server handshake
constexpr int32_t kTrackerMagic = 0x2F271;      // server <-> tracker
constexpr int32_t kCodeSuccess = kRPCMagic + 0;
constexpr int32_t kCodeMismatch = kRPCMagic + 2;
// TrackerCode values (tvm/rpc/base.py).
constexpr int kTrackerSuccess = 0, kTrackerPut = 3, kTrackerUpdateInfo = 5, kTrackerPendingKeys = 7;
constexpr int kPingSeconds = 2;
// What a client may send before its session begins. TVM's clients send the whole handshake at
// once, so a few seconds is generous; a key is "client:KEY[:MATCH] [-timeout=S]", far below
// 4 KiB; the session's first packet (kInitServer: the protocol version and constructor
// arguments) is small.
constexpr int kHandshakeSeconds = 5;
constexpr int32_t kMaxKeyBytes = 4096;
constexpr int32_t kInitServer = 2;                 // RPCCode::kInitServer (rpc/minrpc/rpc_reference.h)
constexpr uint64_t kMaxFirstPacket = 1ULL << 26;   // 64 MiB
constexpr int32_t kMaxTrackerReply = 1 << 20;

using Clock = std::chrono::steady_clock;

std::string g_workdir;  // the current session's directory

struct Options {
  int port = 9090;
  int port_end = 9199;
  std::string tracker_host;
  int tracker_port = 0;
  std::string key;  // direct mode: "" like `python -m tvm.exec.rpc_server`; tracker mode needs one
  std::string host_addr;  // the address the tracker gives clients (default: as the tracker sees us)
  std::string bind_addr;  // where to listen (default: see the top of the file)
  std::vector<in_addr_t> allow;  // clients served (network order); empty: any
};

[[noreturn]] void Fail(const std::string& msg) {
  std::fprintf(stderr, "error: %s\n", msg.c_str());
  std::exit(1);
}

// A client that broke the handshake: why, for the log; the server drops it and goes on.
struct Dropped : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A TCP port written in digits, 1 to 65535: anything else stops the server at once with
// one line, not with an uncaught exception from std::stoi.
int PortNumber(const std::string& option, const std::string& text, const std::string& example) {
  const bool digits = !text.empty() && text.size() <= 5 &&
                      std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c); });
  const int port = digits ? std::stoi(text) : 0;
  if (port < 1 || port > 65535) {
    Fail(option + " takes a port from 1 to 65535, not \"" + text + "\": give one, e.g. " + example);
  }
  return port;
}

void Log(const std::string& msg) {
  std::fprintf(stderr, "[parcnet_rpc_server] %s\n", msg.c_str());
}

Options ParseArgs(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Fail(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--port") {
      opt.port = PortNumber(arg, value(), "--port 9090");
      opt.port_end = opt.port;
    } else if (arg == "--port-end") {
      opt.port_end = PortNumber(arg, value(), "--port-end 9199");
    } else if (arg == "--tracker") {
      std::string t = value();
      auto colon = t.rfind(':');
      if (colon == std::string::npos || colon == 0) Fail("--tracker must be HOST:PORT, got " + t + ": e.g. 192.168.1.10:9190");
      opt.tracker_host = t.substr(0, colon);
      opt.tracker_port = PortNumber("--tracker's port", t.substr(colon + 1), "--tracker 192.168.1.10:9190");
    } else if (arg == "--key") {
      opt.key = value();
    } else if (arg == "--host-addr") {
      opt.host_addr = value();
    } else if (arg == "--bind") {
      opt.bind_addr = value();
      in_addr parsed{};
      if (inet_pton(AF_INET, opt.bind_addr.c_str(), &parsed) != 1) {
        Fail("--bind takes an IPv4 address (e.g. 192.168.1.20, or 0.0.0.0 for every interface), got " + opt.bind_addr);
      }
    } else if (arg == "--allow") {
      std::string list = value() + ",";
      for (size_t start = 0, comma; (comma = list.find(',', start)) != std::string::npos; start = comma + 1) {
        std::string ip = list.substr(start, comma - start);
        in_addr parsed{};
        if (inet_pton(AF_INET, ip.c_str(), &parsed) != 1) Fail("--allow takes IPv4 addresses IP[,IP...], got " + ip);
        opt.allow.push_back(parsed.s_addr);
      }
    } else {
      Fail("unknown argument " + arg + ": usage: parcnet_rpc_server [--port P [--port-end Q]] "
           "[--tracker HOST:PORT --key KEY] [--host-addr IP] [--bind IP] [--allow IP[,IP...]]");
    }
  }
  if (!opt.tracker_host.empty() && opt.key.empty()) Fail("--tracker needs --key KEY: e.g. --key rk3288");
  if (opt.port_end < opt.port) {
    Fail("--port-end " + std::to_string(opt.port_end) + " is below --port " + std::to_string(opt.port) +
         ": give --port-end >= --port");
  }
  return opt;
}

// ---- socket helpers -------------------------------------------------------------------

void SendAll(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = send(fd, p, size, MSG_NOSIGNAL);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      throw std::runtime_error("connection closed while sending");
    }
    p += n;
    size -= size_t(n);
  }
}

// Waits until `fd` has bytes (or its end) to read; past `deadline` the client is dropped.
// Clock::time_point::max(): no deadline (the tracker's connection).
void WaitReadable(int fd, Clock::time_point deadline) {
  if (deadline == Clock::time_point::max()) return;
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) throw Dropped("no complete handshake within " + std::to_string(kHandshakeSeconds) + " s");
    pollfd waiting{fd, POLLIN, 0};
    const int ready = poll(&waiting, 1, int(left));
    if (ready > 0) return;
    if (ready < 0 && errno != EINTR) throw Dropped(std::string("its connection failed (") + std::strerror(errno) + ")");
  }
}

void RecvAll(int fd, void* data, size_t size, Clock::time_point deadline = Clock::time_point::max()) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    WaitReadable(fd, deadline);
    ssize_t n = recv(fd, p, size, 0);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      throw std::runtime_error("connection closed while receiving");
    }
    p += n;
    size -= size_t(n);
  }
}

void SendInt(int fd, int32_t v) { SendAll(fd, &v, 4); }  // little-endian on ARM and x86

int32_t RecvInt(int fd, Clock::time_point deadline = Clock::time_point::max()) {
  int32_t v;
  RecvAll(fd, &v, 4, deadline);
  return v;
}

void SendJson(int fd, const std::string& json) {
  SendInt(fd, int32_t(json.size()));
  SendAll(fd, json.data(), json.size());
}

// A length-prefixed string of at most `most` bytes: a hostile length is refused before
// anything is allocated for it.
std::string RecvString(int fd, int32_t most, Clock::time_point deadline = Clock::time_point::max()) {
  int32_t size = RecvInt(fd, deadline);
  if (size < 0 || size > most) {
    throw Dropped("length " + std::to_string(size) + " is outside 0.." + std::to_string(most));
  }
  std::string s(size_t(size), '\0');
  RecvAll(fd, s.data(), s.size(), deadline);
  return s;
}

// The local address of the route to host:port (a UDP "connection" sends nothing).
std::string LocalAddressTowards(const std::string& host, int port) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || res == nullptr) {
    Fail("cannot resolve the tracker's host " + host + ": give its IP, or --bind IP");
  }
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in local{};
  socklen_t size = sizeof(local);
  bool found = fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0 &&
               getsockname(fd, reinterpret_cast<sockaddr*>(&local), &size) == 0;
  freeaddrinfo(res);
  if (fd >= 0) close(fd);
  if (!found) Fail("no route to the tracker " + host + ": check the address, or give --bind IP");
  char text[INET_ADDRSTRLEN];
  return inet_ntop(AF_INET, &local.sin_addr, text, sizeof(text));
}

std::string BindAddress(const Options& opt) {
  if (!opt.bind_addr.empty()) return opt.bind_addr;
  return opt.tracker_host.empty() ? "127.0.0.1" : LocalAddressTowards(opt.tracker_host, opt.tracker_port);
}

int Listen(const Options& opt, const std::string& bind_addr, int* port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) Fail("cannot create a socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  for (int p = opt.port; p <= opt.port_end; ++p) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    inet_pton(AF_INET, bind_addr.c_str(), &addr.sin_addr);
    addr.sin_port = htons(uint16_t(p));
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 && listen(fd, 8) == 0) {
      *port = p;
      return fd;
    }
  }
  Fail("no free port in " + std::to_string(opt.port) + ".." + std::to_string(opt.port_end) + " on " + bind_addr);
}

int Connect(const std::string& host, int port) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || res == nullptr) {
    throw std::runtime_error("cannot resolve " + host);
  }
  int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
  int rc = fd < 0 ? -1 : connect(fd, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  if (rc != 0) {
    if (fd >= 0) close(fd);
    throw std::runtime_error("cannot connect to " + host + ":" + std::to_string(port));
  }
  return fd;
}

// ---- tracker --------------------------------------------------------------------------

std::string Quote(const std::string& s) { return "\"" + s + "\""; }

class Tracker {
 public:
  Tracker(const Options& opt, int port) : opt_(opt), port_(port) {}

  bool enabled() const { return !opt_.tracker_host.empty(); }

  // Connect (with retries), introduce ourselves and offer a fresh match key.
  void Register() {
    for (int attempt = 0;; ++attempt) {
      try {
        fd_ = Connect(opt_.tracker_host, opt_.tracker_port);
        break;
      } catch (const std::exception& err) {
        if (attempt == 0) Log(std::string(err.what()) + ", retrying every 2 s");
        std::this_thread::sleep_for(std::chrono::seconds(2));
      }
    }
    SendInt(fd_, kTrackerMagic);
    if (RecvInt(fd_) != kTrackerMagic) Fail(opt_.tracker_host + " is not a TVM RPC tracker");
    std::string addr = opt_.host_addr.empty() ? "null" : Quote(opt_.host_addr);
    Request("[" + std::to_string(kTrackerUpdateInfo) + ", {\"key\": " + Quote("server:" + opt_.key) +
            ", \"addr\": [" + addr + ", " + std::to_string(port_) + "]}]");
    Put();
  }

  void Put() {
    matchkey_ = opt_.key + ":" + std::to_string(std::random_device{}());
    std::string addr = opt_.host_addr.empty() ? "null" : Quote(opt_.host_addr);
    Request("[" + std::to_string(kTrackerPut) + ", " + Quote(opt_.key) + ", [" + std::to_string(port_) + ", " +
            Quote(matchkey_) + "], " + addr + "]");
  }

  // While idle: if a client took our key but never came, offer a new one.
  void Ping() {
    SendJson(fd_, "[" + std::to_string(kTrackerPendingKeys) + "]");
    std::string pending = RecvString(fd_, kMaxTrackerReply);
    if (pending.find(Quote(matchkey_)) == std::string::npos) {
      if (++unmatched_ * kPingSeconds > 6) {
        Put();
        unmatched_ = 0;
      }
    } else {
      unmatched_ = 0;
    }
  }

  const std::string& matchkey() const { return matchkey_; }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  void Request(const std::string& json) {
    SendJson(fd_, json);
    std::string reply = RecvString(fd_, kMaxTrackerReply);
    if (reply != std::to_string(kTrackerSuccess)) Fail("tracker refused " + json + ": " + reply);
  }

  Options opt_;
  int port_;
  int fd_ = -1;
  int unmatched_ = 0;
  std::string matchkey_;
};

// ---- sessions -------------------------------------------------------------------------

// The session timeout a client's key asks for ("-timeout=S", seconds; 0 = none). A value that
// is not a plain non-negative number drops the client rather than being read as some other.
double SessionTimeout(const std::string& key) {
  auto pos = key.find("-timeout=");
  if (pos == std::string::npos) return 0.0;
  const char* start = key.c_str() + pos + 9;
  char* end = nullptr;
  const double timeout = std::strtod(start, &end);
  if (end == start || (*end != '\0' && *end != ' ') || !std::isfinite(timeout) || timeout < 0) {
    throw Dropped("its -timeout is not a number of seconds");
  }
  return timeout;
}

// The session's first packet, peeked (the runtime's loop reads it): a TVM client opens with
// kInitServer and a small length. Garbage after a good handshake is dropped here, so the
// runtime never sizes a buffer from a hostile length, and a client gone silent after the
// handshake does not hold the server.
void ExpectSessionStart(int conn, Clock::time_point deadline) {
  unsigned char head[12];
  while (true) {
    WaitReadable(conn, deadline);
    ssize_t n = recv(conn, head, sizeof(head), MSG_PEEK);
    if (n == ssize_t(sizeof(head))) break;
    if (n == 0) throw Dropped("it closed before its session began");
    if (n < 0 && errno != EINTR) throw Dropped(std::string("its connection failed (") + std::strerror(errno) + ")");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // part of the header so far
  }
  uint64_t size;
  int32_t code;
  std::memcpy(&size, head, 8);
  std::memcpy(&code, head + 8, 4);
  if (code != kInitServer || size < 12 || size > kMaxFirstPacket) {
    throw Dropped("its first packet is not a TVM session start");
  }
}

// Handshake of one incoming connection (tvm/rpc/server.py's, with every length bounded and
// the whole exchange under one deadline); returns the session timeout (0 = none). Throws
// (Dropped, or a closed connection) when the client is to be dropped.
double Handshake(int conn, const std::string& expected_key, const std::string& server_key) {
  const auto deadline = Clock::now() + std::chrono::seconds(kHandshakeSeconds);
  const int32_t magic = RecvInt(conn, deadline);
  if (magic != kRPCMagic) throw Dropped("not a TVM RPC client (wrong magic number)");
  std::string key = RecvString(conn, kMaxKeyBytes, deadline);
  std::string first = key.substr(0, key.find(' '));
  if (first != "client:" + expected_key) {
    SendInt(conn, kCodeMismatch);
    throw Dropped("its key does not match this server's");
  }
  const double timeout = SessionTimeout(key);
  SendInt(conn, kCodeSuccess);
  SendInt(conn, int32_t(server_key.size()));
  SendAll(conn, server_key.data(), server_key.size());
  ExpectSessionStart(conn, deadline);
  return timeout;
}

// The session's process. Whatever ends the session (a client that resets the connection, or
// sends what the runtime refuses) ends this process here: an exception must never unwind into
// the server's loop of main(), or the child would go on accepting clients as a second server
// while the parent waits for it forever.
[[noreturn]] void RunSession(int conn, const char* workdir) {
  try {
    g_workdir = workdir;
    if (chdir(workdir) != 0) std::_Exit(1);
    tvm::runtime::RPCServerLoop(conn);
  } catch (const std::exception& err) {
    Log(std::string("session ended: ") + err.what());
    std::_Exit(1);
  } catch (...) {
    std::_Exit(1);
  }
  std::_Exit(0);
}

void Serve(int conn, double timeout) {
  char tmpl[] = "/tmp/parcnet_rpc_XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    close(conn);
    Log("cannot create a session directory in /tmp; dropped the client");
    return;
  }
  pid_t child = fork();
  if (child == 0) RunSession(conn, tmpl);
  close(conn);
  if (child < 0) {
    Log("cannot start a session process; dropped the client");
    rmdir(tmpl);
    return;
  }
  auto start = std::chrono::steady_clock::now();
  int status = 0;
  while (waitpid(child, &status, WNOHANG) == 0) {
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (timeout > 0 && elapsed > timeout) {
      Log("session timed out after " + std::to_string(int(timeout)) + " s, killing it");
      kill(child, SIGKILL);
      waitpid(child, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::system(("rm -rf " + std::string(tmpl)).c_str());
  Log("session finished");
}

void RegisterServerFunctions() {
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef()
      .def("tvm.rpc.server.workpath", [](tvm::ffi::String name) -> tvm::ffi::String {
        return g_workdir + "/" + std::string(name);
      })
      .def("tvm.rpc.server.load_module", [](tvm::ffi::String name) -> tvm::ffi::Module {
        std::string path = g_workdir + "/" + std::string(name);
        Log("load_module " + path);
        return tvm::ffi::Module::LoadFromFile(path);
      });
}

std::string AddressText(const sockaddr_in& peer) {
  char text[INET_ADDRSTRLEN];
  return inet_ntop(AF_INET, &peer.sin_addr, text, sizeof(text)) ? text : "an unknown address";
}

// Accepts the next client and serves its session. A client refused by --allow or dropped in
// the handshake costs one log line and nothing else: no pause, no new tracker registration.
void ServeNext(int listen_fd, const Options& opt, Tracker& tracker) {
  sockaddr_in peer{};
  socklen_t peer_size = sizeof(peer);
  int conn = accept(listen_fd, reinterpret_cast<sockaddr*>(&peer), &peer_size);
  if (conn < 0) return;
  if (!opt.allow.empty() && std::find(opt.allow.begin(), opt.allow.end(), peer.sin_addr.s_addr) == opt.allow.end()) {
    Log("refused a client from " + AddressText(peer) + " (not in --allow)");
    close(conn);
    return;
  }
  int one = 1;
  setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  std::string expected = tracker.enabled() ? tracker.matchkey() : opt.key;
  double timeout = 0;
  try {
    timeout = Handshake(conn, expected, "server:" + opt.key);
  } catch (const std::exception& why) {  // Dropped, or the client closed the connection
    Log("dropped a client from " + AddressText(peer) + ": " + why.what());
    close(conn);
    return;
  }
  Log("session started");
  Serve(conn, timeout);
  if (tracker.enabled()) tracker.Put();  // a fresh key for the next client
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = ParseArgs(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  RegisterServerFunctions();
  int port = 0;
  std::string bind_addr = BindAddress(opt);
  int listen_fd = Listen(opt, bind_addr, &port);
  Tracker tracker(opt, port);
  Log("listening on " + bind_addr + ":" + std::to_string(port) +
      (opt.allow.empty() ? "" : ", serving only the clients of --allow") +
      (tracker.enabled() ? ", tracker " + opt.tracker_host + ":" + std::to_string(opt.tracker_port) +
                               ", key " + opt.key
                         : ""));
  while (true) {
    try {
      if (tracker.enabled()) tracker.Register();
      while (true) {
        if (tracker.enabled()) {
          fd_set fds;
          FD_ZERO(&fds);
          FD_SET(listen_fd, &fds);
          timeval tv{kPingSeconds, 0};
          if (select(listen_fd + 1, &fds, nullptr, nullptr, &tv) <= 0) {
            tracker.Ping();
            continue;
          }
        }
        ServeNext(listen_fd, opt, tracker);
      }
    } catch (const std::exception& err) {
      Log(std::string("connection problem: ") + err.what() + "; starting over");
      tracker.Close();
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  }
}
