// The front door's connection driver. See server.h for the contract.
//
// Memory. An idle connection holds its socket (the reactor's descriptor
// state), one timer, a strand, its SSL object (with SSL_MODE_RELEASE_BUFFERS,
// so no record buffers while idle) and its session: no read buffer and no
// write buffer. Readability is awaited with socket.async_wait(wait_read);
// bytes are then read into one 64 KiB buffer per I/O thread and fed to the
// session at once. Output lives in the connection only while it cannot be
// written yet. asio::ssl::stream is not used because it keeps ~34 KiB of
// buffers per connection: OpenSSL runs on the non-blocking socket itself
// (SSL_set_fd), and WANT_READ/WANT_WRITE turn into waits for that direction.
//
// Threading. Everything a connection does runs on its strand; the server
// keeps a registry (mutex) of its connections for connections() and
// Shutdown(). The registry and pending handlers hold the connection by
// shared_ptr: it is destroyed once closed (unregistered) and its last wait
// or timer has completed.
#include "server/rpc/http/server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "boost/asio/bind_executor.hpp"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/asio/strand.hpp"
#include "server/rpc/net/net.h"
#include "server/rpc/net/tls_context.h"

namespace fleetd::server::rpc::http {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Strand = asio::strand<asio::io_context::executor_type>;
using Clock = std::chrono::steady_clock;
using ErrorCode = boost::system::error_code;

// Bytes read per read call, from a buffer each I/O thread allocates once.
constexpr size_t kReadBufferSize = 64 << 10;
// Reads per turn of a connection before it yields its thread to others.
constexpr int kReadsPerTurn = 16;
// After a graceful close (FIN sent) the peer's remaining bytes are read and
// dropped for at most this long, so that closing with unread input does not
// reset the connection and destroy the response in flight (RFC 9112 9.6).
constexpr auto kLingerTime = std::chrono::seconds(2);
// A failed accept (e.g. out of file descriptors) is retried after this.
constexpr auto kAcceptRetryDelay = std::chrono::milliseconds(50);
// Listen backlog: bursts of reconnecting devices.
constexpr int kListenBacklog = 4096;
// How long Shutdown waits for aborted connections to close on their strands.
constexpr absl::Duration kAbortWait = absl::Seconds(5);

// TCP keepalive on `fd`: probes after `idle` without traffic, then every
// `timeout` / 3; three unanswered probes end the connection (the kernel does
// it; the next read fails).
void EnableTcpKeepalive(int fd, absl::Duration idle, absl::Duration timeout) {
  int on = 1;
  int idle_s = std::max<int>(1, static_cast<int>(absl::ToInt64Seconds(idle)));
  int interval_s =
      std::max<int>(1, static_cast<int>(absl::ToInt64Seconds(timeout / 3)));
  int count = 3;
  // Best effort: a socket without keepalive still has the HTTP/2 PING and
  // the idle timeout.
  (void)::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof(idle_s));
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s,
                     sizeof(interval_s));
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
}

char* ThreadReadBuffer() {
  // Allocated on first use, so only I/O threads pay for it.
  thread_local std::unique_ptr<char[]> buffer(new char[kReadBufferSize]);
  return buffer.get();
}

Clock::duration ToChrono(absl::Duration d) {
  return std::chrono::duration_cast<Clock::duration>(absl::ToChronoNanoseconds(
      std::clamp(d, absl::ZeroDuration(), absl::Hours(24 * 365))));
}

// StrandPoster: posts onto the connection's strand until closed. The strand
// reference is dropped at Close(), since a strand must not outlive its
// io_context while an Exchange may outlive the server.
class Poster final : public StrandPoster,
                     public std::enable_shared_from_this<Poster> {
 public:
  explicit Poster(Strand strand) : strand_(std::move(strand)) {}

  void Post(absl::AnyInvocable<void() &&> fn) override {
    absl::MutexLock lock(&mu_);
    if (!strand_.has_value()) return;  // `fn` is destroyed unrun
    asio::post(*strand_,
               [self = shared_from_this(), fn = std::move(fn)]() mutable {
                 if (self->closed()) return;
                 std::move(fn)();
               });
  }

  void Close() {
    absl::MutexLock lock(&mu_);
    strand_.reset();
  }

  bool closed() const {
    absl::MutexLock lock(&mu_);
    return !strand_.has_value();
  }

 private:
  mutable absl::Mutex mu_;
  std::optional<Strand> strand_ ABSL_GUARDED_BY(mu_);
};

