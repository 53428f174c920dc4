#include "agent/transport/grpc_transport.h"

#include <grpc/support/time.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <deque>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "agent/transport/transport_stats.h"
#include "common/status/error_class.h"
#include "common/status/grpc_status.h"
#include "common/status/retry_after.h"
#include "glog/logging.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace fleetd::agent {
namespace {

using Stub = v1::SyncService::StubInterface;
using ReaderWriter = grpc::ClientReaderWriterInterface<v1::StreamSyncRequest,
                                                       v1::StreamSyncResponse>;

constexpr char kApiKeyMetadata[] = "x-api-key";
constexpr char kRetryAfterMetadata[] = "retry-after-ms";
// Every gRPC message is framed by a compressed flag and a 4-byte length.
constexpr int64_t kFrameHeaderBytes = 5;
// Server messages a stream buffers ahead of Read; beyond this the reader
// stops reading, and HTTP/2 flow control pushes back on the server.
constexpr size_t kMaxQueuedResponses = 64;

int64_t FramedSize(const google::protobuf::Message& message) {
  return static_cast<int64_t>(message.ByteSizeLong()) + kFrameHeaderBytes;
}

int ClampToIntMillis(absl::Duration d) {
  return static_cast<int>(
      std::clamp<int64_t>(absl::ToInt64Milliseconds(d), 1, INT_MAX));
}

// The call's status with the server's retry hint, if it sent one.
absl::Status StatusFromCall(const grpc::Status& status,
                            const grpc::ClientContext& context) {
  absl::Status result = FromGrpcStatus(status);
  if (result.ok()) return result;
  const auto& trailers = context.GetServerTrailingMetadata();
  auto it = trailers.find(kRetryAfterMetadata);
  if (it != trailers.end()) {
    int64_t ms = 0;
    if (absl::SimpleAtoi(
            absl::string_view(it->second.data(), it->second.size()), &ms) &&
        ms >= 0) {
      result = WithRetryAfter(std::move(result), absl::Milliseconds(ms));
    }
  }
  // Our server's verdict that the batch itself is invalid (error_class.h).
  // Statuses a proxy or the gRPC library makes up never carry it.
  auto verdict = trailers.find(kVerdictMetadataKey);
  if (verdict != trailers.end() &&
      absl::string_view(verdict->second.data(), verdict->second.size()) ==
          kVerdictRejected) {
    result = MarkBatchRejected(std::move(result));
  }
  return result;
}

void PrepareContext(const GrpcCallConfig& config, absl::Duration timeout,
                    grpc::ClientContext* context) {
  if (!config.api_key.empty()) {
    context->AddMetadata(kApiKeyMetadata, config.api_key);
  }
  if (config.gzip) context->set_compression_algorithm(GRPC_COMPRESS_GZIP);
  if (timeout != absl::InfiniteDuration()) {
    // gRPC deadlines live on gRPC's own clock; the caller's relative timeout
    // is turned into one at the last moment.
    const int64_t nanos =
        absl::ToInt64Nanoseconds(std::max(timeout, absl::ZeroDuration()));
    context->set_deadline(
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                     gpr_time_from_nanos(nanos, GPR_TIMESPAN)));
  }
}

// A StreamSync call on the synchronous grpc++ API. A reader thread pulls
// server messages into a bounded queue, so Read can wait with a timeout.
class GrpcSyncStream final : public SyncStream {
 public:
  GrpcSyncStream(std::shared_ptr<Stub> stub,
                 std::unique_ptr<grpc::ClientContext> context,
                 std::shared_ptr<StatsRecorder> stats)
      : stub_(std::move(stub)),
        context_(std::move(context)),
        stats_(std::move(stats)) {}

  GrpcSyncStream(const GrpcSyncStream&) = delete;
  GrpcSyncStream& operator=(const GrpcSyncStream&) = delete;

  ~GrpcSyncStream() override {
    if (rw_ == nullptr) return;
    bool finished;
    {
      absl::MutexLock lock(&mu_);
      finished = finished_;
      discarding_ = true;
    }
    if (finished) return;
    context_->TryCancel();
    reader_.join();
    rw_->Finish();
  }

  absl::Status Start() {
    rw_ = stub_->StreamSync(context_.get());
    if (rw_ == nullptr) return absl::InternalError("StreamSync: no stream");
    reader_ = std::thread([this] { ReadLoop(); });
    return absl::OkStatus();
  }

