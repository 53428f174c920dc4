#include "agent/transport/grpc_transport.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "agent/transport/transport.h"
#include "common/status/error_class.h"
#include "common/status/retry_after.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "fleetd/v1/sync.grpc.pb.h"
#include "fleetd/v1/sync_mock.grpc.pb.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/server_context.h"
#include "grpcpp/test/client_context_test_peer.h"
#include "gtest/gtest.h"

namespace fleetd::agent {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::fleetd::testing::WaitFor;
using ::google::protobuf::util::MessageDifferencer;
using ::testing::_;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Invoke;
using ::testing::Not;
using ::testing::Optional;
using ::testing::Pair;
using ::testing::Return;

constexpr absl::Duration kTimeout = absl::Seconds(30);

GrpcCallConfig Config(std::string api_key, bool gzip = false) {
  GrpcCallConfig config;
  config.api_key = std::move(api_key);
  config.gzip = gzip;
  return config;
}

v1::SyncMetricsRequest MetricsRequest(int64_t sequence) {
  v1::SyncMetricsRequest request;
  request.mutable_metadata()->set_device_id("dev-1");
  request.mutable_metadata()->set_sequence_number(sequence);
  v1::Metric* metric = request.mutable_batch()->add_metrics();
  metric->set_name("cpu_usage");
  metric->set_value(42.5);
  (*metric->mutable_labels())["host"] = "pi-7";
  return request;
}

// --- With the generated mock stub -------------------------------------------

struct SeenCall {
  std::multimap<std::string, std::string> metadata;
  grpc_compression_algorithm compression = GRPC_COMPRESS_NONE;
  std::chrono::system_clock::time_point deadline;
};

class GrpcTransportMockTest : public ::testing::Test {
 protected:
  // Creates the transport around a mock the test configures through mock_.
  std::unique_ptr<SyncTransport> MakeTransport(GrpcCallConfig config) {
    auto mock = std::make_unique<v1::MockSyncServiceStub>();
    mock_ = mock.get();
    return NewGrpcTransportWithStub(std::move(mock), std::move(config));
  }

  // Records what the transport put on the ClientContext.
  static SeenCall Inspect(grpc::ClientContext* context) {
    SeenCall seen;
    seen.metadata =
        grpc::testing::ClientContextTestPeer(context).GetSendInitialMetadata();
    seen.compression = context->compression_algorithm();
    seen.deadline = context->deadline();
    return seen;
  }

