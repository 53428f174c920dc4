#include "server/rpc/grpc/tls_terminator.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "glog/logging.h"

namespace fleetd::server::rpc {
namespace {

// Bytes buffered per direction and connection.
constexpr size_t kRelayBufferBytes = 128 * 1024;
constexpr size_t kChunkBytes = 16 * 1024;

int PollTimeoutMs(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return 0;
  int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(d, absl::Milliseconds(1)));
  return static_cast<int>(std::min<int64_t>(ms, 1 << 30));
}

void Signal(int event_fd) {
  uint64_t one = 1;
  // An eventfd write only fails when the counter would overflow, which
  // cannot happen with a handful of writes.
  ssize_t ignored = ::write(event_fd, &one, sizeof(one));
  (void)ignored;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TlsTerminator>> TlsTerminator::Start(
    const HostPort& address, SslCtxPtr ctx, Options options, Handoff handoff) {
  absl::StatusOr<UniqueFd> listener = ListenTcp(address);
  if (!listener.ok()) return listener.status();
  std::unique_ptr<TlsTerminator> terminator(
      new TlsTerminator(*std::move(listener), std::move(ctx),
                        std::move(options), std::move(handoff)));
  if (!terminator->stop_.valid() || !terminator->stop_accepting_.valid()) {
    return absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno)));
  }
  // The acceptor and the connection threads it starts write to sockets
  // through OpenSSL: keep SIGPIPE from killing the process.
  ScopedSigpipeBlock no_sigpipe;
  terminator->acceptor_ =
      std::thread([t = terminator.get()] { t->AcceptLoop(); });
  return terminator;
}

TlsTerminator::TlsTerminator(UniqueFd listener, SslCtxPtr ctx, Options options,
                             Handoff handoff)
    : ctx_(std::move(ctx)),
      options_(std::move(options)),
      clock_(options_.clock != nullptr ? options_.clock : Clock::Real()),
      handoff_(std::move(handoff)),
      listener_(std::move(listener)),
      port_(LocalPort(listener_.get())),
      stop_accepting_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)),
      stop_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  if (options_.metrics != nullptr) {
    auto& family = options_.metrics->CounterFamily(
        "fleetd_rpc_tls_connections_total",
        "TLS connections to a front end, by outcome.", {"front_end", "result"});
    accepted_ = &family.WithLabels({options_.name, "accepted"});
    refused_limit_ = &family.WithLabels({options_.name, "refused_limit"});
    handshake_failed_ = &family.WithLabels({options_.name, "handshake_failed"});
  }
}

TlsTerminator::~TlsTerminator() { Shutdown(); }

std::string TlsTerminator::PeerOf(int fd) const {
  absl::MutexLock lock(&mu_);
  auto it = peers_.find(fd);
  return it == peers_.end() ? std::string() : it->second.second;
}

void TlsTerminator::StopAccepting() {
  Signal(stop_accepting_.get());
  if (!acceptor_joined_.exchange(true) && acceptor_.joinable()) {
    acceptor_.join();
  }
}

void TlsTerminator::Shutdown() {
  StopAccepting();
  std::list<Connection> connections;
  {
    absl::MutexLock lock(&mu_);
    shut_down_ = true;
    connections.splice(connections.end(), connections_);
  }
  Signal(stop_.get());
  for (Connection& connection : connections) {
    if (connection.thread.joinable()) connection.thread.join();
  }
}

void TlsTerminator::ReapFinished() {
  for (auto it = connections_.begin(); it != connections_.end();) {
    if (it->done.load()) {
      it->thread.join();
      it = connections_.erase(it);
    } else {
      ++it;
    }
  }
}