  absl::Status Write(const v1::StreamSyncRequest& request) override {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return absl::FailedPreconditionError("stream finished");
      if (writes_done_) {
        return absl::FailedPreconditionError("Write after CloseSend");
      }
    }
    stats_->AddCall();
    stats_->AddSent(FramedSize(request));
    if (!rw_->Write(request)) {
      return absl::UnavailableError(
          "StreamSync: the stream is broken; Finish() gives the reason");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<v1::StreamSyncResponse> Read(absl::Duration timeout) override {
    absl::MutexLock lock(&mu_);
    if (finished_) return absl::FailedPreconditionError("stream finished");
    mu_.AwaitWithTimeout(
        absl::Condition(this, &GrpcSyncStream::HasMessageOrEnded), timeout);
    if (!queue_.empty()) {
      v1::StreamSyncResponse response = std::move(queue_.front());
      queue_.pop_front();
      return response;
    }
    if (read_done_) {
      return absl::OutOfRangeError(
          "StreamSync: the server ended the stream; Finish() gives its "
          "status");
    }
    return absl::DeadlineExceededError(
        absl::StrCat("StreamSync: no message from the server within ",
                     absl::FormatDuration(timeout)));
  }

  absl::Status CloseSend() override {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return absl::FailedPreconditionError("stream finished");
      if (writes_done_) return absl::OkStatus();
      writes_done_ = true;
    }
    if (!rw_->WritesDone()) {
      return absl::UnavailableError(
          "StreamSync: the stream is broken; Finish() gives the reason");
    }
    return absl::OkStatus();
  }

  absl::Status Finish(absl::Duration timeout) override {
    bool half_close;
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return absl::FailedPreconditionError("stream finished");
      finished_ = true;
      half_close = !writes_done_;
      writes_done_ = true;
      discarding_ = true;
      queue_.clear();
    }
    // A broken stream shows in the final status, so the result is not needed.
    if (half_close) rw_->WritesDone();
    bool ended;
    {
      absl::MutexLock lock(&mu_);
      ended = mu_.AwaitWithTimeout(
          absl::Condition(this, &GrpcSyncStream::ReadDone), timeout);
    }
    if (!ended) context_->TryCancel();
    reader_.join();
    const grpc::Status status = rw_->Finish();
    absl::Status result =
        ended ? StatusFromCall(status, *context_)
              : absl::DeadlineExceededError(absl::StrCat(
                    "StreamSync: the server did not end the stream within ",
                    absl::FormatDuration(timeout), "; cancelled"));
    if (!result.ok()) {
      stats_->AddFailure();
      LOG(WARNING) << "gRPC StreamSync ended with " << result;
    }
    return result;
  }

 private:
  void ReadLoop() {
    while (true) {
      v1::StreamSyncResponse response;
      if (!rw_->Read(&response)) break;
      stats_->AddReceived(FramedSize(response));
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &GrpcSyncStream::HasRoomOrDiscarding));
      if (!discarding_) queue_.push_back(std::move(response));
    }
    absl::MutexLock lock(&mu_);
    read_done_ = true;
  }

  bool HasMessageOrEnded() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !queue_.empty() || read_done_;
  }
  bool HasRoomOrDiscarding() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return queue_.size() < kMaxQueuedResponses || discarding_;
  }
  bool ReadDone() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return read_done_;
  }

  // Keeps the channel alive while the stream is.
  const std::shared_ptr<Stub> stub_;
  const std::unique_ptr<grpc::ClientContext> context_;
  const std::shared_ptr<StatsRecorder> stats_;
  // Set by Start; Write/WritesDone from the caller and Read from reader_ may
  // run concurrently, as grpc++ allows one reader and one writer.
  std::unique_ptr<ReaderWriter> rw_;
  std::thread reader_;

  absl::Mutex mu_;
  std::deque<v1::StreamSyncResponse> queue_ ABSL_GUARDED_BY(mu_);
  bool read_done_ ABSL_GUARDED_BY(mu_) = false;
  bool writes_done_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // Drop server messages instead of queueing them (Finish or destruction).
  bool discarding_ ABSL_GUARDED_BY(mu_) = false;
};

class GrpcTransport final : public SyncTransport {
 public:
  GrpcTransport(std::shared_ptr<Stub> stub, GrpcCallConfig config)
      : stub_(std::move(stub)),
        config_(std::move(config)),
        stats_(std::make_shared<StatsRecorder>()) {}

