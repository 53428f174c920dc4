#include "agent/control/control.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "glog/logging.h"

namespace fleetd::agent {
namespace {

constexpr size_t kMaxRequest = 4096;

absl::Status Errno(absl::string_view what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno)));
}

bool MakeAddress(const std::string& path, sockaddr_un* addr) {
  if (path.size() >= sizeof(addr->sun_path)) return false;
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  std::memcpy(addr->sun_path, path.c_str(), path.size() + 1);
  return true;
}

// Waits for `fd` to become ready for `events` until `deadline`. False on
// timeout.
bool WaitReady(int fd, short events, absl::Time deadline) {
  while (true) {
    int ms =
        static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (ms <= 0) return false;
    pollfd p{fd, events, 0};
    int n = poll(&p, 1, ms);
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ControlServer>> ControlServer::Start(
    const std::string& socket_path, ControlHandler handler) {
  sockaddr_un addr;
  if (!MakeAddress(socket_path, &addr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("control socket path too long: ", socket_path));
  }
  // Is an agent already there? A stale file from a crash refuses connections.
  if (CallControl(socket_path, {"ping"}, absl::Seconds(1)).ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("another agent is already running (", socket_path, ")"));
  }
  unlink(socket_path.c_str());
  std::unique_ptr<ControlServer> server(new ControlServer());
  server->path_ = socket_path;
  server->handler_ = std::move(handler);
  server->fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (server->fd_ < 0) return Errno("socket");
  if (bind(server->fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) !=
      0) {
    return Errno(absl::StrCat("bind ", socket_path));
  }
  chmod(socket_path.c_str(), 0600);
  if (listen(server->fd_, 16) != 0) return Errno("listen");
  if (pipe2(server->wake_, O_CLOEXEC) != 0) return Errno("pipe");
  server->thread_ = std::thread([s = server.get()] { s->Serve(); });
  return server;
}

ControlServer::~ControlServer() { Stop(); }

void ControlServer::Stop() {
  if (stopping_.exchange(true)) return;
  if (wake_[1] >= 0) {
    char c = 'x';
    (void)!write(wake_[1], &c, 1);
  }
  if (thread_.joinable()) thread_.join();
  if (fd_ >= 0) close(fd_);
  for (int& w : wake_) {
    if (w >= 0) close(w);
    w = -1;
  }
  if (!path_.empty()) unlink(path_.c_str());
}

void ControlServer::Serve() {
  while (!stopping_) {
    pollfd fds[2] = {{fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      LOG(ERROR) << "control socket poll failed: " << std::strerror(errno);
      return;
    }
    if (fds[1].revents != 0 || stopping_) return;
    int conn = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;
    // Read one line, bounded in size and time so a stuck client cannot block
    // the agent.
    std::string request;
    absl::Time deadline = absl::Now() + absl::Seconds(5);
    char buf[512];
    while (request.find('\n') == std::string::npos &&
           request.size() < kMaxRequest && WaitReady(conn, POLLIN, deadline)) {
      ssize_t n = read(conn, buf, sizeof(buf));
      if (n <= 0) break;
      request.append(buf, static_cast<size_t>(n));
    }
    std::string line = request.substr(0, request.find('\n'));
    std::vector<std::string> args =
        absl::StrSplit(line, ' ', absl::SkipWhitespace());
    std::string answer = args.empty()
                             ? R"({"ok":false,"error":"empty request"})"
                             : handler_(args);
    answer += "\n";
    size_t off = 0;
    while (off < answer.size() && WaitReady(conn, POLLOUT, deadline)) {
      ssize_t n = write(conn, answer.data() + off, answer.size() - off);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    close(conn);
  }
}

absl::StatusOr<std::string> CallControl(const std::string& socket_path,
                                        const std::vector<std::string>& args,
                                        absl::Duration timeout) {
  sockaddr_un addr;
  if (!MakeAddress(socket_path, &addr)) {
    return absl::InvalidArgumentError("control socket path too long");
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket");
  auto closer = [fd] { close(fd); };
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    closer();
    return absl::UnavailableError(
        absl::StrCat("the agent is not running (no control socket at ",
                     socket_path, ": ", std::strerror(err), ")"));
  }
  absl::Time deadline = absl::Now() + timeout;
  std::string request = absl::StrJoin(args, " ") + "\n";
  size_t off = 0;
  while (off < request.size()) {
    if (!WaitReady(fd, POLLOUT, deadline)) {
      closer();
      return absl::DeadlineExceededError("timed out talking to the agent");
    }
    ssize_t n = write(fd, request.data() + off, request.size() - off);
    if (n <= 0) {
      closer();
      return Errno("write to agent");
    }
    off += static_cast<size_t>(n);
  }
  std::string answer;
  char buf[4096];
  while (true) {
    if (!WaitReady(fd, POLLIN, deadline)) {
      closer();
      return absl::DeadlineExceededError(
          "timed out waiting for the agent's answer");
    }
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      closer();
      return Errno("read from agent");
    }
    if (n == 0) break;
    answer.append(buf, static_cast<size_t>(n));
  }
  closer();
  return answer;
}

}  // namespace fleetd::agent
