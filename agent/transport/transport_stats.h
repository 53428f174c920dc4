// Lock-free counters behind SyncTransport::stats(). Internal to the
// transports.
#ifndef FLEETD_AGENT_TRANSPORT_TRANSPORT_STATS_H_
#define FLEETD_AGENT_TRANSPORT_TRANSPORT_STATS_H_

#include <atomic>
#include <cstdint>

#include "agent/transport/transport.h"

namespace fleetd::agent {

// Safe for concurrent use.
class StatsRecorder {
 public:
  void AddSent(int64_t bytes) { bytes_sent_.fetch_add(bytes); }
  void AddReceived(int64_t bytes) { bytes_received_.fetch_add(bytes); }
  void AddCall() { calls_.fetch_add(1); }
  void AddFailure() { failures_.fetch_add(1); }

  TransportStats Snapshot() const {
    TransportStats stats;
    stats.bytes_sent = bytes_sent_.load();
    stats.bytes_received = bytes_received_.load();
    stats.calls = calls_.load();
    stats.failures = failures_.load();
    return stats;
  }

 private:
  std::atomic<int64_t> bytes_sent_{0};
  std::atomic<int64_t> bytes_received_{0};
  std::atomic<int64_t> calls_{0};
  std::atomic<int64_t> failures_{0};
};

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_TRANSPORT_TRANSPORT_STATS_H_
