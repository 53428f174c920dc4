// The agent's sync manager: moves stored records to the server in batches, and
// never loses one.
//
// Each cycle takes the oldest unsynced records of each stream (metrics, logs,
// events) in turn, a batch at a time: the batch gets a sequence number and is
// recorded as pending in the store *before* it is sent, so that after a crash
// or restart the same records go out again under the same number (the server
// recognises a retry and writes it once). Records are marked synced only after
// the server acknowledged their batch.
//
// Failures are classed by common/status/error_class.h (ClassifyError):
//   - retry: anything that is not a definite verdict of our server on the batch
//     (timeouts, resets, UNAVAILABLE, UNKNOWN, INTERNAL, a proxy's bare HTTP
//     status, an unmarked INVALID_ARGUMENT, ...): back off exponentially with
//     jitter (or the server's retry hint, if longer) and retry the same batch
//     under the same number. `max_retries` bounds the attempts of one cycle,
//     never what is kept: the batch waits in the store (the offline queue)
//     until it is acknowledged or the store's quota evicts it (counted). A
//     circuit breaker stops attempts while the server keeps failing and
//     probes again after a cool-down;
//   - credentials (UNAUTHENTICATED / PERMISSION_DENIED): stop sending, log
//     loudly, keep the data, probe again after the maximum backoff;
//   - set aside: our server rejected the batch itself as invalid (the verdict
//     marker): the batch moves into the store's set-aside area (still stored,
//     encrypted and within the quota; `fleetd quarantine` lists, retries or
//     drops it), is counted and logged once, and no longer blocks the queue.
// Fresh data is not starved while a backlog drains: when the backlog of a
// stream exceeds one batch, every other batch is taken from the newest records
// instead of the oldest.
#ifndef FLEETD_AGENT_SYNC_SYNC_MANAGER_H_
#define FLEETD_AGENT_SYNC_SYNC_MANAGER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/storage/storage.h"
#include "agent/transport/transport.h"
#include "common/clock/clock.h"
#include "common/codec/codec.h"
#include "common/metrics/metrics.h"
#include "common/resilience/backoff.h"
#include "common/resilience/circuit_breaker.h"
#include "common/resilience/token_bucket.h"
#include "fleetd/v1/sync.pb.h"

namespace fleetd::agent {

struct SyncOptions {
  std::string device_id;
  std::string org_id;
  absl::Duration interval = absl::Minutes(1);
  int32_t batch_size = 100;
  // In-message compression; skipped for a batch when it saves under 10 %.
  Compression compression = Compression::kGzip;
  BackoffOptions backoff;
  // Attempts of one batch within a cycle before the cycle ends (the batch is
  // kept and retried in the next cycle).
  int32_t max_retries = 5;
  CircuitBreakerOptions breaker = {.failure_threshold = 5,
                                   .open_duration = absl::Seconds(30)};
  // Records per second sent over all streams, at most (token bucket; the burst
  // follows the batch size). 0: unlimited. The server's per-stream limits
  // (SyncConfig max_metrics_per_second, max_logs_per_second) apply as well.
  double max_records_per_second = 0;
  absl::Duration call_timeout = absl::Seconds(30);
  // Most batches one cycle sends per stream; the rest waits for the next cycle.
  int32_t max_batches_per_cycle = 1000;
  // Synced records older than this are removed from the store once per cycle
  // (SyncConfig retention_hours). Zero: kept until the quota needs the room.
  absl::Duration retention = absl::ZeroDuration();
  // Sent with every batch.
  v1::SyncDeviceCapability capability;
  // Send batches over the StreamSync bidi stream (acks, heartbeats, and the
  // server's flush/pause/resume/config_update commands) instead of unary calls.
  // Falls back to unary calls when the transport has no streams (Connect over
  // HTTP/1.1).
  bool use_stream = false;
  // Which settings came from the operator (environment or flags): a server
  // config_update does not override those.
  bool interval_pinned = false;
  bool batch_size_pinned = false;
  bool compression_pinned = false;
  bool max_retries_pinned = false;
  bool backoff_pinned = false;
  bool rate_limits_pinned = false;
  bool retention_pinned = false;
  bool storage_limits_pinned = false;
  uint64_t seed = 0;  // jitter; 0 picks one from the clock
};

// The seed's sync metrics.
struct SyncMetricsSnapshot {
  int64_t metrics_synced = 0;
  int64_t logs_synced = 0;
  int64_t events_synced = 0;
  int64_t bytes_sent = 0;  // request bytes on the wire (after compression)
  int64_t bytes_compressed =
      0;  // uncompressed bytes of the batches that were compressed
  double compression_ratio =
      0;  // uncompressed / compressed, over compressed batches
  int64_t successful_syncs = 0;  // acknowledged batches
  int64_t failed_syncs = 0;      // failed attempts
  int64_t consecutive_failures = 0;
  absl::Duration last_sync_duration = absl::ZeroDuration();
  // Batches (and their records) this manager set aside since it started.
  int64_t set_aside_batches = 0;
  int64_t set_aside_records = 0;
  // Round trip of acknowledged batch exchanges (send to ack), over the last
  // 1024.
  absl::Duration latency_p50 = absl::ZeroDuration();
  absl::Duration latency_p95 = absl::ZeroDuration();
  absl::Duration latency_p99 = absl::ZeroDuration();
  int64_t duplicates_acknowledged = 0;
  std::string
      state;  // "idle", "syncing", "backoff", "circuit_open", "unauthenticated"
  std::string last_error;
  std::optional<absl::Time> last_success;
};

// Thread-safe: Start/Stop/TriggerSync/SyncNow/GetMetrics may be called from any
// thread.
class SyncManager {
 public:
  // All pointers must outlive the manager; `metrics` may be null.
  SyncManager(Storage* storage, SyncTransport* transport, Clock* clock,
              metrics::Registry* metrics, SyncOptions options);
  ~SyncManager();
  SyncManager(const SyncManager&) = delete;
  SyncManager& operator=(const SyncManager&) = delete;