void TlsTerminator::AcceptLoop() {
  for (;;) {
    pollfd fds[2] = {{listener_.get(), POLLIN, 0},
                     {stop_accepting_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      LOG(ERROR) << options_.name
                 << " TLS acceptor: poll: " << std::strerror(errno);
      return;
    }
    if (fds[1].revents != 0) return;
    int fd = ::accept4(listener_.get(), nullptr, nullptr,
                       SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
          errno == ECONNABORTED) {
        continue;
      }
      // Out of descriptors or memory: back off briefly instead of spinning,
      // still waking at once for StopAccepting().
      LOG_EVERY_N(WARNING, 100)
          << options_.name << " TLS acceptor: accept: " << std::strerror(errno);
      pollfd stop = {stop_accepting_.get(), POLLIN, 0};
      ::poll(&stop, 1, 100);
      continue;
    }
    UniqueFd tcp(fd);
    int yes = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
    absl::MutexLock lock(&mu_);
    ReapFinished();
    if (shut_down_) return;
    if (connections_.size() >= static_cast<size_t>(options_.max_connections)) {
      if (refused_limit_ != nullptr) refused_limit_->Increment();
      LOG_EVERY_N(WARNING, 100)
          << options_.name << ": refusing connection from " << PeerAddress(fd)
          << ": " << connections_.size() << " connections open (limit "
          << options_.max_connections << ")";
      continue;  // `tcp` closes the socket
    }
    connections_.emplace_back();
    Connection* connection = &connections_.back();
    connection->thread =
        std::thread([this, connection, tcp = std::move(tcp)]() mutable {
          Serve(std::move(tcp), connection);
          connection->done.store(true);
        });
  }
}

bool TlsTerminator::Handshake(SSL* ssl, int tcp) {
  const absl::Time deadline =
      clock_->MonotonicNow() + options_.handshake_timeout;
  for (;;) {
    ERR_clear_error();
    int rc = SSL_accept(ssl);
    if (rc == 1) return true;
    int error = SSL_get_error(ssl, rc);
    short events = error == SSL_ERROR_WANT_READ    ? POLLIN
                   : error == SSL_ERROR_WANT_WRITE ? POLLOUT
                                                   : 0;
    if (events == 0) {
      std::string reason = DrainOpenSslErrors();
      LOG_EVERY_N(WARNING, 50)
          << options_.name << ": TLS handshake with " << PeerAddress(tcp)
          << " failed: " << (reason.empty() ? "connection closed" : reason);
      return false;
    }
    absl::Duration remaining = deadline - clock_->MonotonicNow();
    if (remaining <= absl::ZeroDuration()) {
      LOG_EVERY_N(WARNING, 50) << options_.name << ": TLS handshake with "
                               << PeerAddress(tcp) << " timed out";
      return false;
    }
    pollfd fds[2] = {{tcp, events, 0}, {stop_.get(), POLLIN, 0}};
    int n = ::poll(fds, 2, PollTimeoutMs(remaining));
    if (n < 0 && errno != EINTR) return false;
    if (fds[1].revents != 0) return false;
  }
}

void TlsTerminator::Serve(UniqueFd tcp, Connection* connection) {
  SslPtr ssl(SSL_new(ctx_.get()));
  if (ssl == nullptr || SSL_set_fd(ssl.get(), tcp.get()) != 1) {
    LOG(ERROR) << options_.name << ": SSL_new: " << DrainOpenSslErrors();
    return;
  }
  if (!Handshake(ssl.get(), tcp.get())) {
    if (handshake_failed_ != nullptr) handshake_failed_->Increment();
    return;
  }
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                   pair) != 0) {
    LOG(ERROR) << options_.name << ": socketpair: " << std::strerror(errno);
    return;
  }
  if (accepted_ != nullptr) accepted_->Increment();
  UniqueFd local(pair[0]);
  const int handed_off = pair[1];
  uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    id = ++next_id_;
    peers_[handed_off] = {id, PeerAddress(tcp.get())};
  }
  handoff_(handed_off);
  Relay(ssl.get(), tcp.get(), local.get());
  {
    absl::MutexLock lock(&mu_);
    auto it = peers_.find(handed_off);
    if (it != peers_.end() && it->second.first == id) peers_.erase(it);
  }
}

