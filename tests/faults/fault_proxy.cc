#include "tests/faults/fault_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace fleetd::testing {
namespace {

constexpr int kPollMs = 50;

// Closes `fd` with an RST instead of a FIN: the peer sees "connection reset".
void Abort(int fd) {
  if (fd < 0) return;
  linger l{.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  close(fd);
}

void Close(int fd) {
  if (fd >= 0) close(fd);
}

void Tune(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  timeval tv{.tv_sec = 2, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

bool SendAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Appends what `fd` has to `buf`: >0 bytes read, 0 on EOF, -1 on error.
ssize_t RecvInto(int fd, std::string* buf) {
  char chunk[16384];
  for (;;) {
    ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n > 0) buf->append(chunk, static_cast<size_t>(n));
    return n;
  }
}

// Polls `fd` for input for one tick: 1 readable (or hung up), 0 not yet, -1
// error.
int WaitReadable(int fd) {
  pollfd p{.fd = fd, .events = POLLIN | POLLRDHUP};
  int r = poll(&p, 1, kPollMs);
  if (r < 0) return errno == EINTR ? 0 : -1;
  return r > 0 ? 1 : 0;
}

// Where the first HTTP/1.1 message in a buffer ends.
struct Framing {
  bool complete = false;
  bool malformed = false;
  size_t header_end = 0;  // just past "\r\n\r\n"; 0 if the head is incomplete
  size_t length = 0;      // whole message, when complete and !until_close
  bool until_close = false;  // response body ends when the upstream closes
  bool keep_alive = true;
  bool expect_continue = false;
  int status = 0;      // responses
  std::string method;  // requests
};

// Length of a chunked body starting at `pos`, or nullopt while incomplete.
std::optional<size_t> ChunkedEnd(absl::string_view buf, size_t pos,
                                 bool* malformed) {
  for (;;) {
    size_t eol = buf.find("\r\n", pos);
    if (eol == absl::string_view::npos) return std::nullopt;
    absl::string_view size_text = buf.substr(pos, eol - pos);
    size_text = size_text.substr(0, size_text.find(';'));
    size_t size = 0;
    if (!absl::SimpleHexAtoi(absl::StripAsciiWhitespace(size_text), &size)) {
      *malformed = true;
      return std::nullopt;
    }
    pos = eol + 2;
    if (size == 0) {
      if (buf.substr(pos, 2) == "\r\n") return pos + 2;
      size_t end = buf.find("\r\n\r\n", pos);
      if (end == absl::string_view::npos) return std::nullopt;
      return end + 4;
    }
    if (buf.size() < pos + size + 2) return std::nullopt;
    pos += size + 2;
  }
}

Framing Frame(absl::string_view buf, bool response, bool head_request) {
  Framing f;
  size_t end = buf.find("\r\n\r\n");
  if (end == absl::string_view::npos) return f;
  f.header_end = end + 4;
  std::vector<absl::string_view> lines =
      absl::StrSplit(buf.substr(0, end), "\r\n");
  std::vector<absl::string_view> start =
      absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
  if (start.size() < 2) {
    f.malformed = true;
    return f;
  }
  absl::string_view version = response ? start[0] : start.back();
  if (response) {
    if (!absl::SimpleAtoi(start[1], &f.status)) {
      f.malformed = true;
      return f;
    }
  } else {
    f.method = std::string(start[0]);
  }
  f.keep_alive = version != "HTTP/1.0";
  std::optional<size_t> content_length;
  bool chunked = false;
  for (size_t i = 1; i < lines.size(); ++i) {
    size_t colon = lines[i].find(':');
    if (colon == absl::string_view::npos) continue;
    std::string name = absl::AsciiStrToLower(lines[i].substr(0, colon));
    std::string value = absl::AsciiStrToLower(
        absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
    if (name == "content-length") {
      size_t n = 0;
      if (!absl::SimpleAtoi(value, &n)) {
        f.malformed = true;
        return f;
      }
      content_length = n;
    } else if (name == "transfer-encoding") {
      chunked = absl::StrContains(value, "chunked");
    } else if (name == "connection") {
      if (absl::StrContains(value, "close")) f.keep_alive = false;
      if (absl::StrContains(value, "keep-alive")) f.keep_alive = true;
    } else if (name == "expect") {
      f.expect_continue = value == "100-continue";
    }
  }
  bool no_body =
      response && (head_request || (f.status >= 100 && f.status < 200) ||
                   f.status == 204 || f.status == 304);
  if (no_body) {
    f.complete = true;
    f.length = f.header_end;
  } else if (chunked) {
    std::optional<size_t> e = ChunkedEnd(buf, f.header_end, &f.malformed);
    if (e.has_value()) {
      f.complete = true;
      f.length = *e;
    }
  } else if (content_length.has_value()) {
    if (buf.size() >= f.header_end + *content_length) {
      f.complete = true;
      f.length = f.header_end + *content_length;
    }
  } else if (response) {
    f.until_close = true;
    f.keep_alive = false;
  } else {
    f.complete = true;  // a request without a body
    f.length = f.header_end;
  }
  return f;
}

// The request head without its Expect header (the proxy answered it).
std::string WithoutExpect(absl::string_view message, size_t header_end) {
  std::string out;
  out.reserve(message.size());
  for (absl::string_view line :
       absl::StrSplit(message.substr(0, header_end - 2), "\r\n")) {
    if (line.empty()) continue;
    if (absl::StartsWithIgnoreCase(line, "expect:")) continue;
    absl::StrAppend(&out, line, "\r\n");
  }
  absl::StrAppend(&out, "\r\n", message.substr(header_end));
  return out;
}

const char* Reason(int status) {
  switch (status) {
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Error";
  }
}

}  // namespace

const char* FaultKindName(FaultKind kind) {
  switch (kind) {
    case FaultKind::kPass:
      return "pass";
    case FaultKind::kStatus:
      return "status";
    case FaultKind::kResetBefore:
      return "reset_before";
    case FaultKind::kResetAfter:
      return "reset_after";
    case FaultKind::kStall:
      return "stall";
    case FaultKind::kBlackhole:
      return "blackhole";
    case FaultKind::kSlowDrip:
      return "slow_drip";
    case FaultKind::kPartition:
      return "partition";
  }
  return "unknown";
}

struct FaultProxy::Conn {
  int fd = -1;
  std::thread thread;
  std::atomic<bool> done{false};
};

FaultProxy::FaultProxy(Options options) : options_(options) {}

absl::StatusOr<std::unique_ptr<FaultProxy>> FaultProxy::Start(Options options) {
  std::unique_ptr<FaultProxy> p(new FaultProxy(options));
  p->upstream_port_ = options.upstream_port;
  p->listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (p->listen_fd_ < 0) return absl::UnavailableError("socket() failed");
  int one = 1;
  setsockopt(p->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(options.listen_port));
  if (bind(p->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) !=
          0 ||
      listen(p->listen_fd_, 512) != 0) {
    return absl::UnavailableError(absl::StrCat(
        "fault proxy cannot listen on 127.0.0.1:", options.listen_port, ": ",
        strerror(errno)));
  }
  socklen_t len = sizeof(addr);
  getsockname(p->listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  p->port_ = ntohs(addr.sin_port);
  if (pipe2(p->wake_fds_, O_CLOEXEC) != 0) {
    return absl::UnavailableError("pipe2() failed");
  }
  p->acceptor_ = std::thread([raw = p.get()] { raw->AcceptLoop(); });
  return p;
}

FaultProxy::~FaultProxy() {
  Stop();
  Close(listen_fd_);
  Close(wake_fds_[0]);
  Close(wake_fds_[1]);
}

std::string FaultProxy::url() const {
  return absl::StrCat("http://127.0.0.1:", port_);
}

void FaultProxy::SetUpstreamPort(int port) { upstream_port_ = port; }

void FaultProxy::SetFault(const Fault& fault) {
  {
    absl::MutexLock lock(&mu_);
    fault_ = fault;
    seen_ = 0;
    hits_ = 0;
    rng_.seed(fault.seed);
    partition_until_ = fault.kind == FaultKind::kPartition
                           ? options_.clock->MonotonicNow() + fault.duration
                           : absl::InfinitePast();
    if (fault.kind == FaultKind::kPartition) ++stats_.faults;
  }
  ++fault_generation_;
}

void FaultProxy::ResetAll() { ++reset_generation_; }

bool FaultProxy::Partitioned() {
  absl::MutexLock lock(&mu_);
  return options_.clock->MonotonicNow() < partition_until_;
}

FaultProxy::Stats FaultProxy::stats() {
  absl::MutexLock lock(&mu_);
  return stats_;
}

bool FaultProxy::WaitForFaults(int64_t n, absl::Duration timeout) {
  const absl::Time deadline = options_.clock->MonotonicNow() + timeout;
  absl::MutexLock lock(&mu_);
  auto reached = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stats_.faults >= n;
  };
  while (!reached()) {
    if (options_.clock->MonotonicNow() >= deadline) return false;
    mu_.AwaitWithTimeout(absl::Condition(&reached), absl::Milliseconds(20));
  }
  return true;
}

void FaultProxy::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  stopping_ = true;
  char c = 1;
  (void)!write(wake_fds_[1], &c, 1);
  if (acceptor_.joinable()) acceptor_.join();
  std::list<std::unique_ptr<Conn>> conns;
  {
    absl::MutexLock lock(&mu_);
    conns.swap(conns_);
  }
  for (auto& c : conns) {
    if (c->thread.joinable()) c->thread.join();
  }
}

FaultKind FaultProxy::Decide(Fault* fault_out) {
  absl::MutexLock lock(&mu_);
  *fault_out = fault_;
  ++seen_;
  if (fault_.kind == FaultKind::kPass || fault_.kind == FaultKind::kPartition) {
    return FaultKind::kPass;
  }
  bool hit;
  if (fault_.fraction > 0) {
    hit = std::uniform_real_distribution<double>(0, 1)(rng_) < fault_.fraction;
  } else {
    hit = seen_ % std::max(1, fault_.every_nth) == 0;
  }
  if (fault_.max_hits > 0 && hits_ >= fault_.max_hits) hit = false;
  if (!hit) return FaultKind::kPass;
  ++hits_;
  ++stats_.faults;
  return fault_.kind;
}

bool FaultProxy::Interrupted(uint64_t reset_generation,
                             uint64_t fault_generation) {
  if (stopping_ || reset_generation_ != reset_generation) return true;
  if (fault_generation != 0 && fault_generation_ != fault_generation) {
    return true;
  }
  return Partitioned();
}

int FaultProxy::ConnectUpstream() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(upstream_port_.load()));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    absl::MutexLock lock(&mu_);
    ++stats_.upstream_errors;
    return -1;
  }
  Tune(fd);
  return fd;
}

