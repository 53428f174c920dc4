// The one implementation of every SyncService RPC, behind all front ends.
#ifndef FLEETD_SERVER_CORE_SYNC_CORE_H_
#define FLEETD_SERVER_CORE_SYNC_CORE_H_

#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/clock/clock.h"
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
  // Authenticates, then delivers the batch `decode` produces. Exposed for the
  // stream session; front ends use the RPC methods.
  absl::StatusOr<Applied> Apply(
      const CallContext& context, absl::string_view rpc,
      const std::function<absl::StatusOr<DecodedBatch>(const DeviceIdentity&)>&
          decode);

 private:
  class LedgerWriter;
  class Session;
  struct Inflight;

  absl::StatusOr<Applied> Deliver(std::shared_ptr<const DecodedBatch> batch,
                                  absl::Time deadline);
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
};

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_CORE_SYNC_CORE_H_
