#include "server/rpc/testing/fake_sync_handler.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace fleetd::server::testing {

class FakeSyncHandler::Session : public StreamSession {
 public:
  Session(FakeSyncHandler* owner, StreamSink* sink)
      : owner_(owner), sink_(sink) {}

  absl::Status OnRequest(const v1::StreamSyncRequest& request) override {
    int fail_at;
    absl::Status fail_status;
    {
      absl::MutexLock lock(&owner_->mu_);
      owner_->stream_messages_.push_back(request);
      fail_at = owner_->fail_stream_at_;
      fail_status = owner_->fail_stream_status_;
    }
    ++received_;
    if (fail_at > 0 && received_ == fail_at) return fail_status;
    if (request.has_metrics() || request.has_logs() || request.has_events()) {
      v1::StreamSyncResponse ack;
      ack.mutable_ack()->set_sequence_number(
          request.metadata().sequence_number());
      ack.mutable_ack()->set_success(true);
      sink_->Send(ack);
    }
    return absl::OkStatus();
  }

  absl::Status Finish() override {
    absl::MutexLock lock(&owner_->mu_);
    ++owner_->stream_finishes_;
    return owner_->finish_status_;
  }

 private:
  FakeSyncHandler* const owner_;
  StreamSink* const sink_;
  int received_ = 0;
};

void FakeSyncHandler::SetStatus(const std::string& method,
                                absl::Status status) {
  absl::MutexLock lock(&mu_);
  statuses_[method] = std::move(status);
}

void FakeSyncHandler::SetMetricsResponse(v1::SyncMetricsResponse response) {
  absl::MutexLock lock(&mu_);
  metrics_response_ = std::move(response);
}

void FakeSyncHandler::SetConfigResponse(v1::GetSyncConfigResponse response) {
  absl::MutexLock lock(&mu_);
  config_response_ = std::move(response);
}

void FakeSyncHandler::SetStreamGreeting(v1::StreamSyncResponse response) {
  absl::MutexLock lock(&mu_);
  greeting_ = std::move(response);
}

void FakeSyncHandler::FailStreamAtMessage(int n, absl::Status status) {
  absl::MutexLock lock(&mu_);
  fail_stream_at_ = n;
  fail_stream_status_ = std::move(status);
}

void FakeSyncHandler::SetStreamFinishStatus(absl::Status status) {
  absl::MutexLock lock(&mu_);
  finish_status_ = std::move(status);
}

std::vector<RecordedCall> FakeSyncHandler::calls() const {
  absl::MutexLock lock(&mu_);
  return calls_;
}

std::vector<v1::StreamSyncRequest> FakeSyncHandler::stream_messages() const {
  absl::MutexLock lock(&mu_);
  return stream_messages_;
}

int FakeSyncHandler::stream_finishes() const {
  absl::MutexLock lock(&mu_);
  return stream_finishes_;
}

int FakeSyncHandler::call_count() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(calls_.size());
}

absl::Status FakeSyncHandler::Record(const std::string& method,
                                     const CallContext& context,
                                     const google::protobuf::Message* request) {
  absl::MutexLock lock(&mu_);
  RecordedCall call{method, context, nullptr};
  if (request != nullptr) {
    call.request.reset(request->New());
    call.request->CopyFrom(*request);
  }
  calls_.push_back(std::move(call));
  auto it = statuses_.find(method);
  return it == statuses_.end() ? absl::OkStatus() : it->second;
}

absl::StatusOr<v1::SyncMetricsResponse> FakeSyncHandler::SyncMetrics(
    const CallContext& context, const v1::SyncMetricsRequest& request) {
  absl::Status status = Record("SyncMetrics", context, &request);
  if (!status.ok()) return status;
  absl::MutexLock lock(&mu_);
  if (metrics_response_.has_value()) return *metrics_response_;
  v1::SyncMetricsResponse response;
  response.set_success(true);
  response.set_last_sequence_ack(request.metadata().sequence_number());
  return response;
}

absl::StatusOr<v1::SyncLogsResponse> FakeSyncHandler::SyncLogs(
    const CallContext& context, const v1::SyncLogsRequest& request) {
  absl::Status status = Record("SyncLogs", context, &request);
  if (!status.ok()) return status;
  v1::SyncLogsResponse response;
  response.set_success(true);
  response.set_last_sequence_ack(request.metadata().sequence_number());
  return response;
}

absl::StatusOr<v1::GetSyncConfigResponse> FakeSyncHandler::GetSyncConfig(
    const CallContext& context, const v1::GetSyncConfigRequest& request) {
  absl::Status status = Record("GetSyncConfig", context, &request);
  if (!status.ok()) return status;
  absl::MutexLock lock(&mu_);
  if (config_response_.has_value()) return *config_response_;
  v1::GetSyncConfigResponse response;
  response.mutable_config()->set_batch_size(100 + request.capability().tier());
  response.set_metrics_endpoint(absl::StrCat("metrics/", request.device_id()));
  return response;
}

absl::StatusOr<v1::SyncEventsResponse> FakeSyncHandler::SyncEvents(
    const CallContext& context, const v1::SyncEventsRequest& request) {
  absl::Status status = Record("SyncEvents", context, &request);
  if (!status.ok()) return status;
  v1::SyncEventsResponse response;
  response.set_success(true);
  response.set_last_sequence_ack(request.metadata().sequence_number());
  return response;
}

absl::StatusOr<v1::UpdateDeviceInfoResponse> FakeSyncHandler::UpdateDeviceInfo(
    const CallContext& context, const v1::UpdateDeviceInfoRequest& request) {
  absl::Status status = Record("UpdateDeviceInfo", context, &request);
  if (!status.ok()) return status;
  v1::UpdateDeviceInfoResponse response;
  response.set_success(true);
  return response;
}

absl::StatusOr<std::unique_ptr<StreamSession>> FakeSyncHandler::OpenStream(
    const CallContext& context, StreamSink* sink) {
  absl::Status status = Record("StreamSync", context, nullptr);
  if (!status.ok()) return status;
  std::optional<v1::StreamSyncResponse> greeting;
  {
    absl::MutexLock lock(&mu_);
    greeting = greeting_;
  }
  if (greeting.has_value()) sink->Send(*greeting);
  return std::unique_ptr<StreamSession>(new Session(this, sink));
}

}  // namespace fleetd::server::testing