void FaultProxy::ReapFinished() {
  std::list<std::unique_ptr<Conn>> finished;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = conns_.begin(); it != conns_.end();) {
      if ((*it)->done) {
        finished.push_back(std::move(*it));
        it = conns_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& c : finished) c->thread.join();
}

void FaultProxy::AcceptLoop() {
  while (!stopping_) {
    pollfd fds[2] = {{.fd = listen_fd_, .events = POLLIN},
                     {.fd = wake_fds_[0], .events = POLLIN}};
    int r = poll(fds, 2, 200);
    ReapFinished();
    if (r <= 0 || !(fds[0].revents & POLLIN)) continue;
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    Tune(fd);
    auto conn = std::make_unique<Conn>();
    conn->fd = fd;
    Conn* raw = conn.get();
    bool partitioned;
    {
      absl::MutexLock lock(&mu_);
      ++stats_.connections;
      partitioned = options_.clock->MonotonicNow() < partition_until_;
      if (partitioned) ++stats_.refused;
    }
    if (partitioned) {
      Abort(fd);
      continue;
    }
    raw->thread = std::thread([this, raw] {
      if (options_.mode == Mode::kHttp) {
        ServeHttp(raw);
      } else {
        ServeTcp(raw);
      }
      raw->done = true;
    });
    absl::MutexLock lock(&mu_);
    conns_.push_back(std::move(conn));
  }
}

