// The one implementation of every SyncService RPC, behind all front ends.
#ifndef FLEETD_SERVER_CORE_SYNC_CORE_H_
#define FLEETD_SERVER_CORE_SYNC_CORE_H_

#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "common/clock/clock.h"
#include "common/concurrency/timer_queue.h"
#include "common/metrics/metrics.h"
#include "server/auth/authenticator.h"
#include "server/core/decode.h"
#include "server/core/handler.h"
#include "server/router/group_commit.h"
#include "server/router/router.h"
#include "server/store/store.h"

namespace fleetd::server {

// Delivery of one batch:
//   authenticate the key → decode and validate the whole batch → if (device,
//   stream, sequence) is in the ledger, acknowledge it as a duplicate →
//   otherwise hand it to the router, which waits until every backend for its
//   kind accepted it → record it in the ledger (coalesced with other batches) →
//   acknowledge.
// A second request for a batch that is still in flight waits for the first and
// shares its outcome, so concurrent retries are written once. Any failure
// before the ledger write leaves the batch unacknowledged; the device retries
// with the same sequence number and backends dedupe what was already written.
//
// The batch RPCs also come without waiting (SyncMetricsAsync, ...): the
// calling thread authenticates, decodes and checks the ledger, then returns;
// the answer comes from the flusher that finished the batch's ledger write.
// The blocking forms are the same path plus a wait. Either way the answer
// waits at most until the call's deadline (or Options::max_wait): when it
// passes, the call answers DEADLINE_EXCEEDED (from the core's deadline
// thread) but the delivery goes on and, once it lands, is recorded, so the
// device's retry is acknowledged as a duplicate. So a stuck backend holds no
// call past its deadline. The destructor waits for deliveries under way.
class SyncCore final : public SyncHandler {
 public:
  struct Options {
    DecodeLimits limits;
    // Longest a call waits for backends when the client set no shorter
    // deadline.
    absl::Duration max_wait = absl::Seconds(30);
    // How often coalesced last-seen times are written to the device registry.
    absl::Duration last_seen_flush_interval = absl::Seconds(5);
    GroupCommitter::Options ledger_commit = {.flush_threads = 2};
  };

  // All pointers must outlive the core. `metrics` may be null.
  SyncCore(Authenticator* auth, Ledger* ledger, DeviceRegistry* devices,
           Router* router, Clock* clock, metrics::Registry* metrics,
           Options options);
  ~SyncCore() override;

  absl::StatusOr<v1::SyncMetricsResponse> SyncMetrics(
      const CallContext& context,
      const v1::SyncMetricsRequest& request) override;
  void SyncMetricsAsync(const CallContext& context,
                        const v1::SyncMetricsRequest& request,
                        Reply<v1::SyncMetricsResponse> done) override;
  // Decodes with DecodeMetricsWire: no message objects per sample.
  void SyncMetricsWireAsync(const CallContext& context,
                            absl::string_view request,
                            Reply<v1::SyncMetricsResponse> done) override;
  void SyncLogsAsync(const CallContext& context,
                     const v1::SyncLogsRequest& request,
                     Reply<v1::SyncLogsResponse> done) override;
  void SyncEventsAsync(const CallContext& context,
                       const v1::SyncEventsRequest& request,
                       Reply<v1::SyncEventsResponse> done) override;
  absl::StatusOr<v1::SyncLogsResponse> SyncLogs(
      const CallContext& context, const v1::SyncLogsRequest& request) override;
  absl::StatusOr<v1::GetSyncConfigResponse> GetSyncConfig(
      const CallContext& context,
      const v1::GetSyncConfigRequest& request) override;
  absl::StatusOr<v1::SyncEventsResponse> SyncEvents(
      const CallContext& context,
      const v1::SyncEventsRequest& request) override;
  absl::StatusOr<v1::UpdateDeviceInfoResponse> UpdateDeviceInfo(
      const CallContext& context,
      const v1::UpdateDeviceInfoRequest& request) override;
  absl::StatusOr<std::unique_ptr<StreamSession>> OpenStream(
      const CallContext& context, StreamSink* sink) override;

  // Writes pending last-seen times and delivery-health reports now (also done
  // periodically and at destruction).
  void FlushLastSeen();