  v1::MockSyncServiceStub* mock_ = nullptr;
};

TEST_F(GrpcTransportMockTest, SendsApiKeyDeadlineAndGzipAndReturnsResponse) {
  auto transport = MakeTransport(Config("key-1", /*gzip=*/true));
  const v1::SyncMetricsRequest request = MetricsRequest(7);
  SeenCall seen;
  EXPECT_CALL(*mock_, SyncMetrics(_, _, _))
      .WillOnce(Invoke([&](grpc::ClientContext* context,
                           const v1::SyncMetricsRequest& got,
                           v1::SyncMetricsResponse* response) {
        seen = Inspect(context);
        EXPECT_TRUE(MessageDifferencer::Equals(got, request));
        response->set_success(true);
        response->set_last_sequence_ack(got.metadata().sequence_number());
        return grpc::Status::OK;
      }));

  const auto before = std::chrono::system_clock::now();
  absl::StatusOr<v1::SyncMetricsResponse> response =
      transport->SyncMetrics(request, absl::Seconds(30));
  const auto after = std::chrono::system_clock::now();

  ASSERT_THAT(response, IsOk());
  EXPECT_TRUE(response->success());
  EXPECT_EQ(response->last_sequence_ack(), 7);
  EXPECT_THAT(seen.metadata, Contains(Pair("x-api-key", "key-1")));
  EXPECT_EQ(seen.compression, GRPC_COMPRESS_GZIP);
  // The deadline is the timeout from the moment of the call.
  EXPECT_GE(seen.deadline, before + std::chrono::seconds(29));
  EXPECT_LE(seen.deadline, after + std::chrono::seconds(31));
}

TEST_F(GrpcTransportMockTest, NoKeyNoCompressionNoDeadlineWhenNotAsked) {
  auto transport = MakeTransport(Config(""));
  SeenCall seen;
  EXPECT_CALL(*mock_, GetSyncConfig(_, _, _))
      .WillOnce(Invoke([&](grpc::ClientContext* context,
                           const v1::GetSyncConfigRequest&,
                           v1::GetSyncConfigResponse*) {
        seen = Inspect(context);
        return grpc::Status::OK;
      }));
  ASSERT_THAT(transport->GetSyncConfig({}, absl::InfiniteDuration()), IsOk());
  EXPECT_THAT(seen.metadata, Not(Contains(Pair("x-api-key", _))));
  EXPECT_EQ(seen.compression, GRPC_COMPRESS_NONE);
  EXPECT_EQ(seen.deadline, std::chrono::system_clock::time_point::max());
}

TEST_F(GrpcTransportMockTest, EachMethodCallsItsRpc) {
  auto transport = MakeTransport(Config("k"));
  EXPECT_CALL(*mock_, SyncMetrics(_, _, _))
      .WillOnce(Invoke([](auto*, const auto&, v1::SyncMetricsResponse* r) {
        r->set_last_sequence_ack(1);
        return grpc::Status::OK;
      }));
  EXPECT_CALL(*mock_, SyncLogs(_, _, _))
      .WillOnce(Invoke([](auto*, const auto&, v1::SyncLogsResponse* r) {
        r->set_last_sequence_ack(2);
        return grpc::Status::OK;
      }));
  EXPECT_CALL(*mock_, SyncEvents(_, _, _))
      .WillOnce(Invoke([](auto*, const auto&, v1::SyncEventsResponse* r) {
        r->set_last_sequence_ack(3);
        return grpc::Status::OK;
      }));
  EXPECT_CALL(*mock_, GetSyncConfig(_, _, _))
      .WillOnce(Invoke([](auto*, const auto&, v1::GetSyncConfigResponse* r) {
        r->mutable_config()->set_batch_size(4);
        return grpc::Status::OK;
      }));
  EXPECT_CALL(*mock_, UpdateDeviceInfo(_, _, _))
      .WillOnce(Invoke([](auto*, const auto&, v1::UpdateDeviceInfoResponse* r) {
        r->set_success(true);
        return grpc::Status::OK;
      }));

  EXPECT_EQ(transport->SyncMetrics({}, kTimeout)->last_sequence_ack(), 1);
  EXPECT_EQ(transport->SyncLogs({}, kTimeout)->last_sequence_ack(), 2);
  EXPECT_EQ(transport->SyncEvents({}, kTimeout)->last_sequence_ack(), 3);
  EXPECT_EQ(transport->GetSyncConfig({}, kTimeout)->config().batch_size(), 4);
  EXPECT_TRUE(transport->UpdateDeviceInfo({}, kTimeout)->success());
  EXPECT_EQ(transport->stats().calls, 5);
  EXPECT_EQ(transport->stats().failures, 0);
}

TEST_F(GrpcTransportMockTest, ServerStatusKeepsCodeAndMessage) {
  auto transport = MakeTransport(Config("k"));
  EXPECT_CALL(*mock_, SyncLogs(_, _, _))
      .WillOnce(Return(
          grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "device mismatch")))
      .WillOnce(Return(grpc::Status(grpc::StatusCode::UNAVAILABLE, "down")));
  absl::StatusOr<v1::SyncLogsResponse> denied =
      transport->SyncLogs({}, kTimeout);
  EXPECT_THAT(denied,
              StatusIs(absl::StatusCode::kPermissionDenied, "device mismatch"));
  EXPECT_EQ(GetRetryAfter(denied.status()), std::nullopt);
  EXPECT_THAT(transport->SyncLogs({}, kTimeout),
              StatusIs(absl::StatusCode::kUnavailable, "down"));
  EXPECT_EQ(transport->stats().failures, 2);
}