namespace {

// Holds `fd` (reading and discarding if `drain`) until it closes or
// `interrupted` says so, then resets it.
template <typename F>
void Hold(int fd, bool drain, F interrupted) {
  while (!interrupted()) {
    pollfd p{.fd = fd,
             .events = static_cast<short>(POLLRDHUP | (drain ? POLLIN : 0))};
    int r = poll(&p, 1, kPollMs);
    if (r <= 0) continue;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) break;
    if (drain && (p.revents & POLLIN)) {
      std::string sink;
      if (RecvInto(fd, &sink) <= 0) break;
    }
  }
  Abort(fd);
}

}  // namespace

void FaultProxy::ServeTcp(Conn* conn) {
  const uint64_t reset_gen = reset_generation_;
  const int client = conn->fd;
  Fault fault;
  FaultKind kind = Decide(&fault);
  if (kind == FaultKind::kResetBefore) {
    Abort(client);
    return;
  }
  if (kind == FaultKind::kStall || kind == FaultKind::kBlackhole) {
    const uint64_t fault_gen = fault_generation_;
    Hold(client, kind == FaultKind::kBlackhole,
         [&] { return Interrupted(reset_gen, fault_gen); });
    return;
  }
  int up = ConnectUpstream();
  if (up < 0) {
    Abort(client);
    return;
  }
  int64_t client_bytes = 0;
  auto drip = [&](absl::string_view data) {
    size_t step = static_cast<size_t>(
        std::max<int64_t>(1, fault.drip_bytes_per_second * kPollMs / 1000));
    while (!data.empty()) {
      if (Interrupted(reset_gen, 0)) return false;
      size_t n = std::min(step, data.size());
      if (!SendAll(client, data.substr(0, n))) return false;
      data.remove_prefix(n);
      options_.clock->SleepFor(absl::Milliseconds(kPollMs));
    }
    return true;
  };
  for (;;) {
    if (Interrupted(reset_gen, 0)) break;
    pollfd fds[2] = {{.fd = client, .events = POLLIN},
                     {.fd = up, .events = POLLIN}};
    int r = poll(fds, 2, kPollMs);
    if (r < 0 && errno != EINTR) break;
    if (r <= 0) continue;
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      std::string buf;
      if (RecvInto(client, &buf) <= 0) {
        Close(up);
        Close(client);
        return;
      }
      client_bytes += static_cast<int64_t>(buf.size());
      if (!SendAll(up, buf)) break;
    }
    if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      std::string buf;
      if (RecvInto(up, &buf) <= 0) {
        Close(up);
        Close(client);
        return;
      }
      if (kind == FaultKind::kResetAfter &&
          client_bytes >= fault.tcp_request_bytes && buf.size() >= 40) {
        break;  // the answer never reaches the client
      }
      bool sent =
          kind == FaultKind::kSlowDrip ? drip(buf) : SendAll(client, buf);
      if (!sent) break;
    }
  }
  Abort(up);
  Abort(client);
}