  struct Applied {
    int64_t sequence_number = 0;
    bool duplicate = false;
  };
  using Decoder =
      std::function<absl::StatusOr<DecodedBatch>(const DeviceIdentity&)>;
  using AppliedDone = absl::AnyInvocable<void(absl::StatusOr<Applied>) &&>;
  // Authenticates, then delivers the batch `decode` produces, waiting until
  // it is recorded or the call's deadline passes. Exposed for the stream
  // session; front ends use the RPC methods.
  absl::StatusOr<Applied> Apply(const CallContext& context,
                                absl::string_view rpc, const Decoder& decode);
  // The same without waiting: authenticates, decodes and checks the ledger on
  // the calling thread (`decode` is not used after this returns), then
  // `done` receives the outcome exactly once: before this returns when the
  // call ends early (refused, invalid, a known duplicate), else on a flusher
  // thread, or with DEADLINE_EXCEEDED on the deadline thread when the call's
  // deadline passes first; it must be quick and must not block.
  void ApplyAsync(const CallContext& context, absl::string_view rpc,
                  const Decoder& decode, AppliedDone done);

 private:
  class LedgerWriter;
  class Session;
  struct Inflight;
  struct OnceAnswer;

  void DeliverAsync(std::shared_ptr<const DecodedBatch> batch,
                    AppliedDone done);
  // Ends the delivery `mine` (registered under `key`) with `result`: answers
  // its owner and every call that joined it, then forgets it.
  void Finish(const std::string& key, const std::shared_ptr<Inflight>& mine,
              absl::StatusOr<Applied> result);
  // ApplyAsync for the batch RPCs: `Response` acknowledges the batch.
  template <typename Response>
  void ApplyRpcAsync(const CallContext& context, absl::string_view rpc,
                     const Decoder& decode, Reply<Response> done);
  template <typename Response>
  Response Acknowledgement(const Applied& applied);
  absl::Time MonotonicDeadline(const CallContext& context);
  void Touch(const std::string& device_id);
  // Notes a device's reported delivery health: updates the fleet-wide gauges
  // and, when it changed, queues it for the device registry (`persist`; device
  // info is stored by its own call).
  void NoteHealth(const std::string& device_id, const SyncHealth& health,
                  bool persist);
  void Observe(absl::string_view rpc, const CallContext& context,
               const absl::Status& status, absl::Time start);
  void LastSeenLoop();

  Authenticator* const auth_;
  Ledger* const ledger_;
  DeviceRegistry* const devices_;
  Router* const router_;
  Clock* const clock_;
  metrics::Registry* const metrics_;
  const Options options_;
  std::unique_ptr<LedgerWriter> ledger_writer_;
  std::unique_ptr<GroupCommitter> ledger_commit_;
  // The per-call metrics, resolved once (a registry lookup takes its lock
  // and builds strings); all null without a registry. By DataKind, and for
  // batches by result: applied, duplicate, failed.
  metrics::Family<metrics::Counter>* rpc_requests_ = nullptr;
  metrics::Family<metrics::Histogram>* rpc_duration_ = nullptr;
  metrics::Counter* records_received_[3] = {};
  metrics::Counter* batches_[3][3] = {};

  // Deliveries begun by DeliverAsync and not yet finished.
  absl::Mutex deliveries_mu_;
  int64_t deliveries_ ABSL_GUARDED_BY(deliveries_mu_) = 0;

  absl::Mutex inflight_mu_;
  std::map<std::string, std::shared_ptr<Inflight>> inflight_
      ABSL_GUARDED_BY(inflight_mu_);

  absl::Mutex seen_mu_;
  std::map<std::string, absl::Time> seen_ ABSL_GUARDED_BY(seen_mu_);
  // Latest reported health per device (for the gauges and to write only
  // changes), and reports not yet written.
  std::map<std::string, SyncHealth> health_ ABSL_GUARDED_BY(seen_mu_);
  std::map<std::string, SyncHealthReport> health_pending_
      ABSL_GUARDED_BY(seen_mu_);
  SyncHealth health_sum_ ABSL_GUARDED_BY(seen_mu_);
  int64_t devices_with_set_aside_ ABSL_GUARDED_BY(seen_mu_) = 0;
  Wakeup stop_;
  std::thread last_seen_thread_;
  // Deadlines of calls waiting for their deliveries (ApplyAsync). Last, so
  // that it stops before anything its callbacks use is destroyed.
  TimerQueue deadlines_;
};

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_CORE_SYNC_CORE_H_