TEST_F(GrpcTransportMockTest, StubWithoutStreamFailsOpenStream) {
  auto transport = MakeTransport(Config(""));
  EXPECT_CALL(*mock_, StreamSyncRaw(_)).WillOnce(Return(nullptr));
  EXPECT_THAT(transport->OpenStream(), StatusIs(absl::StatusCode::kInternal));
}

TEST(GrpcChannelArgumentsTest, KeepaliveAndLimitsFromOptions) {
  TransportOptions options;
  options.keepalive_time = absl::Minutes(5);
  options.keepalive_timeout = absl::Seconds(20);
  options.max_response_bytes = 1 << 20;
  grpc::ChannelArguments args = GrpcChannelArguments(options);
  std::map<std::string, int> ints;
  const grpc_channel_args c_args = args.c_channel_args();
  for (size_t i = 0; i < c_args.num_args; ++i) {
    if (c_args.args[i].type == GRPC_ARG_INTEGER) {
      ints[c_args.args[i].key] = c_args.args[i].value.integer;
    }
  }
  EXPECT_EQ(ints[GRPC_ARG_KEEPALIVE_TIME_MS], 300000);
  EXPECT_EQ(ints[GRPC_ARG_KEEPALIVE_TIMEOUT_MS], 20000);
  EXPECT_EQ(ints[GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS], 0);
  EXPECT_EQ(ints[GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA], 0);
  EXPECT_EQ(ints[GRPC_ARG_MAX_RECONNECT_BACKOFF_MS], 30000);
  EXPECT_EQ(ints[GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH], 1 << 20);
}

// --- Against a real grpc++ server on an in-process channel ------------------

// A scripted SyncService: records the API key, answers unary calls with a
// scripted status and trailers, and acks stream messages.
class ScriptedService final : public v1::SyncService::Service {
 public:
  void FailWith(grpc::Status status, std::string retry_after_ms = "",
                std::string verdict = "") {
    absl::MutexLock lock(&mu_);
    status_ = std::move(status);
    retry_after_ms_ = std::move(retry_after_ms);
    verdict_ = std::move(verdict);
  }
  // Unary calls block until Release() (or the client gives up).
  void HoldCalls() {
    absl::MutexLock lock(&mu_);
    hold_ = true;
  }
  // Idempotent; called from the test thread only.
  void Release() {
    if (!release_.HasBeenNotified()) release_.Notify();
  }
  // Stream sessions: end with this status after `n` messages (0: never).
  void EndStreamAfter(int n, grpc::Status status, std::string retry_after_ms) {
    absl::MutexLock lock(&mu_);
    end_after_ = n;
    status_ = std::move(status);
    retry_after_ms_ = std::move(retry_after_ms);
  }
  // Stream sessions ignore the client's half-close and wait to be cancelled.
  void IgnoreHalfClose() {
    absl::MutexLock lock(&mu_);
    ignore_half_close_ = true;
  }

  std::vector<std::string> api_keys() const {
    absl::MutexLock lock(&mu_);
    return api_keys_;
  }
  int cancelled_streams() const {
    absl::MutexLock lock(&mu_);
    return cancelled_streams_;
  }

  grpc::Status SyncMetrics(grpc::ServerContext* context,
                           const v1::SyncMetricsRequest* request,
                           v1::SyncMetricsResponse* response) override {
    bool hold;
    {
      absl::MutexLock lock(&mu_);
      RecordKey(*context);
      hold = hold_;
    }
    if (hold) {
      while (!context->IsCancelled() &&
             !release_.WaitForNotificationWithTimeout(absl::Milliseconds(5))) {
      }
    }
    grpc::Status status = Scripted(context);
    if (!status.ok()) return status;
    response->set_success(true);
    response->set_last_sequence_ack(request->metadata().sequence_number());
    return grpc::Status::OK;
  }