  absl::StatusOr<v1::SyncMetricsResponse> SyncMetrics(
      const v1::SyncMetricsRequest& request, absl::Duration timeout) override {
    return Unary("SyncMetrics", &Stub::SyncMetrics, request, timeout);
  }
  absl::StatusOr<v1::SyncLogsResponse> SyncLogs(
      const v1::SyncLogsRequest& request, absl::Duration timeout) override {
    return Unary("SyncLogs", &Stub::SyncLogs, request, timeout);
  }
  absl::StatusOr<v1::SyncEventsResponse> SyncEvents(
      const v1::SyncEventsRequest& request, absl::Duration timeout) override {
    return Unary("SyncEvents", &Stub::SyncEvents, request, timeout);
  }
  absl::StatusOr<v1::GetSyncConfigResponse> GetSyncConfig(
      const v1::GetSyncConfigRequest& request,
      absl::Duration timeout) override {
    return Unary("GetSyncConfig", &Stub::GetSyncConfig, request, timeout);
  }
  absl::StatusOr<v1::UpdateDeviceInfoResponse> UpdateDeviceInfo(
      const v1::UpdateDeviceInfoRequest& request,
      absl::Duration timeout) override {
    return Unary("UpdateDeviceInfo", &Stub::UpdateDeviceInfo, request, timeout);
  }

  absl::StatusOr<std::unique_ptr<SyncStream>> OpenStream() override {
    auto context = std::make_unique<grpc::ClientContext>();
    PrepareContext(config_, absl::InfiniteDuration(), context.get());
    auto stream =
        std::make_unique<GrpcSyncStream>(stub_, std::move(context), stats_);
    absl::Status started = stream->Start();
    if (!started.ok()) {
      stats_->AddFailure();
      LOG(WARNING) << "gRPC StreamSync failed to start: " << started;
      return started;
    }
    return std::unique_ptr<SyncStream>(std::move(stream));
  }

  TransportStats stats() const override { return stats_->Snapshot(); }

 private:
  template <typename Request, typename Response>
  using Method = grpc::Status (Stub::*)(grpc::ClientContext*, const Request&,
                                        Response*);

  template <typename Request, typename Response>
  absl::StatusOr<Response> Unary(const char* name,
                                 Method<Request, Response> method,
                                 const Request& request,
                                 absl::Duration timeout) {
    grpc::ClientContext context;
    PrepareContext(config_, timeout, &context);
    Response response;
    stats_->AddCall();
    stats_->AddSent(FramedSize(request));
    const grpc::Status status =
        (stub_.get()->*method)(&context, request, &response);
    if (status.ok()) {
      stats_->AddReceived(FramedSize(response));
      return response;
    }
    absl::Status result = StatusFromCall(status, context);
    stats_->AddFailure();
    LOG(WARNING) << "gRPC " << name << " failed: " << result;
    return result;
  }

  const std::shared_ptr<Stub> stub_;
  const GrpcCallConfig config_;
  const std::shared_ptr<StatsRecorder> stats_;
};

}  // namespace

grpc::ChannelArguments GrpcChannelArguments(const TransportOptions& options) {
  grpc::ChannelArguments args;
  // Keepalive detects a dead connection (a NAT that forgot us, a dropped
  // link) while a call waits on it; with keepalive on, gRPC also sets
  // TCP_USER_TIMEOUT so unacknowledged data fails the connection in time.
  // Pings only while calls are active: an idle device sends nothing.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS,
              ClampToIntMillis(options.keepalive_time));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
              ClampToIntMillis(options.keepalive_timeout));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  // Keep pinging on a stream that carries no data for a long time (the
  // default stops after two pings).
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Reconnect quickly after a short outage, but never hammer the server.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 30000);
  args.SetMaxReceiveMessageSize(static_cast<int>(
      std::clamp<int64_t>(options.max_response_bytes, 1, INT_MAX)));
  args.SetUserAgentPrefix(options.user_agent);
  return args;
}

std::unique_ptr<SyncTransport> NewGrpcTransportWithStub(
    std::unique_ptr<v1::SyncService::StubInterface> stub,
    GrpcCallConfig config) {
  return std::make_unique<GrpcTransport>(std::shared_ptr<Stub>(std::move(stub)),
                                         std::move(config));
}

absl::StatusOr<std::unique_ptr<SyncTransport>> NewGrpcTransport(
    const TransportOptions& options, const ServerUrl& url,
    const std::string& ca_pem) {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (url.tls) {
    grpc::SslCredentialsOptions ssl;
    // Empty means gRPC's default roots: the system's CA bundle.
    ssl.pem_root_certs = ca_pem;
    credentials = grpc::SslCredentials(ssl);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  if (credentials == nullptr) {
    return absl::InternalError("gRPC: cannot create channel credentials");
  }
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(
      url.Authority(), credentials, GrpcChannelArguments(options));
  GrpcCallConfig config;
  config.api_key = options.api_key;
  config.gzip = options.compression == "gzip";
  return NewGrpcTransportWithStub(v1::SyncService::NewStub(channel),
                                  std::move(config));
}

}  // namespace fleetd::agent