// Follows HTTP/2 frame boundaries in the bytes read, so the header timeout
// can tell a header block (or any frame) left incomplete apart from a
// connection that is between frames (PING and SETTINGS keep it idle, not
// half-way through a request).
class H2FrameTracker {
 public:
  void Consume(absl::string_view bytes) {
    size_t i = 0;
    while (i < bytes.size()) {
      size_t left = bytes.size() - i;
      if (preface_left_ > 0) {
        size_t n = std::min(preface_left_, left);
        preface_left_ -= n;
        i += n;
      } else if (payload_left_ > 0) {
        size_t n = std::min(payload_left_, left);
        payload_left_ -= n;
        i += n;
      } else {
        header_[header_len_++] = static_cast<uint8_t>(bytes[i++]);
        if (header_len_ < sizeof(header_)) continue;
        header_len_ = 0;
        payload_left_ =
            (size_t{header_[0]} << 16) | (size_t{header_[1]} << 8) | header_[2];
        uint8_t type = header_[3];
        bool end_headers = (header_[4] & 0x4) != 0;
        // HEADERS (1), PUSH_PROMISE (5) and CONTINUATION (9).
        if (type == 1 || type == 5 || type == 9) in_block_ = !end_headers;
      }
    }
  }
  // Inside a frame, or inside a header block (between frames).
  bool partial() const {
    return preface_left_ > 0 || payload_left_ > 0 || header_len_ > 0 ||
           in_block_;
  }

 private:
  size_t preface_left_ = kHttp2Preface.size();
  size_t payload_left_ = 0;
  uint8_t header_[9] = {};
  uint8_t header_len_ = 0;
  bool in_block_ = false;
};

class ServerImpl;

// One accepted connection. All methods but the constructor and poster() run
// on strand_.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(ServerImpl* server, asio::io_context& io, tcp::socket socket);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  const Strand& strand() const { return strand_; }
  Poster& poster() { return *poster_; }

  void Start();
  // Server shutdown: the session's graceful Shutdown, then close once idle.
  void BeginShutdown();
  // Closes at once: exchanges get OnCancel.
  void Abort() { Close(); }

 private:
  enum class State : uint8_t {
    kHandshake,  // TLS handshake
    kDetect,     // plaintext: reading until the protocol is known
    kOpen,       // the session runs
    kDraining,   // FIN sent, dropping the peer's last bytes
    kClosed,
  };
  // What a blocked read or write waits for.
  enum class Need : uint8_t { kNone, kRead, kWrite };
  enum class Io : uint8_t { kOk, kWantRead, kWantWrite, kEof, kError };

  void Drive();
  void PostDrive();
  void Handshake();
  // False when the connection closed.
  bool ReadOnce();
  bool Flush();
  bool CanRead() const;
  bool ShouldCloseNow() const;
  void Detect(absl::string_view bytes);
  void StartSession(bool http2);
  void FeedSession(absl::string_view bytes);
  void GracefulClose();
  void Drain();
  void Close();
  void ArmWaits();
  void OnWaitDone(Need direction);
  void UpdateTimer();
  void OnTimer(uint64_t generation);
  // HTTP/2 keepalive PINGs (ServerOptions::keepalive_interval): only while
  // an exchange is open (an idle connection has the idle timeout, which a
  // PING's answer must not keep restarting) and while we read (a client
  // whose answer waits behind output it does not take is not silent).
  bool KeepaliveOn() const {
    return h2_frames_ != nullptr &&
           options_.keepalive_interval > absl::ZeroDuration() &&
           !session_->Idle() && session_->WantsRead();
  }
  // One non-blocking read (`read`) or write, through TLS when there is.
  Io Transfer(bool read, char* data, size_t size, size_t* n);
  Io SslResult(int rc);
  static Need NeedOf(Io blocked) {
    return blocked == Io::kWantWrite ? Need::kWrite : Need::kRead;
  }

  ServerImpl* const server_;
  const ServerOptions& options_;
  Strand strand_;
  tcp::socket socket_;
  asio::steady_timer timer_;
  const std::shared_ptr<Poster> poster_;
  SslPtr ssl_;
  std::unique_ptr<ConnectionSession> session_;
  std::string peer_;  // until the session takes it
  // Output taken from the session and not yet written (out_[out_off_..]).
  std::string out_;
  size_t out_off_ = 0;
  // Plaintext bytes read while they were still a prefix of the preface.
  std::string detect_;
  std::unique_ptr<H2FrameTracker> h2_frames_;
  Clock::time_point deadline_;  // handshake or linger deadline
  Clock::time_point last_activity_;
  Clock::time_point last_read_;  // bytes arrived (keepalive)
  Clock::time_point ping_sent_;  // the keepalive PING awaiting any byte
  Clock::time_point header_since_;
  Clock::time_point timer_deadline_;
  uint64_t timer_generation_ = 0;
  uint64_t exchanges_started_ = 0;
  State state_;
  Need read_need_ = Need::kNone;
  Need write_need_ = Need::kNone;
  bool read_wait_armed_ = false;
  bool write_wait_armed_ = false;
  bool timer_armed_ = false;
  bool drive_posted_ = false;
  // Bytes of a request arrived while no exchange was open (header timeout).
  bool header_pending_ = false;
  bool close_when_idle_ = false;
  bool close_after_flush_ = false;
  bool ping_outstanding_ = false;
};