  grpc::Status StreamSync(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::StreamSyncResponse, v1::StreamSyncRequest>*
          stream) override {
    int end_after;
    bool ignore_half_close;
    {
      absl::MutexLock lock(&mu_);
      RecordKey(*context);
      end_after = end_after_;
      ignore_half_close = ignore_half_close_;
    }
    v1::StreamSyncRequest request;
    int received = 0;
    while (stream->Read(&request)) {
      ++received;
      v1::StreamSyncResponse response;
      response.mutable_ack()->set_sequence_number(
          request.metadata().sequence_number());
      response.mutable_ack()->set_success(true);
      stream->Write(response);
      if (end_after > 0 && received >= end_after) return Scripted(context);
    }
    if (ignore_half_close) {
      absl::Notification never;
      while (!context->IsCancelled()) {
        never.WaitForNotificationWithTimeout(absl::Milliseconds(5));
      }
      absl::MutexLock lock(&mu_);
      ++cancelled_streams_;
      return grpc::Status::CANCELLED;
    }
    if (context->IsCancelled()) {
      absl::MutexLock lock(&mu_);
      ++cancelled_streams_;
    }
    return grpc::Status::OK;
  }

 private:
  void RecordKey(const grpc::ServerContext& context)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = context.client_metadata().find("x-api-key");
    api_keys_.push_back(
        it == context.client_metadata().end()
            ? ""
            : std::string(it->second.data(), it->second.size()));
  }

  grpc::Status Scripted(grpc::ServerContext* context) {
    absl::MutexLock lock(&mu_);
    if (!retry_after_ms_.empty()) {
      context->AddTrailingMetadata("retry-after-ms", retry_after_ms_);
    }
    if (!verdict_.empty()) {
      context->AddTrailingMetadata("fleetd-verdict", verdict_);
    }
    return status_;
  }

  mutable absl::Mutex mu_;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  std::string retry_after_ms_ ABSL_GUARDED_BY(mu_);
  std::string verdict_ ABSL_GUARDED_BY(mu_);
  bool hold_ ABSL_GUARDED_BY(mu_) = false;
  int end_after_ ABSL_GUARDED_BY(mu_) = 0;
  bool ignore_half_close_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::string> api_keys_ ABSL_GUARDED_BY(mu_);
  int cancelled_streams_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Notification release_;
};

class GrpcTransportInProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    transport_ = NewGrpcTransportWithStub(
        v1::SyncService::NewStub(
            server_->InProcessChannel(grpc::ChannelArguments())),
        Config("key-1", /*gzip=*/true));
  }
  void TearDown() override {
    service_.Release();
    transport_.reset();
    server_->Shutdown();
  }

  ScriptedService service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<SyncTransport> transport_;
};

TEST_F(GrpcTransportInProcessTest, UnaryCallReachesServerWithKey) {
  const v1::SyncMetricsRequest request = MetricsRequest(11);
  absl::StatusOr<v1::SyncMetricsResponse> response =
      transport_->SyncMetrics(request, kTimeout);
  ASSERT_THAT(response, IsOk());
  EXPECT_EQ(response->last_sequence_ack(), 11);
  EXPECT_THAT(service_.api_keys(), ::testing::ElementsAre("key-1"));

  // Traffic: the framed request and response.
  const TransportStats stats = transport_->stats();
  EXPECT_EQ(stats.bytes_sent, static_cast<int64_t>(request.ByteSizeLong()) + 5);
  EXPECT_EQ(stats.bytes_received,
            static_cast<int64_t>(response->ByteSizeLong()) + 5);
  EXPECT_EQ(stats.calls, 1);
  EXPECT_EQ(stats.failures, 0);
}

TEST_F(GrpcTransportInProcessTest, RetryAfterTrailerBecomesRetryHint) {
  service_.FailWith(
      grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "overloaded"), "1500");
  absl::StatusOr<v1::SyncMetricsResponse> response =
      transport_->SyncMetrics(MetricsRequest(1), kTimeout);
  EXPECT_THAT(response,
              StatusIs(absl::StatusCode::kResourceExhausted, "overloaded"));
  EXPECT_THAT(GetRetryAfter(response.status()),
              Optional(absl::Milliseconds(1500)));
  EXPECT_EQ(transport_->stats().failures, 1);
}