  // Asks the server for this device's configuration (GetSyncConfig) and applies
  // what the operator did not pin. Failure is not fatal: the tier defaults
  // stay.
  absl::Status FetchConfig();

  // Runs cycles in a background thread: one every `interval`, sooner after
  // TriggerSync(), later while backing off.
  void Start();
  // Stops the background thread; a batch in flight finishes or fails first (its
  // records stay unsynced and pending, to be resent after restart). Idempotent.
  void Stop();
  // Makes the background thread start a cycle now.
  void TriggerSync();
  // Runs one cycle on the calling thread (tests, `fleetd sync now`). Returns OK
  // when everything that was stored at the start was acknowledged; the last
  // error when something is still waiting; FAILED_PRECONDITION naming the
  // batches when the server rejected some of them and they were set aside.
  absl::Status SyncNow();

  SyncMetricsSnapshot GetMetrics();
  // The most recent batch outcomes, oldest first (at most 200 lines), for
  // `fleetd logs sync`.
  std::vector<std::string> RecentActivity();
  // Applies a configuration from the server, every field except the settings
  // the operator pinned: interval, batch size, compression, max retries,
  // backoff (initial, max, multiplier), per-stream rate limits, retention of
  // synced data and the store's byte quota.
  void ApplyConfig(const v1::SyncConfig& config);
  SyncOptions options();

 private:
  enum class Outcome { kDone, kMore, kRetryLater, kStopped };
  struct Stream;
  struct Batch;

  void Loop();
  // ApplyConfig's part under mu_; returns the store quota to apply, if any.
  std::optional<int64_t> ApplyConfigLocked(const v1::SyncConfig& config)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // One cycle; `set_aside` counts the batches it set aside.
  absl::Status Cycle(int* set_aside);
  // How long the background loop waits after a cycle that ended with `s`.
  absl::Duration DelayAfter(const absl::Status& s);
  void PublishMetrics();
  // Sends at most one batch of `stream`. kDone: nothing (more) to send.
  Outcome SendOne(Stream& stream, absl::Status* error);
  // The next batch of `stream`, read from the store once: the saved pending
  // batch (resent under its number) or a new one. nullopt: nothing to send.
  absl::StatusOr<std::optional<Batch>> NextBatch(Stream& stream);
  // Sends `batch` once, unary or on the stream.
  absl::Status Transmit(const Stream& stream, Batch& batch);
  template <typename Request>
  absl::Status SendUnary(const Request& request);
  // Moves a batch the server rejected into the store's set-aside area.
  absl::Status SetAside(const Stream& stream, const Batch& batch,
                        const absl::Status& why);
  // Waits for the rate limiters to admit `records`; false when stopping.
  bool AwaitRateLimit(const Stream& stream, int records);
  void RemoveExpiredHistory();
  absl::StatusOr<int64_t> NextSequence(const Stream& stream);
  // Sleeps for `d`, woken early only by Stop() (not by TriggerSync or a flush
  // command, which must not cut a backoff short). False when stopping.
  bool WaitFor(absl::Duration d);
  void RecordFailure(const absl::Status& s);
  void SetState(const std::string& state);
  // StreamSync: opens the stream if needed, sends a heartbeat and handles
  // pending commands. Returns a retryable error (with a hint) while the server
  // asked to pause.
  absl::Status PrepareStream();
  // Sends one batch on the stream and waits for its ack, handling commands
  // meanwhile.
  absl::Status ExchangeOnStream(const v1::StreamSyncRequest& request,
                                int64_t sequence);
  void HandleCommand(const v1::StreamSyncResponse& response);
  void Note(const Stream& stream, const PendingBatch& pending,
            absl::string_view outcome);

  Storage* const storage_;
  SyncTransport* const transport_;
  Clock* const clock_;
  metrics::Registry* const registry_;

  absl::Mutex mu_;
  SyncOptions options_ ABSL_GUARDED_BY(mu_);
  SyncMetricsSnapshot stats_ ABSL_GUARDED_BY(mu_);
  double compressed_in_ ABSL_GUARDED_BY(mu_) = 0;
  double compressed_out_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<std::string> recent_ ABSL_GUARDED_BY(mu_);
  std::deque<absl::Duration> latencies_ ABSL_GUARDED_BY(mu_);
  // The server's per-stream limits (records per second; 0: none).
  double metrics_rate_ ABSL_GUARDED_BY(mu_) = 0;
  double logs_rate_ ABSL_GUARDED_BY(mu_) = 0;

  // Used only by the thread running a cycle (cycles never overlap: cycle_mu_).
  absl::Mutex cycle_mu_;
  ExponentialBackoff backoff_;
  CircuitBreaker breaker_;
  // Operator's limit over all streams, and the server's per-stream limits.
  TokenBucket bucket_;
  TokenBucket metrics_bucket_;
  TokenBucket logs_bucket_;
  bool unauthenticated_ = false;
  std::unique_ptr<SyncStream> stream_;
  bool stream_unsupported_ = false;
  std::optional<absl::Time> paused_until_;
  absl::Time auth_retry_at_;

  // Notified by TriggerSync, the server's flush command and Stop(); wakes the
  // wait between cycles only, and is consumed by the cycle it starts.
  Wakeup wakeup_;
  // Notified only by Stop(); wakes backoff and rate-limit waits.
  Wakeup stop_wakeup_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_SYNC_SYNC_MANAGER_H_