class ServerImpl final : public HttpServer {
 public:
  explicit ServerImpl(ServerOptions options)
      : options_(std::move(options)),
        io_(std::max(options_.io_threads, 1)),
        work_(asio::make_work_guard(io_)),
        accept_strand_(asio::make_strand(io_)) {}

  ~ServerImpl() override {
    Shutdown(absl::ZeroDuration());
    if (options_.tls != nullptr) SSL_CTX_free(options_.tls);
  }

  // Adds a listening socket; before StartThreads only.
  absl::Status Listen(UniqueFd fd) {
    ErrorCode ec;
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len);
    auto listener = std::make_unique<Listener>(accept_strand_);
    listener->acceptor.assign(
        addr.ss_family == AF_INET6 ? tcp::v6() : tcp::v4(), fd.get(), ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("cannot listen: ", ec.message()));
    }
    fd.release();
    ports_.push_back(LocalPort(listener->acceptor.native_handle()));
    listeners_.push_back(std::move(listener));
    return absl::OkStatus();
  }

  void StartThreads() {
    // OpenSSL writes with write(2): a peer gone would raise SIGPIPE. The I/O
    // threads inherit the blocked signal and get EPIPE instead.
    ScopedSigpipeBlock block_sigpipe;
    for (const std::unique_ptr<Listener>& l : listeners_) {
      asio::post(accept_strand_, [this, l = l.get()] { Accept(l); });
    }
    threads_.reserve(options_.io_threads);
    for (int i = 0; i < options_.io_threads; ++i) {
      threads_.emplace_back([this] { io_.run(); });
    }
  }

  int port() const override { return ports_.front(); }
  std::vector<int> ports() const override { return ports_; }
  size_t connections() const override {
    return open_.load(std::memory_order_relaxed);
  }
  void Shutdown(absl::Duration grace) override;

  const ServerOptions& options() const { return options_; }
  // Called by a connection on its strand when it closes. The caller keeps
  // a reference: the registry's is dropped here.
  void Unregister(Connection* connection) {
    std::shared_ptr<Connection> dropped;
    absl::MutexLock lock(&mu_);
    auto it = connections_.find(connection);
    if (it == connections_.end()) return;
    dropped = std::move(it->second);
    connections_.erase(it);
    open_.fetch_sub(1, std::memory_order_relaxed);
  }

 private:
  // One listening socket; used on the accept strand only.
  struct Listener {
    explicit Listener(const Strand& strand) : acceptor(strand), retry(strand) {}
    tcp::acceptor acceptor;
    asio::steady_timer retry;
  };

  // On the accept strand.
  void Accept(Listener* l) {
    l->acceptor.async_accept(
        io_, asio::bind_executor(accept_strand_,
                                 [this, l](const ErrorCode& ec, auto s) {
                                   OnAccept(l, ec, tcp::socket(std::move(s)));
                                 }));
  }

  void OnAccept(Listener* l, const ErrorCode& ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !l->acceptor.is_open()) {
      return;
    }
    if (ec) {
      // Out of descriptors or memory: try again shortly instead of spinning.
      accept_errors_.fetch_add(1, std::memory_order_relaxed);
      l->retry.expires_after(kAcceptRetryDelay);
      l->retry.async_wait(
          asio::bind_executor(accept_strand_, [this, l](const ErrorCode& ec) {
            if (!ec && l->acceptor.is_open()) Accept(l);
          }));
      return;
    }
    std::shared_ptr<Connection> connection;
    {
      absl::MutexLock lock(&mu_);
      if (connections_.size() >= options_.max_connections) {
        // Counted; the peer sees the connection closed at once.
        rejected_.fetch_add(1, std::memory_order_relaxed);
      } else {
        connection = std::make_shared<Connection>(this, io_, std::move(socket));
        connections_.emplace(connection.get(), connection);
        open_.fetch_add(1, std::memory_order_relaxed);
      }
    }
    if (connection != nullptr) {
      asio::post(connection->strand(), [connection] { connection->Start(); });
    } else {
      ErrorCode ignored;
      socket.close(ignored);
    }
    Accept(l);
  }

  std::vector<std::shared_ptr<Connection>> Snapshot() {
    std::vector<std::shared_ptr<Connection>> out;
    absl::MutexLock lock(&mu_);
    out.reserve(connections_.size());
    for (const auto& entry : connections_) out.push_back(entry.second);
    return out;
  }

  // Waits until every connection has unregistered, or `timeout`.
  bool AwaitNoConnections(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto empty = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return connections_.empty();
    };
    return mu_.AwaitWithTimeout(absl::Condition(&empty), timeout);
  }

  ServerOptions options_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  Strand accept_strand_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<int> ports_;
  std::vector<std::thread> threads_;
  std::atomic<size_t> open_{0};
  std::atomic<uint64_t> rejected_{0};
  std::atomic<uint64_t> accept_errors_{0};

  absl::Mutex mu_;
  // Holds every open connection: while an exchange is being answered no
  // wait may be pending, so nothing else keeps the connection alive.
  std::unordered_map<Connection*, std::shared_ptr<Connection>> connections_
      ABSL_GUARDED_BY(mu_);

  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