void TlsTerminator::Relay(SSL* ssl, int tcp, int local) {
  std::string to_local;        // decrypted, waiting for the local socket
  std::string to_tls;          // from the local socket, waiting to be encrypted
  size_t write_retry_len = 0;  // length of an SSL_write to repeat, if any
  bool tls_eof = false;
  bool local_eof = false;
  char chunk[kChunkBytes];
  for (;;) {
    bool tcp_in = false, tcp_out = false, local_in = false, local_out = false;
    // Whether any byte moved; if so, try every step again before waiting, as
    // a step skipped for a full or empty buffer may be possible now.
    bool progress = false;

    while (!tls_eof && to_local.size() < kRelayBufferBytes) {
      ERR_clear_error();
      int want = static_cast<int>(
          std::min(sizeof(chunk), kRelayBufferBytes - to_local.size()));
      int n = SSL_read(ssl, chunk, want);
      if (n > 0) {
        to_local.append(chunk, static_cast<size_t>(n));
        progress = true;
        continue;
      }
      int error = SSL_get_error(ssl, n);
      if (error == SSL_ERROR_WANT_READ) {
        tcp_in = true;
      } else if (error == SSL_ERROR_WANT_WRITE) {
        tcp_out = true;
      } else {
        // close_notify, a plain TCP close or a TLS error: no more input.
        tls_eof = true;
      }
      break;
    }

    while (!to_local.empty()) {
      ssize_t n = ::send(local, to_local.data(), to_local.size(), MSG_NOSIGNAL);
      if (n > 0) {
        to_local.erase(0, static_cast<size_t>(n));
        progress = true;
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        local_out = true;
        break;
      } else {
        return;  // the server closed its end
      }
    }
    if (tls_eof && to_local.empty()) return;

    while (!local_eof && to_tls.size() < kRelayBufferBytes) {
      size_t want = std::min(sizeof(chunk), kRelayBufferBytes - to_tls.size());
      ssize_t n = ::recv(local, chunk, want, 0);
      if (n > 0) {
        to_tls.append(chunk, static_cast<size_t>(n));
        progress = true;
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        local_in = true;
        break;
      } else {
        local_eof = true;
        break;
      }
    }

    while (!to_tls.empty()) {
      // OpenSSL wants a retried write repeated with the same length.
      size_t len = write_retry_len != 0 ? write_retry_len : to_tls.size();
      ERR_clear_error();
      int n = SSL_write(ssl, to_tls.data(), static_cast<int>(len));
      if (n > 0) {
        to_tls.erase(0, static_cast<size_t>(n));
        write_retry_len = 0;
        progress = true;
        continue;
      }
      write_retry_len = len;
      int error = SSL_get_error(ssl, n);
      if (error == SSL_ERROR_WANT_WRITE) {
        tcp_out = true;
      } else if (error == SSL_ERROR_WANT_READ) {
        tcp_in = true;
      } else {
        return;  // the client is gone
      }
      break;
    }
    if (local_eof && to_tls.empty()) {
      SSL_shutdown(ssl);  // best effort close_notify
      return;
    }
    if (progress) continue;

    // A side with nothing to wait for is left out (fd -1), so its hang-up
    // cannot wake the loop while it waits on the other side.
    short tcp_events =
        static_cast<short>((tcp_in ? POLLIN : 0) | (tcp_out ? POLLOUT : 0));
    short local_events =
        static_cast<short>((local_in ? POLLIN : 0) | (local_out ? POLLOUT : 0));
    pollfd fds[3] = {{tcp_events != 0 ? tcp : -1, tcp_events, 0},
                     {local_events != 0 ? local : -1, local_events, 0},
                     {stop_.get(), POLLIN, 0}};
    int timeout =
        (tls_eof || local_eof) ? PollTimeoutMs(options_.drain_timeout) : -1;
    int n = ::poll(fds, 3, timeout);
    if (n < 0 && errno != EINTR) return;
    if (n == 0) return;  // drain timed out
    if (fds[2].revents != 0) return;
  }
}

}  // namespace fleetd::server::rpc
