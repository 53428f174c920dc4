// The agent's local control socket: how `fleetd status`, `fleetd sync now` and
// friends talk to a running agent.
//
// A Unix stream socket in the data directory (mode 0600: only the agent's user
// may control it). Protocol: the client sends one request line (a command and
// its arguments, space-separated, ending in '\n'); the server answers with a
// JSON object and closes the connection. Every answer has "ok" (bool) and, when
// false, "error".
#ifndef FLEETD_AGENT_CONTROL_CONTROL_H_
#define FLEETD_AGENT_CONTROL_CONTROL_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace fleetd::agent {

// Handles one request line; returns the JSON answer. Called on the server's
// thread, one request at a time.
using ControlHandler =
    std::function<std::string(const std::vector<std::string>& args)>;

class ControlServer {
 public:
  // Listens on `socket_path` (a stale socket file from a crashed agent is
  // replaced; a live agent already listening there is FAILED_PRECONDITION).
  static absl::StatusOr<std::unique_ptr<ControlServer>> Start(
      const std::string& socket_path, ControlHandler handler);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;
  // Stops accepting, removes the socket file, joins the thread. Idempotent.
  void Stop();

 private:
  ControlServer() = default;
  void Serve();

  std::string path_;
  int fd_ = -1;
  int wake_[2] = {-1, -1};  // self-pipe that ends poll() on Stop()
  ControlHandler handler_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

// Sends one request and returns the answer. UNAVAILABLE (with a message saying
// the agent is not running) when nothing listens on `socket_path`;
// DEADLINE_EXCEEDED on timeout.
absl::StatusOr<std::string> CallControl(const std::string& socket_path,
                                        const std::vector<std::string>& args,
                                        absl::Duration timeout);

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_CONTROL_CONTROL_H_