void ServerImpl::Shutdown(absl::Duration grace) {
  absl::MutexLock shutdown_lock(&shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  if (threads_.empty()) return;  // never started

  // Stop accepting: the acceptor belongs to its strand.
  absl::Notification closed;
  asio::post(accept_strand_, [this, &closed] {
    for (const std::unique_ptr<Listener>& l : listeners_) {
      ErrorCode ignored;
      l->acceptor.close(ignored);
      l->retry.cancel();
    }
    closed.Notify();
  });
  closed.WaitForNotification();

  for (const std::shared_ptr<Connection>& c : Snapshot()) {
    asio::post(c->strand(), [c] { c->BeginShutdown(); });
  }
  if (!AwaitNoConnections(grace)) {
    for (const std::shared_ptr<Connection>& c : Snapshot()) {
      asio::post(c->strand(), [c] { c->Abort(); });
    }
    if (!AwaitNoConnections(kAbortWait)) {
      // An I/O thread is stuck in a handler: at least keep Exchanges from
      // posting into an io_context about to go away.
      for (const std::shared_ptr<Connection>& c : Snapshot()) {
        c->poster().Close();
      }
    }
  }
  work_.reset();
  io_.stop();
  for (std::thread& t : threads_) t.join();
  // Connections still referenced by pending handlers are destroyed with io_.
}

// ---- Connection ----

Connection::Connection(ServerImpl* server, asio::io_context& io,
                       tcp::socket socket)
    : server_(server),
      options_(server->options()),
      strand_(asio::make_strand(io)),
      socket_(std::move(socket)),
      timer_(strand_),
      poster_(std::make_shared<Poster>(strand_)),
      state_(options_.tls != nullptr ? State::kHandshake : State::kDetect) {}

Connection::~Connection() {
  // Only when the io_context went away with this connection still open.
  poster_->Close();
  if (session_ != nullptr) session_->Abort();
}

void Connection::Start() {
  ErrorCode ec;
  socket_.non_blocking(true, ec);
  if (!ec) socket_.set_option(tcp::no_delay(true), ec);
  if (ec) {
    Close();
    return;
  }
  if (options_.keepalive_interval > absl::ZeroDuration()) {
    EnableTcpKeepalive(socket_.native_handle(), options_.keepalive_interval,
                       options_.keepalive_timeout);
  }
  peer_ = PeerAddress(socket_.native_handle());
  if (options_.tls != nullptr) {
    ssl_.reset(SSL_new(options_.tls));
    if (ssl_ == nullptr ||
        SSL_set_fd(ssl_.get(), socket_.native_handle()) != 1) {
      DrainOpenSslErrors();
      Close();
      return;
    }
    SSL_set_mode(ssl_.get(), SSL_MODE_RELEASE_BUFFERS |
                                 SSL_MODE_ENABLE_PARTIAL_WRITE |
                                 SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_set_accept_state(ssl_.get());
  }
  last_activity_ = Clock::now();
  deadline_ = last_activity_ + ToChrono(options_.handshake_timeout);
  Drive();
}

void Connection::BeginShutdown() {
  switch (state_) {
    case State::kHandshake:
    case State::kDetect:
      Close();
      return;
    case State::kOpen:
      if (!close_when_idle_) {
        close_when_idle_ = true;
        session_->Shutdown();
      }
      Drive();
      return;
    case State::kDraining:
    case State::kClosed:
      return;
  }
}

void Connection::PostDrive() {
  if (drive_posted_) return;
  drive_posted_ = true;
  asio::post(strand_, [self = shared_from_this()] {
    self->drive_posted_ = false;
    self->Drive();
  });
}

void Connection::Drive() {
  if (state_ == State::kHandshake && read_need_ == Need::kNone) Handshake();
  if (state_ == State::kDraining) {
    Drain();
    return;
  }
  if (state_ == State::kClosed) return;
  for (int reads = 0; state_ == State::kDetect || state_ == State::kOpen;
       ++reads) {
    if (!Flush()) return;
    if (ShouldCloseNow()) {
      GracefulClose();
      return;
    }
    if (!CanRead()) break;
    if (reads == kReadsPerTurn) {  // let other connections run
      PostDrive();
      break;
    }
    if (!ReadOnce()) return;
  }
  ArmWaits();
  UpdateTimer();
}

void Connection::Handshake() {
  ERR_clear_error();
  int rc = SSL_do_handshake(ssl_.get());
  if (rc != 1) {
    Io io = SslResult(rc);
    if (io == Io::kWantRead || io == Io::kWantWrite) {
      read_need_ = NeedOf(io);
    } else {
      Close();  // TLS 1.2 client, garbage, reset
    }
    return;
  }
  const unsigned char* alpn = nullptr;
  unsigned int alpn_len = 0;
  SSL_get0_alpn_selected(ssl_.get(), &alpn, &alpn_len);
  StartSession(
      absl::string_view(reinterpret_cast<const char*>(alpn), alpn_len) == "h2");
}

void Connection::StartSession(bool http2) {
  SessionOptions options;
  const ExchangeHandler* handler = &options_.handler;
  // Counts exchanges for the header timeout, then hands over.
  options.handler = [this, handler](std::shared_ptr<Exchange> exchange) {
    ++exchanges_started_;
    return (*handler)(std::move(exchange));
  };
  options.poster = poster_;
  options.output_ready = [this] { PostDrive(); };
  options.peer = std::move(peer_);  // only the session needs it
  options.secure = ssl_ != nullptr;
  options.limits = options_.limits;
  if (http2) {
    session_ = NewHttp2Session(std::move(options));
    h2_frames_ = std::make_unique<H2FrameTracker>();
  } else {
    session_ = NewHttp1Session(std::move(options));
  }
  state_ = State::kOpen;
  last_activity_ = Clock::now();
  last_read_ = last_activity_;
}

bool Connection::CanRead() const {
  if (read_need_ != Need::kNone || close_after_flush_) return false;
  if (state_ == State::kDetect) return true;
  return state_ == State::kOpen && session_->WantsRead() &&
         !session_->WantsClose();
}

bool Connection::ShouldCloseNow() const {
  if (state_ != State::kOpen || out_off_ < out_.size()) return false;
  return close_after_flush_ || session_->WantsClose() ||
         (close_when_idle_ && session_->Idle());
}

bool Connection::ReadOnce() {
  char* buffer = ThreadReadBuffer();
  size_t n = 0;
  Io io = Transfer(/*read=*/true, buffer, kReadBufferSize, &n);
  if (io == Io::kEof || io == Io::kError) {
    Close();
    return false;
  }
  if (io != Io::kOk) {
    read_need_ = NeedOf(io);
    return true;
  }
  last_activity_ = Clock::now();
  last_read_ = last_activity_;
  ping_outstanding_ = false;  // any byte is a sign of life
  absl::string_view bytes(buffer, n);
  if (state_ == State::kDetect) {
    Detect(bytes);
  } else {
    FeedSession(bytes);
  }
  return state_ != State::kClosed;
}

void Connection::Detect(absl::string_view bytes) {
  if (!detect_.empty()) {
    detect_.append(bytes.data(), bytes.size());
    bytes = detect_;
  }
  size_t n = std::min(bytes.size(), kHttp2Preface.size());
  bool http2 = bytes.substr(0, n) == kHttp2Preface.substr(0, n);
  if (http2 && n < kHttp2Preface.size()) {
    // Still a prefix of the preface: wait for more.
    if (detect_.empty()) detect_.assign(bytes.data(), bytes.size());
    return;
  }
  StartSession(http2);
  FeedSession(bytes);
  std::string().swap(detect_);
}

void Connection::FeedSession(absl::string_view bytes) {
  bool was_idle = session_->Idle();
  uint64_t started = exchanges_started_;
  if (h2_frames_ != nullptr) h2_frames_->Consume(bytes);
  absl::Status status = session_->Feed(bytes);
  // The session queued what the peer should be told; close once written.
  if (!status.ok()) close_after_flush_ = true;
  if (exchanges_started_ != started || !session_->Idle()) {
    header_pending_ = false;
  } else if (was_idle) {
    bool partial = h2_frames_ == nullptr || h2_frames_->partial();
    if (!partial) {
      header_pending_ = false;
    } else if (!header_pending_) {
      header_pending_ = true;
      header_since_ = last_activity_;
    }
  }
}

bool Connection::Flush() {
  if (session_ == nullptr) return true;  // protocol not known yet
  while (true) {
    if (out_off_ == out_.size()) {
      out_.clear();
      out_off_ = 0;
      session_->TakeOutput(&out_);
      if (out_.empty()) {
        // Nothing to send: give the memory back while idle.
        std::string().swap(out_);
        return true;
      }
    }
    if (write_need_ != Need::kNone) return true;
    size_t n = 0;
    Io io = Transfer(/*read=*/false, out_.data() + out_off_,
                     out_.size() - out_off_, &n);
    if (io == Io::kEof || io == Io::kError) {
      Close();
      return false;
    }
    if (io != Io::kOk) {
      write_need_ = NeedOf(io);
      return true;
    }
    out_off_ += n;
  }
}

void Connection::GracefulClose() {
  poster_->Close();
  session_->Abort();
  session_.reset();
  if (ssl_ != nullptr) {
    ERR_clear_error();
    SSL_shutdown(ssl_.get());  // close_notify, if the socket takes it now
    ERR_clear_error();
    ssl_.reset();
  }
  ErrorCode ignored;
  socket_.shutdown(tcp::socket::shutdown_send, ignored);
  state_ = State::kDraining;
  read_need_ = Need::kNone;
  write_need_ = Need::kNone;
  std::string().swap(out_);
  out_off_ = 0;
  deadline_ = Clock::now() + kLingerTime;
  Drain();
}

void Connection::Drain() {
  char* buffer = ThreadReadBuffer();
  for (int reads = 0; read_need_ == Need::kNone; ++reads) {
    if (reads == kReadsPerTurn) {
      PostDrive();
      return;
    }
    size_t n = 0;
    switch (Transfer(/*read=*/true, buffer, kReadBufferSize, &n)) {
      case Io::kOk:
        break;
      case Io::kWantRead:
      case Io::kWantWrite:
        read_need_ = Need::kRead;
        break;
      case Io::kEof:
      case Io::kError:
        Close();
        return;
    }
  }
  ArmWaits();
  UpdateTimer();
}

void Connection::Close() {
  if (state_ == State::kClosed) return;
  std::shared_ptr<Connection> self = shared_from_this();  // past Unregister
  state_ = State::kClosed;
  poster_->Close();
  if (session_ != nullptr) {
    session_->Abort();
    session_.reset();
  }
  ssl_.reset();
  timer_.cancel();
  ErrorCode ignored;
  socket_.close(ignored);  // completes the waits with operation_aborted
  std::string().swap(out_);
  std::string().swap(detect_);
  h2_frames_.reset();
  server_->Unregister(this);
}

void Connection::ArmWaits() {
  bool want_read = read_need_ == Need::kRead || write_need_ == Need::kRead;
  bool want_write = read_need_ == Need::kWrite || write_need_ == Need::kWrite;
  if (want_read && !read_wait_armed_) {
    read_wait_armed_ = true;
    socket_.async_wait(
        tcp::socket::wait_read,
        asio::bind_executor(strand_, [self = shared_from_this()](ErrorCode) {
          self->read_wait_armed_ = false;
          self->OnWaitDone(Need::kRead);
        }));
  }
  if (want_write && !write_wait_armed_) {
    write_wait_armed_ = true;
    socket_.async_wait(
        tcp::socket::wait_write,
        asio::bind_executor(strand_, [self = shared_from_this()](ErrorCode) {
          self->write_wait_armed_ = false;
          self->OnWaitDone(Need::kWrite);
        }));
  }
}

void Connection::OnWaitDone(Need direction) {
  if (state_ == State::kClosed) return;
  // An error (other than our own close) shows up in the retried read/write.
  if (read_need_ == direction) read_need_ = Need::kNone;
  if (write_need_ == direction) write_need_ = Need::kNone;
  Drive();
}

void Connection::UpdateTimer() {
  Clock::time_point want = Clock::time_point::max();
  switch (state_) {
    case State::kHandshake:
    case State::kDetect:
    case State::kDraining:
      want = deadline_;
      break;
    case State::kOpen:
      if (KeepaliveOn()) {
        want = ping_outstanding_
                   ? ping_sent_ + ToChrono(options_.keepalive_timeout)
                   : last_read_ + ToChrono(options_.keepalive_interval);
      } else {
        ping_outstanding_ = false;  // a PING from before is not enforced
      }
      if (!session_->Idle()) {
        // An open exchange is not idle; the idle time starts when it ends.
        last_activity_ = Clock::now();
        break;
      }
      if (session_->HoldsIdleMemory()) {
        want = std::min(
            want, last_activity_ + ToChrono(options_.idle_memory_release));
      }
      if (!close_when_idle_) {
        want = std::min(want, last_activity_ + ToChrono(options_.idle_timeout));
      }
      if (header_pending_) {
        want =
            std::min(want, header_since_ + ToChrono(options_.header_timeout));
      }
      break;
    case State::kClosed:
      return;
  }
  // A timer due earlier re-checks when it fires; only an earlier deadline
  // re-arms it (a read does not touch the timer).
  if (want == Clock::time_point::max() ||
      (timer_armed_ && timer_deadline_ <= want)) {
    return;
  }
  timer_armed_ = true;
  timer_deadline_ = want;
  uint64_t generation = ++timer_generation_;
  timer_.expires_at(want);
  timer_.async_wait(asio::bind_executor(
      strand_, [self = shared_from_this(), generation](ErrorCode) {
        self->OnTimer(generation);
      }));
}

void Connection::OnTimer(uint64_t generation) {
  if (generation != timer_generation_) return;  // re-armed meanwhile
  timer_armed_ = false;
  Clock::time_point now = Clock::now();
  switch (state_) {
    case State::kHandshake:
    case State::kDetect:
    case State::kDraining:
      if (now >= deadline_) {
        Close();
        return;
      }
      break;
    case State::kOpen:
      if (KeepaliveOn()) {
        if (ping_outstanding_ &&
            now >= ping_sent_ + ToChrono(options_.keepalive_timeout)) {
          Close();  // nothing arrived since the PING: the peer is gone
          return;
        }
        if (!ping_outstanding_ &&
            now >= last_read_ + ToChrono(options_.keepalive_interval)) {
          // Even when the session cannot PING any more (it is ending), the
          // timeout below still closes a silent connection.
          session_->Ping();
          ping_outstanding_ = true;
          ping_sent_ = now;
        }
      }
      if (!session_->Idle()) break;
      if (now >= last_activity_ + ToChrono(options_.idle_memory_release)) {
        session_->ReleaseIdleMemory();
      }
      if (header_pending_ &&
          now >= header_since_ + ToChrono(options_.header_timeout)) {
        Close();  // a request header trickling in: slowloris
        return;
      }
      if (!close_when_idle_ &&
          now >= last_activity_ + ToChrono(options_.idle_timeout)) {
        close_when_idle_ = true;
        session_->Shutdown();
      }
      break;
    case State::kClosed:
      return;
  }
  Drive();
}

Connection::Io Connection::SslResult(int rc) {
  switch (SSL_get_error(ssl_.get(), rc)) {
    case SSL_ERROR_WANT_READ:
      return Io::kWantRead;
    case SSL_ERROR_WANT_WRITE:
      return Io::kWantWrite;
    case SSL_ERROR_ZERO_RETURN:
      return Io::kEof;
    default:
      ERR_clear_error();
      return Io::kError;
  }
}

Connection::Io Connection::Transfer(bool read, char* data, size_t size,
                                    size_t* n) {
  if (ssl_ != nullptr) {
    ERR_clear_error();
    int len = static_cast<int>(std::min<size_t>(size, 1 << 30));
    int rc = read ? SSL_read(ssl_.get(), data, len)
                  : SSL_write(ssl_.get(), data, len);
    if (rc > 0) {
      *n = static_cast<size_t>(rc);
      return Io::kOk;
    }
    return SslResult(rc);
  }
  ErrorCode ec;
  *n = read ? socket_.read_some(asio::buffer(data, size), ec)
            : socket_.write_some(asio::buffer(data, size), ec);
  if (!ec) return Io::kOk;
  if (ec == asio::error::would_block || ec == asio::error::try_again) {
    return read ? Io::kWantRead : Io::kWantWrite;
  }
  return ec == asio::error::eof ? Io::kEof : Io::kError;
}

// `address`, then `more_addresses`.
std::vector<const std::string*> AllAddresses(const ServerOptions& options) {
  std::vector<const std::string*> all = {&options.address};
  for (const std::string& a : options.more_addresses) all.push_back(&a);
  return all;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    ServerOptions options) {
  if (options.io_threads < 1 || options.io_threads > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("io_threads must be 1..1024, not ", options.io_threads));
  }
  if (options.handler == nullptr) {
    return absl::InvalidArgumentError("no handler");
  }
  if (options.max_connections == 0 ||
      options.handshake_timeout <= absl::ZeroDuration() ||
      options.header_timeout <= absl::ZeroDuration() ||
      options.idle_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "max_connections and the timeouts must be positive");
  }
  std::vector<UniqueFd> fds;
  for (const std::string* text : AllAddresses(options)) {
    absl::StatusOr<HostPort> address = ParseHostPort(*text);
    if (!address.ok()) return address.status();
    absl::StatusOr<UniqueFd> fd = ListenTcp(*address, kListenBacklog);
    if (!fd.ok()) return fd.status();
    fds.push_back(*std::move(fd));
  }
  if (options.tls != nullptr) SSL_CTX_up_ref(options.tls);
  auto server = std::make_unique<ServerImpl>(std::move(options));
  for (UniqueFd& fd : fds) {
    absl::Status listening = server->Listen(std::move(fd));
    if (!listening.ok()) return listening;
  }
  server->StartThreads();
  return server;
}

}  // namespace fleetd::server::rpc::http
