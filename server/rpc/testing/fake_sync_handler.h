// A SyncHandler for front-end tests: records every call with its context and
// request, and answers from a script (a per-method status, else a default
// response derived from the request).
#ifndef FLEETD_SERVER_RPC_TESTING_FAKE_SYNC_HANDLER_H_
#define FLEETD_SERVER_RPC_TESTING_FAKE_SYNC_HANDLER_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "google/protobuf/message.h"
#include "server/core/handler.h"

namespace fleetd::server::testing {

// One recorded call.
struct RecordedCall {
  std::string method;  // e.g. "SyncMetrics", "StreamSync"
  CallContext context;
  std::shared_ptr<google::protobuf::Message> request;  // null for StreamSync
};

// Safe for concurrent use.
//
// Default answers:
//   SyncMetrics/SyncLogs/SyncEvents: success, last_sequence_ack = the request's
//     metadata.sequence_number;
//   GetSyncConfig: config.batch_size = 100 + capability.tier, metrics_endpoint
//     = "metrics/" + device_id;
//   UpdateDeviceInfo: success;
//   StreamSync: a session that acks every batch (metrics, logs, events) with
//     its metadata.sequence_number and ignores heartbeats and acks.
class FakeSyncHandler : public SyncHandler {
 public:
  // Every later call of `method` fails with `status` (OK restores the default
  // answer). For "StreamSync" the failure is at OpenStream.
  void SetStatus(const std::string& method, absl::Status status);
  // SyncMetrics answers with this response instead of the default.
  void SetMetricsResponse(v1::SyncMetricsResponse response);
  // GetSyncConfig answers with this response instead of the default.
  void SetConfigResponse(v1::GetSyncConfigResponse response);
  // Stream sessions send `response` as soon as they open.
  void SetStreamGreeting(v1::StreamSyncResponse response);
  // A stream session's OnRequest fails with `status` on its `n`th message
  // (1-based).
  void FailStreamAtMessage(int n, absl::Status status);
  // What Finish returns (after a clean half-close).
  void SetStreamFinishStatus(absl::Status status);

  std::vector<RecordedCall> calls() const;
  // Messages received by stream sessions, in order, over all sessions.
  std::vector<v1::StreamSyncRequest> stream_messages() const;
  int stream_finishes() const;
  int call_count() const;

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

 private:
  class Session;

  // Records the call; returns the scripted status for `method`.
  absl::Status Record(const std::string& method, const CallContext& context,
                      const google::protobuf::Message* request);

  mutable absl::Mutex mu_;
  std::vector<RecordedCall> calls_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, absl::Status> statuses_ ABSL_GUARDED_BY(mu_);
  std::optional<v1::SyncMetricsResponse> metrics_response_ ABSL_GUARDED_BY(mu_);
  std::optional<v1::GetSyncConfigResponse> config_response_
      ABSL_GUARDED_BY(mu_);
  std::optional<v1::StreamSyncResponse> greeting_ ABSL_GUARDED_BY(mu_);
  int fail_stream_at_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status fail_stream_status_ ABSL_GUARDED_BY(mu_);
  absl::Status finish_status_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::StreamSyncRequest> stream_messages_ ABSL_GUARDED_BY(mu_);
  int stream_finishes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace fleetd::server::testing

#endif  // FLEETD_SERVER_RPC_TESTING_FAKE_SYNC_HANDLER_H_
