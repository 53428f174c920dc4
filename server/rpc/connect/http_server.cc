#include "server/rpc/connect/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "glog/logging.h"

namespace fleetd::server::rpc::connect {
namespace {

thread_local HttpServer::RequestInfo* current_request = nullptr;

int ToPollMs(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::min<int64_t>(
      absl::ToInt64Milliseconds(absl::Ceil(d, absl::Milliseconds(1))),
      INT_MAX));
}

void SetSocketTimeouts(int sock, absl::Duration read, absl::Duration write) {
  timeval r = absl::ToTimeval(read);
  timeval w = absl::ToTimeval(write);
  ::setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &r, sizeof(r));
  ::setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &w, sizeof(w));
}

bool SocketAddress(int sock, bool peer, std::string& ip, int& port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  int rc = peer ? ::getpeername(sock, reinterpret_cast<sockaddr*>(&addr), &len)
                : ::getsockname(sock, reinterpret_cast<sockaddr*>(&addr), &len);
  if (rc != 0) return false;
  char host[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&addr);
    ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    port = ntohs(in->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    port = ntohs(in6->sin6_port);
  } else {
    return false;
  }
  ip = host;
  return true;
}

// A blocking socket (plain or TLS) with SO_RCVTIMEO / SO_SNDTIMEO set, read
// through a buffer because httplib reads request headers byte by byte.
class SocketIo final : public httplib::Stream {
 public:
  SocketIo(int sock, SSL* ssl, absl::Duration read_timeout,
           absl::Duration write_timeout)
      : sock_(sock),
        ssl_(ssl),
        read_timeout_(read_timeout),
        write_timeout_(write_timeout) {}

  // Whether a request's bytes are already here, so no wait is needed.
  bool HasBufferedInput() const {
    return pos_ < len_ || (ssl_ != nullptr && SSL_pending(ssl_) > 0);
  }

  bool is_readable() const override {
    return HasBufferedInput() || Poll(POLLIN, read_timeout_);
  }
  bool is_writable() const override { return Poll(POLLOUT, write_timeout_); }

  ssize_t read(char* ptr, size_t size) override {
    if (pos_ < len_) {
      size_t n = std::min(size, len_ - pos_);
      std::memcpy(ptr, buffer_ + pos_, n);
      pos_ += n;
      return static_cast<ssize_t>(n);
    }
    if (size >= sizeof(buffer_)) return RawRead(ptr, size);
    ssize_t n = RawRead(buffer_, sizeof(buffer_));
    if (n <= 0) return n;
    len_ = static_cast<size_t>(n);
    pos_ = 0;
    return read(ptr, size);
  }

  using httplib::Stream::write;
  ssize_t write(const char* ptr, size_t size) override {
    if (ssl_ != nullptr) {
      ERR_clear_error();
      int n = SSL_write(ssl_, ptr,
                        static_cast<int>(std::min<size_t>(size, INT_MAX)));
      return n > 0 ? n : -1;
    }
    for (;;) {
      ssize_t n = ::send(sock_, ptr, size, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      return n;
    }
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    SocketAddress(sock_, /*peer=*/true, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    SocketAddress(sock_, /*peer=*/false, ip, port);
  }
  socket_t socket() const override { return sock_; }

 private:
  bool Poll(short events, absl::Duration timeout) const {
    pollfd p = {sock_, events, 0};
    for (;;) {
      int n = ::poll(&p, 1, ToPollMs(timeout));
      if (n < 0 && errno == EINTR) continue;
      return n > 0;
    }
  }

  ssize_t RawRead(char* ptr, size_t size) {
    if (ssl_ != nullptr) {
      ERR_clear_error();
      int n = SSL_read(ssl_, ptr,
                       static_cast<int>(std::min<size_t>(size, INT_MAX)));
      if (n > 0) return n;
      return SSL_get_error(ssl_, n) == SSL_ERROR_ZERO_RETURN ? 0 : -1;
    }
    for (;;) {
      ssize_t n = ::recv(sock_, ptr, size, 0);
      if (n < 0 && errno == EINTR) continue;
      return n;
    }
  }

  const int sock_;
  SSL* const ssl_;
  const absl::Duration read_timeout_;
  const absl::Duration write_timeout_;
  char buffer_[16 * 1024];
  size_t pos_ = 0;
  size_t len_ = 0;
};

// Closing a socket with unread input makes the kernel send RST, which can
// destroy the response still in flight to the client. So, after a response to
// a request whose body was left unread: send FIN, then read and drop what the
// client still sends, bounded in time and bytes, before closing.
void LingeringClose(int sock) {
  ::shutdown(sock, SHUT_WR);
  constexpr size_t kMaxDrainBytes = 4 << 20;
  constexpr int kMaxDrainWaits = 20;  // of up to 100 ms each
  char buf[16 * 1024];
  size_t drained = 0;
  for (int waits = 0; waits < kMaxDrainWaits && drained < kMaxDrainBytes;) {
    ssize_t n = ::recv(sock, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      drained += static_cast<size_t>(n);
      continue;
    }
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      return;
    }
    pollfd p = {sock, POLLIN, 0};
    ::poll(&p, 1, 100);
    ++waits;
  }
}

// Moves header `name` out of `headers`; repeated values are joined with ",".
std::optional<std::string> TakeHeader(httplib::Headers& headers,
                                      const char* name) {
  auto range = headers.equal_range(name);
  if (range.first == range.second) return std::nullopt;
  std::vector<std::string> values;
  for (auto it = range.first; it != range.second; ++it) {
    values.push_back(it->second);
  }
  headers.erase(range.first, range.second);
  return absl::StrJoin(values, ",");
}

}  // namespace