TEST_F(GrpcTransportInProcessTest, VerdictTrailerMarksTheRejection) {
  service_.FailWith(
      grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad metric name"), "",
      "rejected");
  absl::StatusOr<v1::SyncMetricsResponse> response =
      transport_->SyncMetrics(MetricsRequest(1), kTimeout);
  EXPECT_THAT(response,
              StatusIs(absl::StatusCode::kInvalidArgument, "bad metric name"));
  EXPECT_TRUE(IsBatchRejected(response.status()));
  EXPECT_EQ(ClassifyError(response.status()), ErrorClass::kSetAside);
}

TEST_F(GrpcTransportInProcessTest, InvalidArgumentWithoutVerdictIsRetried) {
  // What a proxy or another server might answer: no verdict of ours.
  service_.FailWith(
      grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad request"));
  absl::StatusOr<v1::SyncMetricsResponse> response =
      transport_->SyncMetrics(MetricsRequest(1), kTimeout);
  EXPECT_THAT(response, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_FALSE(IsBatchRejected(response.status()));
  EXPECT_EQ(ClassifyError(response.status()), ErrorClass::kRetry);
  // An unknown verdict value is no verdict either.
  service_.FailWith(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "x"), "",
                    "maybe");
  response = transport_->SyncMetrics(MetricsRequest(1), kTimeout);
  EXPECT_FALSE(IsBatchRejected(response.status()));
}

TEST_F(GrpcTransportInProcessTest, MalformedRetryAfterTrailerIsIgnored) {
  service_.FailWith(grpc::Status(grpc::StatusCode::UNAVAILABLE, "busy"),
                    "soon");
  absl::StatusOr<v1::SyncMetricsResponse> response =
      transport_->SyncMetrics(MetricsRequest(1), kTimeout);
  EXPECT_THAT(response, StatusIs(absl::StatusCode::kUnavailable, "busy"));
  EXPECT_EQ(GetRetryAfter(response.status()), std::nullopt);
}

TEST_F(GrpcTransportInProcessTest, SlowServerIsDeadlineExceeded) {
  service_.HoldCalls();
  EXPECT_THAT(
      transport_->SyncMetrics(MetricsRequest(1), absl::Milliseconds(100)),
      StatusIs(absl::StatusCode::kDeadlineExceeded));
  service_.Release();
  // The transport is still usable.
  EXPECT_THAT(transport_->SyncMetrics(MetricsRequest(2), kTimeout), IsOk());
}

TEST_F(GrpcTransportInProcessTest, StreamWritesAndReadsInOrder) {
  absl::StatusOr<std::unique_ptr<SyncStream>> stream = transport_->OpenStream();
  ASSERT_THAT(stream, IsOk());
  for (int64_t seq = 1; seq <= 3; ++seq) {
    v1::StreamSyncRequest request;
    *request.mutable_metrics() = MetricsRequest(seq).batch();
    request.mutable_metadata()->set_sequence_number(seq);
    ASSERT_THAT((*stream)->Write(request), IsOk());
  }
  for (int64_t seq = 1; seq <= 3; ++seq) {
    absl::StatusOr<v1::StreamSyncResponse> response = (*stream)->Read(kTimeout);
    ASSERT_THAT(response, IsOk());
    EXPECT_EQ(response->ack().sequence_number(), seq);
  }
  ASSERT_THAT((*stream)->CloseSend(), IsOk());
  EXPECT_THAT((*stream)->Write({}),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  // The server ends the stream after the client's half-close.
  EXPECT_THAT((*stream)->Read(kTimeout),
              StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_THAT((*stream)->Finish(kTimeout), IsOk());
  EXPECT_THAT(service_.api_keys(), ::testing::ElementsAre("key-1"));
  EXPECT_EQ(transport_->stats().calls, 3);
  EXPECT_GT(transport_->stats().bytes_received, 0);
}

TEST_F(GrpcTransportInProcessTest, StreamReadTimeoutLeavesStreamUsable) {
  absl::StatusOr<std::unique_ptr<SyncStream>> stream = transport_->OpenStream();
  ASSERT_THAT(stream, IsOk());
  EXPECT_THAT((*stream)->Read(absl::Milliseconds(20)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  v1::StreamSyncRequest request;
  request.mutable_heartbeat()->set_unsynced_metrics(5);
  request.mutable_metadata()->set_sequence_number(9);
  ASSERT_THAT((*stream)->Write(request), IsOk());
  absl::StatusOr<v1::StreamSyncResponse> response = (*stream)->Read(kTimeout);
  ASSERT_THAT(response, IsOk());
  EXPECT_EQ(response->ack().sequence_number(), 9);
  EXPECT_THAT((*stream)->Finish(kTimeout), IsOk());
}

TEST_F(GrpcTransportInProcessTest, StreamErrorCarriesRetryHint) {
  service_.EndStreamAfter(
      1, grpc::Status(grpc::StatusCode::UNAVAILABLE, "backend down"), "250");
  absl::StatusOr<std::unique_ptr<SyncStream>> stream = transport_->OpenStream();
  ASSERT_THAT(stream, IsOk());
  v1::StreamSyncRequest request;
  request.mutable_metadata()->set_sequence_number(1);
  ASSERT_THAT((*stream)->Write(request), IsOk());
  EXPECT_THAT((*stream)->Read(kTimeout), IsOk());  // the ack
  EXPECT_THAT((*stream)->Read(kTimeout),
              StatusIs(absl::StatusCode::kOutOfRange));
  absl::Status finished = (*stream)->Finish(kTimeout);
  EXPECT_THAT(finished,
              StatusIs(absl::StatusCode::kUnavailable, "backend down"));
  EXPECT_THAT(GetRetryAfter(finished), Optional(absl::Milliseconds(250)));
  EXPECT_EQ(transport_->stats().failures, 1);
}

TEST_F(GrpcTransportInProcessTest, FinishCancelsAServerThatNeverEnds) {
  service_.IgnoreHalfClose();
  absl::StatusOr<std::unique_ptr<SyncStream>> stream = transport_->OpenStream();
  ASSERT_THAT(stream, IsOk());
  ASSERT_THAT((*stream)->Write({}), IsOk());
  EXPECT_THAT((*stream)->Finish(absl::Milliseconds(100)),
              StatusIs(absl::StatusCode::kDeadlineExceeded,
                       HasSubstr("did not end the stream")));
  EXPECT_TRUE(WaitFor([&] { return service_.cancelled_streams() == 1; }));
}

TEST_F(GrpcTransportInProcessTest, DestroyingAnOpenStreamCancelsIt) {
  service_.IgnoreHalfClose();
  absl::StatusOr<std::unique_ptr<SyncStream>> stream = transport_->OpenStream();
  ASSERT_THAT(stream, IsOk());
  ASSERT_THAT((*stream)->Write({}), IsOk());
  ASSERT_THAT((*stream)->Read(kTimeout), IsOk());
  stream->reset();
  EXPECT_TRUE(WaitFor([&] { return service_.cancelled_streams() == 1; }));
}

// --- Over loopback TCP ------------------------------------------------------

TEST(GrpcTransportNetworkTest, ConnectionRefusedIsUnavailable) {
  // A bound socket that does not listen: connecting to it is refused, and no
  // one else can take the port meanwhile.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);

  TransportOptions options;
  options.server_url = absl::StrCat("http://127.0.0.1:", ntohs(addr.sin_port));
  absl::StatusOr<std::unique_ptr<SyncTransport>> transport =
      NewTransport(options);
  ASSERT_THAT(transport, IsOk());
  EXPECT_THAT((*transport)->SyncMetrics(MetricsRequest(1), kTimeout),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ((*transport)->stats().failures, 1);
  close(fd);
}

}  // namespace
}  // namespace fleetd::agent
