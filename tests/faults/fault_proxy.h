// A fault-injecting proxy for tests: sits on a loopback port between a client
// and its upstream (agent -> server, server -> backend) and misbehaves on
// command, the way load balancers, networks and crashed peers do.
//
// Two modes:
//   - kHttp: HTTP/1.1 aware. Reads each request whole (Content-Length or
//     chunked body, keep-alive), decides per request whether to fault it, and
//     forwards it on one upstream connection per client connection. Answers
//     `Expect: 100-continue` itself and strips it upstream. Faults apply to
//     requests.
//   - kTcp: byte forwarding (gRPC over HTTP/2, PostgreSQL). Faults apply to
//     connections, decided when a connection is accepted.
//
// Faults (see FaultKind) are switched at run time with SetFault(); a change
// closes connections held by the previous stall or blackhole. The proxy never
// sleeps to wait for anything but the slow-drip pacing; connection threads poll
// with a short timeout so Stop(), ResetAll() and partitions act within ~50 ms.
//
// Safe for concurrent use.
#ifndef FLEETD_TESTS_FAULTS_FAULT_PROXY_H_
#define FLEETD_TESTS_FAULTS_FAULT_PROXY_H_

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"

namespace fleetd::testing {

enum class FaultKind {
  kPass,         // forward everything
  kStatus,       // HTTP only: answer `http_status` with a bare body (no
                 // Connect error JSON), without forwarding
  kResetBefore,  // RST the client before anything reaches the upstream
  kResetAfter,   // forward, let the upstream answer, then RST the client
                 // instead of passing the answer on (HTTP: the whole
                 // response; TCP: the first upstream chunk of >= 40 bytes
                 // after the client sent >= `tcp_request_bytes`)
  kStall,        // accept, read nothing, answer nothing
  kBlackhole,    // accept, read and discard everything, answer nothing
  kSlowDrip,     // forward, but pass the answer on at drip_bytes_per_second
  kPartition,    // for `duration`: RST every open connection and every new
                 // one; then back to kPass by itself
};

const char* FaultKindName(FaultKind kind);

struct Fault {
  FaultKind kind = FaultKind::kPass;
  // Which requests (HTTP) or connections (TCP) are hit, counted from the
  // SetFault() call: every `every_nth` one (1: all), or, when `fraction` > 0,
  // each with that probability from a generator seeded with `seed`.
  int every_nth = 1;
  double fraction = 0;
  uint64_t seed = 1;
  // At most this many hits, then pass-through (a burst). 0: unlimited.
  int max_hits = 0;
  int http_status = 500;                           // kStatus
  int64_t drip_bytes_per_second = 2048;            // kSlowDrip
  absl::Duration duration = absl::ZeroDuration();  // kPartition
  int64_t tcp_request_bytes = 200;                 // kResetAfter in TCP mode
};

class FaultProxy {
 public:
  enum class Mode { kTcp, kHttp };
  struct Options {
    Mode mode = Mode::kTcp;
    int upstream_port = 0;  // on 127.0.0.1
    int listen_port = 0;    // 0: a free one
    // Partition deadlines and drip pacing. Not owned.
    Clock* clock = Clock::Real();
  };
  struct Stats {
    int64_t connections = 0;      // accepted
    int64_t requests = 0;         // HTTP requests read whole (HTTP mode)
    int64_t faults = 0;           // requests or connections a fault hit
    int64_t refused = 0;          // connections reset by a partition
    int64_t upstream_errors = 0;  // upstream unreachable or broken
  };

  // Binds 127.0.0.1:listen_port and starts accepting. Unavailable if it
  // cannot bind.
  static absl::StatusOr<std::unique_ptr<FaultProxy>> Start(Options options);
  // Stop()s.
  ~FaultProxy();
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  int port() const { return port_; }
  // "http://127.0.0.1:<port>".
  std::string url() const;

  // Where new upstream connections go (e.g. a backend restarted on another
  // port). Open connections keep theirs.
  void SetUpstreamPort(int port);
  // Replaces the fault. Connections held by a stall or blackhole are closed;
  // kPartition resets every open connection at once.
  void SetFault(const Fault& fault);
  void Pass() { SetFault(Fault()); }
  // RSTs every open connection (clients reconnect).
  void ResetAll();
  // Whether a partition is in force right now.
  bool Partitioned();

  Stats stats();
  // Waits until stats().faults >= n; false after `timeout`.
  bool WaitForFaults(int64_t n, absl::Duration timeout);

  // Stops accepting, closes every connection and joins the threads.
  // Idempotent.
  void Stop();

 private:
  struct Conn;
  explicit FaultProxy(Options options);

  void AcceptLoop();
  void ServeTcp(Conn* conn);
  void ServeHttp(Conn* conn);
  // The fault for the next request or connection, and whether it hits.
  FaultKind Decide(Fault* fault_out);
  // True when the connection must end now (stop, reset, partition, release
  // of a held connection started under `generation`).
  bool Interrupted(uint64_t reset_generation, uint64_t fault_generation);
  int ConnectUpstream();
  void ReapFinished() ABSL_LOCKS_EXCLUDED(mu_);

  const Options options_;
  int listen_fd_ = -1;
  int wake_fds_[2] = {-1, -1};
  int port_ = 0;
  std::thread acceptor_;
  std::atomic<bool> stopping_{false};
  std::atomic<int> upstream_port_{0};
  std::atomic<uint64_t> reset_generation_{0};
  std::atomic<uint64_t> fault_generation_{0};

  absl::Mutex mu_;
  Fault fault_ ABSL_GUARDED_BY(mu_);
  int64_t seen_ ABSL_GUARDED_BY(mu_) = 0;  // since SetFault
  int64_t hits_ ABSL_GUARDED_BY(mu_) = 0;  // since SetFault
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  absl::Time partition_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  Stats stats_ ABSL_GUARDED_BY(mu_);
  std::list<std::unique_ptr<Conn>> conns_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace fleetd::testing

#endif  // FLEETD_TESTS_FAULTS_FAULT_PROXY_H_