HttpServer::RequestInfo* HttpServer::Current() { return current_request; }

HttpServer::HttpServer(Options options) : options_(std::move(options)) {
  int threads = std::max(1, options_.threads);
  new_task_queue = [this, threads]() -> httplib::TaskQueue* {
    if (!running_.HasBeenNotified()) running_.Notify();
    return new httplib::ThreadPool(static_cast<size_t>(threads));
  };
  // httplib's default also sets SO_REUSEPORT, which would let a second server
  // share a busy port instead of failing to bind.
  set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  set_read_timeout(absl::ToChronoSeconds(options_.read_timeout));
  set_write_timeout(absl::ToChronoSeconds(options_.write_timeout));
  if (options_.metrics != nullptr) {
    auto& family = options_.metrics->CounterFamily(
        "fleetd_rpc_tls_connections_total",
        "TLS connections to a front end, by outcome.", {"front_end", "result"});
    connections_ = &family.WithLabels({"connect", "accepted"});
    handshake_failed_ = &family.WithLabels({"connect", "handshake_failed"});
  }
}

HttpServer::~HttpServer() = default;

absl::StatusOr<int> HttpServer::Bind(const HostPort& address) {
  int port = address.port;
  bool ok;
  if (port == 0) {
    port = bind_to_any_port(address.host);
    ok = port > 0;
  } else {
    ok = bind_to_port(address.host, port);
  }
  if (!ok) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", FormatHostPort(address.host, address.port)));
  }
  return port;
}

void HttpServer::Run() { listen_after_bind(); }

void HttpServer::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (const auto& [sock, idle] : sockets_) {
      if (idle) ::shutdown(sock, SHUT_RDWR);
    }
  }
  stop();
}

bool HttpServer::SetIdle(int sock, bool idle) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return false;
  sockets_[sock] = idle;
  return true;
}

void HttpServer::Forget(int sock) {
  absl::MutexLock lock(&mu_);
  sockets_.erase(sock);
}

bool HttpServer::process_and_close_socket(socket_t sock) {
  UniqueFd owned(sock);
  if (!SetIdle(sock, /*idle=*/true)) return true;
  SslPtr ssl;
  if (options_.tls != nullptr) {
    SetSocketTimeouts(sock, options_.handshake_timeout,
                      options_.handshake_timeout);
    ssl.reset(SSL_new(options_.tls.get()));
    ERR_clear_error();
    if (ssl == nullptr || SSL_set_fd(ssl.get(), sock) != 1 ||
        SSL_accept(ssl.get()) != 1) {
      std::string reason = DrainOpenSslErrors();
      if (handshake_failed_ != nullptr) handshake_failed_->Increment();
      LOG_EVERY_N(WARNING, 50)
          << "Connect front end: TLS handshake with " << PeerAddress(sock)
          << " failed: " << (reason.empty() ? "connection closed" : reason);
      Forget(sock);
      return true;
    }
    if (connections_ != nullptr) connections_->Increment();
  }
  SetSocketTimeouts(sock, options_.read_timeout, options_.write_timeout);
  SocketIo io(sock, ssl.get(), options_.read_timeout, options_.write_timeout);

  bool unread_input = false;
  for (int served = 0; served < options_.max_requests_per_connection;
       ++served) {
    if (!io.HasBufferedInput()) {
      pollfd p = {sock, POLLIN, 0};
      int n;
      do {
        n = ::poll(&p, 1, ToPollMs(options_.idle_timeout));
      } while (n < 0 && errno == EINTR);
      if (n <= 0) break;  // idle too long, or failed
    }
    if (!SetIdle(sock, /*idle=*/false)) break;
    RequestInfo info;
    current_request = &info;
    bool last = served + 1 == options_.max_requests_per_connection;
    bool connection_closed = false;
    bool ok = process_request(
        io, last, connection_closed, [&info, sock](httplib::Request& req) {
          info.content_encoding = TakeHeader(req.headers, "Content-Encoding");
          info.accept_encoding = TakeHeader(req.headers, "Accept-Encoding");
          info.peer = req.remote_addr.empty()
                          ? PeerAddress(sock)
                          : FormatHostPort(req.remote_addr, req.remote_port);
        });
    current_request = nullptr;
    unread_input = info.close_after_response;
    if (!ok || connection_closed || last || info.close_after_response) break;
    if (!SetIdle(sock, /*idle=*/true)) break;
  }
  if (ssl != nullptr) SSL_shutdown(ssl.get());
  if (unread_input) LingeringClose(sock);
  Forget(sock);
  return true;
}

}  // namespace fleetd::server::rpc::connect