void FaultProxy::ServeHttp(Conn* conn) {
  const uint64_t reset_gen = reset_generation_;
  const int client = conn->fd;
  int up = -1;
  std::string in;
  auto finish = [&](bool reset_client) {
    if (up >= 0) Abort(up);
    if (reset_client) {
      Abort(client);
    } else {
      Close(client);
    }
  };
  for (;;) {
    // One request, whole.
    Framing req;
    bool continued = false;
    for (;;) {
      req = Frame(in, /*response=*/false, false);
      if (req.malformed) return finish(true);
      if (req.header_end > 0 && req.expect_continue && !continued) {
        continued = true;
        if (!SendAll(client, "HTTP/1.1 100 Continue\r\n\r\n")) {
          return finish(true);
        }
      }
      if (req.complete) break;
      if (Interrupted(reset_gen, 0)) return finish(true);
      int r = WaitReadable(client);
      if (r < 0) return finish(true);
      if (r == 0) continue;
      ssize_t n = RecvInto(client, &in);
      if (n <= 0) return finish(n < 0);
    }
    std::string request =
        req.expect_continue
            ? WithoutExpect(in.substr(0, req.length), req.header_end)
            : in.substr(0, req.length);
    in.erase(0, req.length);
    {
      absl::MutexLock lock(&mu_);
      ++stats_.requests;
    }
    Fault fault;
    FaultKind kind = Decide(&fault);
    if (Interrupted(reset_gen, 0)) return finish(true);
    switch (kind) {
      case FaultKind::kStatus: {
        std::string body =
            absl::StrCat("<html><body><h1>", fault.http_status, " ",
                         Reason(fault.http_status), "</h1></body></html>\n");
        std::string head = absl::StrCat(
            "HTTP/1.1 ", fault.http_status, " ", Reason(fault.http_status),
            "\r\nContent-Type: text/html\r\nContent-Length: ", body.size(),
            "\r\n\r\n");
        if (!SendAll(client, head + body)) return finish(true);
        continue;
      }
      case FaultKind::kResetBefore:
        return finish(true);
      case FaultKind::kStall:
      case FaultKind::kBlackhole: {
        if (up >= 0) Abort(up);
        const uint64_t fault_gen = fault_generation_;
        Hold(client, kind == FaultKind::kBlackhole,
             [&] { return Interrupted(reset_gen, fault_gen); });
        return;
      }
      default:
        break;
    }
    // Forward. An idle upstream connection the upstream closed meanwhile is
    // replaced before use (never after: that could send a request twice).
    if (up >= 0) {
      pollfd p{.fd = up, .events = POLLIN | POLLRDHUP};
      if (poll(&p, 1, 0) > 0) {
        Close(up);
        up = -1;
      }
    }
    if (up < 0) up = ConnectUpstream();
    if (up < 0 || !SendAll(up, request)) return finish(true);
    std::string out;
    Framing resp;
    for (;;) {
      resp = Frame(out, /*response=*/true, req.method == "HEAD");
      if (resp.malformed) return finish(true);
      if (resp.complete && resp.status >= 100 && resp.status < 200) {
        // An interim answer: pass it on and read the final one.
        if (!SendAll(client, out.substr(0, resp.length))) return finish(true);
        out.erase(0, resp.length);
        continue;
      }
      if (resp.complete) break;
      if (Interrupted(reset_gen, 0)) return finish(true);
      int r = WaitReadable(up);
      if (r < 0) return finish(true);
      if (r == 0) continue;
      ssize_t n = RecvInto(up, &out);
      if (n < 0) return finish(true);
      if (n == 0) {
        if (resp.until_close && resp.header_end > 0) {
          resp.complete = true;
          resp.length = out.size();
          break;
        }
        absl::MutexLock lock(&mu_);
        ++stats_.upstream_errors;
        return finish(true);
      }
    }
    if (kind == FaultKind::kResetAfter) return finish(true);
    absl::string_view answer(out.data(), resp.length);
    bool sent;
    if (kind == FaultKind::kSlowDrip) {
      sent = true;
      size_t step = static_cast<size_t>(
          std::max<int64_t>(1, fault.drip_bytes_per_second * kPollMs / 1000));
      while (sent && !answer.empty()) {
        if (Interrupted(reset_gen, 0)) return finish(true);
        size_t n = std::min(step, answer.size());
        sent = SendAll(client, answer.substr(0, n));
        answer.remove_prefix(n);
        if (!answer.empty())
          options_.clock->SleepFor(absl::Milliseconds(kPollMs));
      }
    } else {
      sent = SendAll(client, answer);
    }
    if (!sent) return finish(true);
    if (!resp.keep_alive || !req.keep_alive) return finish(false);
  }
}

}  // namespace fleetd::testing
