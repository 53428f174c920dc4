#include "server/rpc/grpc/grpc_front_end.h"

#include <netinet/in.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/clock/clock.h"
#include "common/concurrency/thread_census.h"
#include "common/metrics/metrics.h"
#include "common/status/error_class.h"
#include "common/status/retry_after.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "fleetd/v1/sync.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/rpc/net/net.h"
#include "server/rpc/testing/fake_sync_handler.h"
#include "server/rpc/testing/grpc_health_client.h"
#include "server/rpc/testing/test_tls.h"
#include "tests/faults/fault_proxy.h"

namespace fleetd::server::rpc {
namespace {

using ::fleetd::server::testing::FakeSyncHandler;
using ::fleetd::server::testing::RecordedCall;
using ::fleetd::server::testing::TestCertificate;
using ::fleetd::server::testing::TryTlsHandshake;
using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// Keeps gRPC initialized for the whole binary. Otherwise destroying the last
// gRPC object at the end of each test runs a full grpc_shutdown(), which joins
// gRPC's executor and can sit out a backup poller's 10 s poll after a large
// write.
class GrpcLibraryEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { grpc_init(); }
};
const ::testing::Environment* const kGrpcEnvironment =
    ::testing::AddGlobalTestEnvironment(new GrpcLibraryEnvironment);

std::chrono::system_clock::time_point In(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoNanoseconds(d);
}

std::string Trailer(const grpc::ClientContext& context,
                    const std::string& key) {
  auto it = context.GetServerTrailingMetadata().find(key);
  if (it == context.GetServerTrailingMetadata().end()) return "";
  return std::string(it->second.data(), it->second.size());
}

v1::SyncMetricsRequest MetricsRequest(int64_t sequence,
                                      size_t label_bytes = 0) {
  v1::SyncMetricsRequest request;
  request.mutable_metadata()->set_device_id("dev-1");
  request.mutable_metadata()->set_sequence_number(sequence);
  v1::Metric* metric = request.mutable_batch()->add_metrics();
  metric->set_name("cpu");
  metric->set_value(0.5);
  if (label_bytes > 0) {
    (*metric->mutable_labels())["blob"] = std::string(label_bytes, 'x');
  }
  return request;
}

// FakeSyncHandler plus two behaviours the thread tests need: SyncMetrics can
// be held at a gate (a handler waiting for a group commit), and streams opened
// with the API key "flood" answer each message with a burst of large
// responses (more than a client that does not read can take).
class TestHandler : public FakeSyncHandler {
 public:
  // SyncMetrics calls wait until OpenGate().
  void CloseGate() {
    absl::MutexLock lock(&gate_mu_);
    gate_open_ = false;
  }
  void OpenGate() {
    absl::MutexLock lock(&gate_mu_);
    gate_open_ = true;
  }
  // SyncMetrics calls waiting at the gate right now.
  int at_gate() const {
    absl::MutexLock lock(&gate_mu_);
    return at_gate_;
  }

  // What "flood" streams do with each message.
  void SetFlood(int responses, size_t bytes) {
    absl::MutexLock lock(&gate_mu_);
    flood_responses_ = responses;
    flood_bytes_ = bytes;
  }
  // Sends a flood session's sink refused, and flood sessions finished.
  int flood_refused() const {
    absl::MutexLock lock(&gate_mu_);
    return flood_refused_;
  }
  int flood_finishes() const {
    absl::MutexLock lock(&gate_mu_);
    return flood_finishes_;
  }

  absl::StatusOr<v1::SyncMetricsResponse> SyncMetrics(
      const CallContext& context,
      const v1::SyncMetricsRequest& request) override {
    {
      absl::MutexLock lock(&gate_mu_);
      ++at_gate_;
      gate_mu_.Await(absl::Condition(&gate_open_));
      --at_gate_;
    }
    return FakeSyncHandler::SyncMetrics(context, request);
  }

  absl::StatusOr<std::unique_ptr<StreamSession>> OpenStream(
      const CallContext& context, StreamSink* sink) override {
    if (context.api_key != "flood") {
      return FakeSyncHandler::OpenStream(context, sink);
    }
    return std::unique_ptr<StreamSession>(new FloodSession(this, sink));
  }

 private:
  class FloodSession : public StreamSession {
   public:
    FloodSession(TestHandler* owner, StreamSink* sink)
        : owner_(owner), sink_(sink) {}
    absl::Status OnRequest(const v1::StreamSyncRequest& request) override {
      int responses;
      v1::StreamSyncResponse big;
      {
        absl::MutexLock lock(&owner_->gate_mu_);
        responses = owner_->flood_responses_;
        big.mutable_flush()->set_reason(std::string(owner_->flood_bytes_, 'f'));
      }
      for (int i = 0; i < responses; ++i) {
        if (!sink_->Send(big)) {
          absl::MutexLock lock(&owner_->gate_mu_);
          ++owner_->flood_refused_;
          break;
        }
      }
      return absl::OkStatus();
    }
    absl::Status Finish() override {
      absl::MutexLock lock(&owner_->gate_mu_);
      ++owner_->flood_finishes_;
      return absl::OkStatus();
    }

   private:
    TestHandler* const owner_;
    StreamSink* const sink_;
  };

  mutable absl::Mutex gate_mu_;
  bool gate_open_ ABSL_GUARDED_BY(gate_mu_) = true;
  int at_gate_ ABSL_GUARDED_BY(gate_mu_) = 0;
  int flood_responses_ ABSL_GUARDED_BY(gate_mu_) = 0;
  size_t flood_bytes_ ABSL_GUARDED_BY(gate_mu_) = 0;
  int flood_refused_ ABSL_GUARDED_BY(gate_mu_) = 0;
  int flood_finishes_ ABSL_GUARDED_BY(gate_mu_) = 0;
};

// Opens a channel of its own (its own TCP connection) to 127.0.0.1:`port`.
// `fixed_window`: the client's HTTP/2 receive window stays at 64 KiB (no
// BDP-driven growth), so a client that does not read stops the server's
// writes soon.
std::shared_ptr<grpc::Channel> SeparateChannel(int port,
                                               bool fixed_window = false) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (fixed_window) {
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 10);
  }
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port),
                                   grpc::InsecureChannelCredentials(), args);
}

class GrpcFrontEndTest : public ::testing::Test {
 protected:
  // Starts a plaintext front end on 127.0.0.1:0.
  void StartInsecure(GrpcFrontEndOptions options = {}) {
    options.address = "127.0.0.1:0";
    options.insecure = true;
    options.metrics = &registry_;
    absl::StatusOr<std::unique_ptr<GrpcFrontEnd>> server =
        GrpcFrontEnd::Start(options, &handler_);
    ASSERT_THAT(server, IsOk());
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::SyncService::NewStub(channel_);
  }

  // Starts a TLS front end on 127.0.0.1:0 with a fresh self-signed
  // certificate, and a client trusting it.
  void StartTls(GrpcFrontEndOptions options = {}) {
    absl::StatusOr<TestCertificate> cert = TestCertificate::Create();
    ASSERT_THAT(cert, IsOk());
    cert_ = std::make_unique<TestCertificate>(*std::move(cert));
    options.address = "127.0.0.1:0";
    options.tls_cert_file = cert_->cert_file();
    options.tls_key_file = cert_->key_file();
    options.metrics = &registry_;
    absl::StatusOr<std::unique_ptr<GrpcFrontEnd>> server =
        GrpcFrontEnd::Start(options, &handler_);
    ASSERT_THAT(server, IsOk());
    server_ = *std::move(server);
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = cert_->cert_pem();
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride("localhost");
    channel_ =
        grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                  grpc::SslCredentials(ssl), args);
    stub_ = v1::SyncService::NewStub(channel_);
  }

  void TearDown() override {
    stub_.reset();
    channel_.reset();
    if (server_ != nullptr) server_->Shutdown();
  }

  SimulatedClock clock_;  // for tests that set options.clock
  metrics::Registry registry_;
  TestHandler handler_;
  std::unique_ptr<TestCertificate> cert_;
  std::unique_ptr<GrpcFrontEnd> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::SyncService::Stub> stub_;
};

TEST_F(GrpcFrontEndTest, UnaryCallCarriesApiKeyPeerAndDeadlineToHandler) {
  StartInsecure();
  grpc::ClientContext context;
  context.AddMetadata("x-api-key", "key-123");
  context.set_deadline(In(absl::Seconds(30)));
  v1::SyncMetricsResponse response;
  grpc::Status status =
      stub_->SyncMetrics(&context, MetricsRequest(42), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(response.success());
  EXPECT_EQ(response.last_sequence_ack(), 42);

  std::vector<RecordedCall> calls = handler_.calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].method, "SyncMetrics");
  EXPECT_EQ(calls[0].context.api_key, "key-123");
  EXPECT_EQ(calls[0].context.protocol, "grpc");
  EXPECT_THAT(calls[0].context.peer, StartsWith("127.0.0.1:"));
  absl::Duration left = calls[0].context.deadline - absl::Now();
  EXPECT_GT(left, absl::Seconds(20));
  EXPECT_LE(left, absl::Seconds(31));  // grpc-timeout rounds up
  auto* request = dynamic_cast<v1::SyncMetricsRequest*>(calls[0].request.get());
  ASSERT_NE(request, nullptr);
  EXPECT_EQ(request->batch().metrics(0).name(), "cpu");
}

TEST_F(GrpcFrontEndTest, NoApiKeyAndNoDeadlineGiveEmptyKeyAndInfiniteDeadline) {
  StartInsecure();
  grpc::ClientContext context;
  v1::GetSyncConfigRequest request;
  request.set_device_id("d");
  request.mutable_capability()->set_tier(2);
  v1::GetSyncConfigResponse response;
  ASSERT_TRUE(stub_->GetSyncConfig(&context, request, &response).ok());
  EXPECT_EQ(response.config().batch_size(), 102);
  ASSERT_EQ(handler_.call_count(), 1);
  EXPECT_EQ(handler_.calls()[0].context.api_key, "");
  EXPECT_EQ(handler_.calls()[0].context.deadline, absl::InfiniteFuture());
}

TEST_F(GrpcFrontEndTest, EveryUnaryRpcDelegatesToItsHandlerMethod) {
  StartInsecure();
  {
    grpc::ClientContext c;
    v1::SyncLogsRequest request;
    request.mutable_metadata()->set_sequence_number(7);
    v1::SyncLogsResponse response;
    ASSERT_TRUE(stub_->SyncLogs(&c, request, &response).ok());
    EXPECT_EQ(response.last_sequence_ack(), 7);
  }
  {
    grpc::ClientContext c;
    v1::SyncEventsRequest request;
    request.mutable_metadata()->set_sequence_number(8);
    v1::SyncEventsResponse response;
    ASSERT_TRUE(stub_->SyncEvents(&c, request, &response).ok());
    EXPECT_EQ(response.last_sequence_ack(), 8);
  }
  {
    grpc::ClientContext c;
    v1::UpdateDeviceInfoRequest request;
    request.mutable_info()->set_hostname("h");
    v1::UpdateDeviceInfoResponse response;
    ASSERT_TRUE(stub_->UpdateDeviceInfo(&c, request, &response).ok());
    EXPECT_TRUE(response.success());
  }
  std::vector<std::string> methods;
  for (const RecordedCall& call : handler_.calls()) {
    methods.push_back(call.method);
  }
  EXPECT_THAT(methods, ::testing::ElementsAre("SyncLogs", "SyncEvents",
                                              "UpdateDeviceInfo"));
}

TEST_F(GrpcFrontEndTest, HandlerErrorKeepsCodeAndMessageAndSendsRetryHint) {
  StartInsecure();
  handler_.SetStatus("SyncMetrics",
                     WithRetryAfter(absl::ResourceExhaustedError("overloaded"),
                                    absl::Milliseconds(1500)));
  grpc::ClientContext context;
  v1::SyncMetricsResponse response;
  grpc::Status status =
      stub_->SyncMetrics(&context, MetricsRequest(1), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(status.error_message(), "overloaded");
  EXPECT_EQ(Trailer(context, "retry-after-ms"), "1500");

  handler_.SetStatus("SyncMetrics", absl::UnauthenticatedError("bad key"));
  grpc::ClientContext context2;
  status = stub_->SyncMetrics(&context2, MetricsRequest(1), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(status.error_message(), "bad key");
  EXPECT_EQ(Trailer(context2, "retry-after-ms"), "");

  std::string rendered = registry_.Render();
  EXPECT_THAT(rendered, HasSubstr("method=\"SyncMetrics\""));
  EXPECT_THAT(rendered, HasSubstr("code=\"RESOURCE_EXHAUSTED\""));
}

TEST_F(GrpcFrontEndTest, BatchRejectedVerdictBecomesTrailingMetadata) {
  StartInsecure();
  handler_.SetStatus(
      "SyncMetrics",
      MarkBatchRejected(absl::InvalidArgumentError("bad label name")));
  grpc::ClientContext context;
  v1::SyncMetricsResponse response;
  grpc::Status status =
      stub_->SyncMetrics(&context, MetricsRequest(1), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "bad label name");
  EXPECT_EQ(Trailer(context, "fleetd-verdict"), "rejected");

  // INVALID_ARGUMENT without the verdict: no trailer.
  handler_.SetStatus("SyncMetrics", absl::InvalidArgumentError("not ours"));
  grpc::ClientContext context2;
  status = stub_->SyncMetrics(&context2, MetricsRequest(2), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Trailer(context2, "fleetd-verdict"), "");
}

TEST_F(GrpcFrontEndTest, OversizedRequestIsResourceExhaustedBeforeHandler) {
  GrpcFrontEndOptions options;
  options.max_receive_message_bytes = 4096;
  StartInsecure(options);
  grpc::ClientContext context;
  v1::SyncMetricsResponse response;
  grpc::Status status =
      stub_->SyncMetrics(&context, MetricsRequest(1, 8192), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(handler_.call_count(), 0);

  grpc::ClientContext small;
  EXPECT_TRUE(
      stub_->SyncMetrics(&small, MetricsRequest(2, 1024), &response).ok());
}

TEST_F(GrpcFrontEndTest, GzipCompressedRequestIsAccepted) {
  StartInsecure();
  grpc::ClientContext context;
  context.set_compression_algorithm(GRPC_COMPRESS_GZIP);
  v1::SyncMetricsResponse response;
  grpc::Status status =
      stub_->SyncMetrics(&context, MetricsRequest(5, 100000), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  auto* request = dynamic_cast<v1::SyncMetricsRequest*>(
      handler_.calls().at(0).request.get());
  ASSERT_NE(request, nullptr);
  EXPECT_EQ(request->batch().metrics(0).labels().at("blob").size(), 100000u);
}

TEST_F(GrpcFrontEndTest, StreamSyncRelaysMessagesAcksAndServerCommands) {
  v1::StreamSyncResponse greeting;
  greeting.mutable_flush()->set_reason("hello");
  handler_.SetStreamGreeting(greeting);
  StartInsecure();
  grpc::ClientContext context;
  context.AddMetadata("x-api-key", "stream-key");
  auto stream = stub_->StreamSync(&context);

  v1::StreamSyncResponse response;
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.flush().reason(), "hello");

  v1::StreamSyncRequest batch;
  batch.mutable_metadata()->set_sequence_number(11);
  batch.mutable_metrics()->add_metrics()->set_name("m");
  ASSERT_TRUE(stream->Write(batch));
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.ack().sequence_number(), 11);
  EXPECT_TRUE(response.ack().success());

  v1::StreamSyncRequest heartbeat;
  heartbeat.mutable_heartbeat()->set_unsynced_metrics(3);
  ASSERT_TRUE(stream->Write(heartbeat));

  v1::StreamSyncRequest logs;
  logs.mutable_metadata()->set_sequence_number(12);
  logs.mutable_logs()->add_logs()->set_message("x");
  ASSERT_TRUE(stream->Write(logs));
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.ack().sequence_number(), 12);

  ASSERT_TRUE(stream->WritesDone());
  EXPECT_FALSE(stream->Read(&response));
  grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();

  std::vector<v1::StreamSyncRequest> received = handler_.stream_messages();
  ASSERT_EQ(received.size(), 3u);
  EXPECT_TRUE(received[1].has_heartbeat());
  EXPECT_EQ(handler_.stream_finishes(), 1);
  EXPECT_EQ(handler_.calls().at(0).context.api_key, "stream-key");
}

TEST_F(GrpcFrontEndTest, StreamSyncOpenFailureEndsCallWithThatStatus) {
  handler_.SetStatus("StreamSync", absl::UnauthenticatedError("no key"));
  StartInsecure();
  grpc::ClientContext context;
  auto stream = stub_->StreamSync(&context);
  v1::StreamSyncResponse response;
  EXPECT_FALSE(stream->Read(&response));
  grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(status.error_message(), "no key");
  EXPECT_EQ(handler_.stream_finishes(), 0);
}

TEST_F(GrpcFrontEndTest, StreamSyncMessageErrorEndsCallAndStillFinishes) {
  handler_.FailStreamAtMessage(
      2, WithRetryAfter(absl::UnavailableError("backend down"),
                        absl::Milliseconds(250)));
  StartInsecure();
  grpc::ClientContext context;
  auto stream = stub_->StreamSync(&context);
  v1::StreamSyncRequest heartbeat;
  heartbeat.mutable_heartbeat();
  ASSERT_TRUE(stream->Write(heartbeat));
  stream->Write(heartbeat);  // the failing one
  v1::StreamSyncResponse response;
  while (stream->Read(&response)) {
  }
  grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(status.error_message(), "backend down");
  EXPECT_EQ(Trailer(context, "retry-after-ms"), "250");
  EXPECT_EQ(handler_.stream_finishes(), 1);
}

TEST_F(GrpcFrontEndTest, HealthServiceReportsServing) {
  StartInsecure();
  auto [status, bytes] = server::testing::GrpcHealthCheck(channel_, "");
  ASSERT_TRUE(status.ok()) << status.error_code() << " "
                           << status.error_message();
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));  // status: SERVING
}

TEST_F(GrpcFrontEndTest, TlsServesCallsAndStreamsWithClientAddressAsPeer) {
  StartTls();
  grpc::ClientContext context;
  context.AddMetadata("x-api-key", "tls-key");
  v1::GetSyncConfigRequest request;
  request.set_device_id("dev-tls");
  v1::GetSyncConfigResponse response;
  grpc::Status status = stub_->GetSyncConfig(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.metrics_endpoint(), "metrics/dev-tls");
  RecordedCall call = handler_.calls().at(0);
  EXPECT_EQ(call.context.api_key, "tls-key");
  EXPECT_THAT(call.context.peer, StartsWith("127.0.0.1:"));

  grpc::ClientContext stream_context;
  auto stream = stub_->StreamSync(&stream_context);
  v1::StreamSyncRequest batch;
  batch.mutable_metadata()->set_sequence_number(99);
  batch.mutable_events();
  ASSERT_TRUE(stream->Write(batch));
  v1::StreamSyncResponse ack;
  ASSERT_TRUE(stream->Read(&ack));
  EXPECT_EQ(ack.ack().sequence_number(), 99);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(GrpcFrontEndTest, TlsRelaysLargeMessagesBothWays) {
  v1::GetSyncConfigResponse big;
  big.set_metrics_endpoint(std::string(3 << 20, 'r'));
  handler_.SetConfigResponse(big);
  StartTls();
  grpc::ClientContext context;
  v1::SyncMetricsResponse response;
  ASSERT_TRUE(
      stub_->SyncMetrics(&context, MetricsRequest(1, 5 << 20), &response).ok());
  auto* request = dynamic_cast<v1::SyncMetricsRequest*>(
      handler_.calls().at(0).request.get());
  ASSERT_NE(request, nullptr);
  EXPECT_EQ(request->batch().metrics(0).labels().at("blob"),
            std::string(5 << 20, 'x'));

  grpc::ClientContext context2;
  v1::GetSyncConfigResponse config;
  ASSERT_TRUE(stub_->GetSyncConfig(&context2, {}, &config).ok());
  EXPECT_EQ(config.metrics_endpoint(), big.metrics_endpoint());
}

TEST_F(GrpcFrontEndTest, TlsManyConcurrentCallsAllSucceed) {
  StartTls();
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        grpc::ClientContext context;
        v1::SyncMetricsResponse response;
        if (stub_
                ->SyncMetrics(&context, MetricsRequest(t * 100 + i, 2000),
                              &response)
                .ok() &&
            response.last_sequence_ack() == t * 100 + i) {
          ++ok;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(ok.load(), 40);
}

TEST_F(GrpcFrontEndTest, TlsOversizedRequestIsResourceExhausted) {
  GrpcFrontEndOptions options;
  options.max_receive_message_bytes = 4096;
  StartTls(options);
  grpc::ClientContext context;
  v1::SyncMetricsResponse response;
  grpc::Status status =
      stub_->SyncMetrics(&context, MetricsRequest(1, 8192), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(handler_.call_count(), 0);
}

TEST_F(GrpcFrontEndTest, TlsAcceptsOnlyTls13WithH2) {
  StartTls();
  absl::StatusOr<testing::HandshakeResult> tls13 =
      TryTlsHandshake(server_->port(), TLS1_2_VERSION, TLS1_3_VERSION, {"h2"});
  ASSERT_THAT(tls13, IsOk());
  EXPECT_EQ(tls13->version, "TLSv1.3");
  EXPECT_EQ(tls13->alpn, "h2");

  // A client capped at TLS 1.2 is refused during the handshake.
  EXPECT_THAT(
      TryTlsHandshake(server_->port(), TLS1_VERSION, TLS1_2_VERSION, {"h2"}),
      StatusIs(absl::StatusCode::kUnavailable, HasSubstr("handshake")));
  // HTTP/2 is required: a client offering only http/1.1 is refused too.
  EXPECT_THAT(TryTlsHandshake(server_->port(), TLS1_3_VERSION, TLS1_3_VERSION,
                              {"http/1.1"}),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("handshake")));

  // The server still serves after refusing those.
  grpc::ClientContext context;
  v1::GetSyncConfigResponse response;
  EXPECT_TRUE(stub_->GetSyncConfig(&context, {}, &response).ok());
  EXPECT_THAT(registry_.Render(),
              HasSubstr("fleetd_rpc_tls_connections_total{front_end=\"grpc\","
                        "result=\"handshake_failed\"} 2"));
}

// Opens a plain TCP connection to 127.0.0.1:`port` that sends nothing.
UniqueFd ConnectTcp(int port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  timeval tv{10, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(
      ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  return fd;
}

TEST_F(GrpcFrontEndTest, TlsClosesConnectionsThatNeverHandshake) {
  GrpcFrontEndOptions options;
  options.tls_handshake_timeout = absl::Milliseconds(200);
  StartTls(options);
  UniqueFd idle = ConnectTcp(server_->port());
  char byte;
  // The server hangs up (EOF) long before the 10 s receive timeout.
  EXPECT_EQ(::recv(idle.get(), &byte, 1, 0), 0);
}

TEST_F(GrpcFrontEndTest, TlsConnectionLimitRefusesExtraConnections) {
  GrpcFrontEndOptions options;
  options.max_connections = 1;
  StartTls(options);
  UniqueFd first = ConnectTcp(server_->port());  // holds the only slot
  EXPECT_THAT(
      TryTlsHandshake(server_->port(), TLS1_3_VERSION, TLS1_3_VERSION, {"h2"}),
      StatusIs(absl::StatusCode::kUnavailable, HasSubstr("")));
  first.reset();
  // Once the first connection is gone its slot is reused.
  EXPECT_TRUE(fleetd::testing::WaitFor([&] {
    return TryTlsHandshake(server_->port(), TLS1_3_VERSION, TLS1_3_VERSION,
                           {"h2"})
        .ok();
  }));
  EXPECT_THAT(registry_.Render(), HasSubstr("result=\"refused_limit\"}"));
}

TEST_F(GrpcFrontEndTest, ShutdownStopsServingAndIsIdempotent) {
  StartTls();
  int port = server_->port();
  server_->Shutdown();
  server_->Shutdown();
  EXPECT_THAT(TryTlsHandshake(port, TLS1_3_VERSION, TLS1_3_VERSION, {"h2"},
                              absl::Seconds(5)),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("")));
}

// Samples the threads of the process (/proc/self/task) on a thread of its own
// until Stop(), to catch threads that live only briefly, and names each when
// first seen.
class ThreadWatch {
 public:
  ThreadWatch() {
    absl::Notification started;
    sampler_ = std::thread([this, &started] {
      sampler_id_ = CurrentThreadId();
      started.Notify();
      do {
        std::set<pid_t> now = ThreadIds();
        absl::MutexLock lock(&mu_);
        for (pid_t id : now) {
          if (names_.count(id) == 0) names_[id] = ThreadName(id);
        }
      } while (!stop_.WaitForNotificationWithTimeout(absl::Milliseconds(1)));
    });
    started.WaitForNotification();
  }
  ~ThreadWatch() { Stop(); }

  // The threads alive now, without the sampler.
  std::set<pid_t> Census() const {
    std::set<pid_t> ids = ThreadIds();
    ids.erase(sampler_id_);
    return ids;
  }

  // Stops sampling; every thread seen meanwhile, without the sampler.
  std::set<pid_t> Stop() {
    if (sampler_.joinable()) {
      stop_.Notify();
      sampler_.join();
    }
    absl::MutexLock lock(&mu_);
    std::set<pid_t> seen;
    for (const auto& [id, name] : names_) seen.insert(id);
    seen.erase(sampler_id_);
    return seen;
  }

  // The name of `id` now, or when last seen if it has ended. (A new thread
  // carries its creator's name until it names itself.)
  std::string NameOf(pid_t id) {
    std::string name = ThreadName(id);
    if (!name.empty()) return name;
    absl::MutexLock lock(&mu_);
    auto it = names_.find(id);
    return it == names_.end() ? "?" : it->second;
  }

  // "id:name ..." for failure messages.
  std::string Describe(const std::set<pid_t>& ids) {
    std::string out;
    for (pid_t id : ids) absl::StrAppend(&out, " ", id, ":", NameOf(id));
    return out;
  }

 private:
  absl::Notification stop_;
  std::thread sampler_;
  pid_t sampler_id_ = 0;
  absl::Mutex mu_;
  std::map<pid_t, std::string> names_ ABSL_GUARDED_BY(mu_);
};

// `a` without the members of `b`.
std::set<pid_t> Without(std::set<pid_t> a, const std::set<pid_t>& b) {
  for (pid_t id : b) a.erase(id);
  return a;
}

// gRPC core keeps two pools of its own that grow on demand and never shrink
// while gRPC is initialized: the iomgr executor ("default-executor", up to
// 2 x cores threads) and the timer manager ("grpc_global_timer", one more
// whenever all are busy running timers). Under a new load one of theirs may
// appear once: growth to a bound, not churn.
bool IsGrowOnlyGrpcThread(const std::string& name) {
  return name == "default-executo" || name == "resolver-execut" ||
         name == "grpc_global_tim";
}

// Checks the threads around a load: none ended (no thread came and went, none
// of those before was replaced), and the only new ones still there are a few
// of gRPC core's grow-only pools; `clients` (the load's own threads) aside.
void ExpectNoThreadChurn(ThreadWatch& watch, const std::set<pid_t>& before,
                         const std::set<pid_t>& seen,
                         const std::set<pid_t>& after,
                         const std::set<pid_t>& clients) {
  std::set<pid_t> ended = Without(Without(before, after), clients);
  EXPECT_THAT(ended, ::testing::IsEmpty()) << watch.Describe(ended);
  std::set<pid_t> transient =
      Without(Without(Without(seen, before), after), clients);
  EXPECT_THAT(transient, ::testing::IsEmpty())
      << "threads that came and went:" << watch.Describe(transient);
  std::set<pid_t> grown = Without(after, before);
  for (pid_t id : grown) {
    EXPECT_TRUE(IsGrowOnlyGrpcThread(watch.NameOf(id)))
        << "new thread:" << watch.Describe({id});
  }
  EXPECT_LE(grown.size(), 2 * std::thread::hardware_concurrency() + 2);
}

// Runs `calls` SyncMetrics calls spread over `threads` client threads. Returns
// how many succeeded; adds the client threads' ids to `client_ids`.
int UnaryBurst(v1::SyncService::Stub* stub, int threads, int calls,
               std::set<pid_t>* client_ids) {
  std::atomic<int> ok{0};
  absl::Mutex mu;
  std::vector<std::thread> clients;
  for (int t = 0; t < threads; ++t) {
    clients.emplace_back([&, t] {
      {
        absl::MutexLock lock(&mu);
        client_ids->insert(CurrentThreadId());
      }
      for (int i = t; i < calls; i += threads) {
        grpc::ClientContext context;
        context.set_deadline(In(absl::Seconds(60)));
        v1::SyncMetricsResponse response;
        if (stub->SyncMetrics(&context, MetricsRequest(i), &response).ok() &&
            response.last_sequence_ack() == i) {
          ++ok;
        }
      }
    });
  }
  for (std::thread& client : clients) client.join();
  return ok.load();
}

TEST_F(GrpcFrontEndTest, UnaryBurstFromManyClientThreadsCreatesNoThread) {
  StartInsecure();
  // gRPC creates a few threads of its own lazily (client and server side);
  // a first burst brings most of them.
  std::set<pid_t> warm_up_clients;
  ASSERT_EQ(UnaryBurst(stub_.get(), 32, 200, &warm_up_clients), 200);

  ThreadWatch watch;
  std::set<pid_t> before = watch.Census();
  std::set<pid_t> clients;
  ASSERT_EQ(UnaryBurst(stub_.get(), 32, 2000, &clients), 2000);
  std::set<pid_t> seen = watch.Stop();
  std::set<pid_t> after = watch.Census();

  EXPECT_EQ(clients.size(), 32u);
  ExpectNoThreadChurn(watch, before, seen, after, clients);
  int workers = 0;
  for (pid_t id : after) {
    if (absl::StartsWith(watch.NameOf(id), "grpc-")) ++workers;
  }
  EXPECT_EQ(workers, 128);
  std::cerr << "process threads before and after 2,000 unary calls from 32 "
               "client threads: "
            << before.size() << " -> " << after.size() << " ("
            << Without(seen, before).size() - clients.size()
            << " created meanwhile besides the clients; " << workers
            << " gRPC workers)\n";
}

TEST_F(GrpcFrontEndTest, HundredConcurrentStreamsCreateNoThread) {
  StartInsecure();
  {  // warm-up
    grpc::ClientContext context;
    auto stream = stub_->StreamSync(&context);
    ASSERT_TRUE(stream->WritesDone());
    ASSERT_TRUE(stream->Finish().ok());
  }
  ThreadWatch watch;
  std::set<pid_t> before = watch.Census();

  constexpr int kStreams = 100;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<
      grpc::ClientReaderWriter<v1::StreamSyncRequest, v1::StreamSyncResponse>>>
      streams;
  for (int i = 0; i < kStreams; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    streams.push_back(stub_->StreamSync(contexts.back().get()));
    v1::StreamSyncRequest batch;
    batch.mutable_metadata()->set_sequence_number(1000 + i);
    batch.mutable_metrics()->add_metrics()->set_name("m");
    ASSERT_TRUE(streams.back()->Write(batch));
  }
  for (int i = 0; i < kStreams; ++i) {
    v1::StreamSyncResponse ack;
    ASSERT_TRUE(streams[i]->Read(&ack));
    EXPECT_EQ(ack.ack().sequence_number(), 1000 + i);
  }
  // All 100 streams are open on the server, and none holds a thread.
  std::set<pid_t> open = watch.Census();
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(streams[i]->WritesDone());
    v1::StreamSyncResponse none;
    EXPECT_FALSE(streams[i]->Read(&none));
    EXPECT_TRUE(streams[i]->Finish().ok());
  }
  EXPECT_TRUE(fleetd::testing::WaitFor(
      [&] { return handler_.stream_finishes() == kStreams + 1; }));
  std::set<pid_t> seen = watch.Stop();
  std::set<pid_t> after = watch.Census();
  ExpectNoThreadChurn(watch, before, seen, after, {});
  std::cerr << "process threads with 0, with 100 open streams, after: "
            << before.size() << ", " << open.size() << ", " << after.size()
            << "\n";
}

TEST_F(GrpcFrontEndTest, FullWorkerQueueAnswersResourceExhaustedWithRetryHint) {
  GrpcFrontEndOptions options;
  options.workers = 1;
  options.max_queued_calls = 1;
  options.overload_retry_after = absl::Milliseconds(750);
  StartInsecure(options);
  handler_.CloseGate();
  grpc::Status first;
  grpc::Status second;
  std::thread running([&] {
    grpc::ClientContext context;
    v1::SyncMetricsResponse response;
    first = stub_->SyncMetrics(&context, MetricsRequest(1), &response);
  });
  ASSERT_TRUE(
      fleetd::testing::WaitFor([&] { return handler_.at_gate() == 1; }));
  std::thread queued([&] {
    grpc::ClientContext context;
    v1::SyncMetricsResponse response;
    second = stub_->SyncMetrics(&context, MetricsRequest(2), &response);
  });
  ASSERT_TRUE(fleetd::testing::WaitFor([&] {
    return absl::StrContains(registry_.Render(),
                             "fleetd_worker_pool_queued{pool=\"grpc\"} 1");
  }));

  // The one worker is busy and the queue is full: a third call is refused.
  grpc::ClientContext refused;
  v1::SyncMetricsResponse response;
  grpc::Status status =
      stub_->SyncMetrics(&refused, MetricsRequest(3), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("overloaded"));
  EXPECT_EQ(Trailer(refused, "retry-after-ms"), "750");
  // So is a stream.
  grpc::ClientContext stream_context;
  auto stream = stub_->StreamSync(&stream_context);
  v1::StreamSyncResponse none;
  EXPECT_FALSE(stream->Read(&none));
  grpc::Status stream_status = stream->Finish();
  EXPECT_EQ(stream_status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(Trailer(stream_context, "retry-after-ms"), "750");

  handler_.OpenGate();
  running.join();
  queued.join();
  EXPECT_TRUE(first.ok()) << first.error_message();
  EXPECT_TRUE(second.ok()) << second.error_message();
  // The refused call never reached the handler.
  std::vector<RecordedCall> calls = handler_.calls();
  ASSERT_EQ(calls.size(), 2u);
  std::string rendered = registry_.Render();
  EXPECT_THAT(rendered, HasSubstr("fleetd_worker_pool_refused_total{pool="
                                  "\"grpc\",reason=\"queue_full\"} 2"));
  EXPECT_THAT(rendered,
              HasSubstr("fleetd_rpc_frontend_requests_total{protocol=\"grpc\","
                        "method=\"SyncMetrics\",code=\"RESOURCE_EXHAUSTED\"} "
                        "1"));
}

TEST_F(GrpcFrontEndTest, StreamWhoseClientStopsReadingDoesNotBlockOtherCalls) {
  GrpcFrontEndOptions options;
  options.clock = &clock_;
  options.workers = 2;
  options.stream_send_queue = 2;
  options.stream_send_timeout = absl::Seconds(10);
  handler_.SetFlood(64, 1 << 20);
  StartInsecure(options);

  // On a connection of its own, a stream whose client sends and never reads:
  // 64 MiB of answers back up until the session's Send blocks its worker.
  std::unique_ptr<v1::SyncService::Stub> flood_stub =
      v1::SyncService::NewStub(SeparateChannel(server_->port(), true));
  grpc::ClientContext flood_context;
  flood_context.AddMetadata("x-api-key", "flood");
  auto flood = flood_stub->StreamSync(&flood_context);
  v1::StreamSyncRequest heartbeat;
  heartbeat.mutable_heartbeat();
  ASSERT_TRUE(flood->Write(heartbeat));
  ASSERT_TRUE(clock_.AwaitSleepers(1, absl::Seconds(30)))
      << "the session's Send never blocked";

  // Meanwhile other calls and streams are served.
  for (int i = 0; i < 20; ++i) {
    grpc::ClientContext context;
    v1::SyncMetricsResponse response;
    ASSERT_TRUE(
        stub_->SyncMetrics(&context, MetricsRequest(i), &response).ok());
  }
  grpc::ClientContext context;
  auto stream = stub_->StreamSync(&context);
  v1::StreamSyncRequest batch;
  batch.mutable_metadata()->set_sequence_number(5);
  batch.mutable_logs();
  ASSERT_TRUE(stream->Write(batch));
  v1::StreamSyncResponse ack;
  ASSERT_TRUE(stream->Read(&ack));
  EXPECT_EQ(ack.ack().sequence_number(), 5);
  ASSERT_TRUE(stream->WritesDone());
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(handler_.flood_finishes(), 0);  // still waiting for the reader

  // After the send timeout the stalled stream is cancelled, its session
  // finished and its worker freed.
  clock_.Advance(absl::Seconds(11));
  ASSERT_TRUE(
      fleetd::testing::WaitFor([&] { return handler_.flood_finishes() == 1; }));
  EXPECT_EQ(handler_.flood_refused(), 1);
  v1::StreamSyncResponse dropped;
  while (flood->Read(&dropped)) {
  }
  EXPECT_EQ(flood->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(fleetd::testing::WaitFor([&] {
    return absl::StrContains(registry_.Render(),
                             "fleetd_worker_pool_busy{pool=\"grpc\"} 0");
  }));
  EXPECT_THAT(
      registry_.Render(),
      HasSubstr("fleetd_rpc_stream_stalled_total{protocol=\"grpc\"} 1"));
}

TEST_F(GrpcFrontEndTest, CancelledStreamFinishesSessionOnceAndEnds) {
  StartInsecure();
  grpc::ClientContext context;
  auto stream = stub_->StreamSync(&context);
  v1::StreamSyncRequest batch;
  batch.mutable_metadata()->set_sequence_number(3);
  batch.mutable_events();
  ASSERT_TRUE(stream->Write(batch));
  v1::StreamSyncResponse ack;
  ASSERT_TRUE(stream->Read(&ack));
  context.TryCancel();
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(fleetd::testing::WaitFor(
      [&] { return handler_.stream_finishes() == 1; }));
  ASSERT_TRUE(fleetd::testing::WaitFor([&] {
    return absl::StrContains(registry_.Render(),
                             "method=\"StreamSync\",code=\"CANCELLED\"} 1");
  }));
  // Shutdown waits for every call to end (its reactor's OnDone): it returns.
  server_->Shutdown();
  EXPECT_EQ(handler_.stream_finishes(), 1);
}

TEST_F(GrpcFrontEndTest, ClientVanishingMidStreamFinishesSession) {
  StartInsecure();
  fleetd::testing::FaultProxy::Options proxy_options;
  proxy_options.upstream_port = server_->port();
  absl::StatusOr<std::unique_ptr<fleetd::testing::FaultProxy>> proxy =
      fleetd::testing::FaultProxy::Start(proxy_options);
  ASSERT_THAT(proxy, IsOk());
  std::unique_ptr<v1::SyncService::Stub> stub =
      v1::SyncService::NewStub(SeparateChannel((*proxy)->port()));
  grpc::ClientContext context;
  auto stream = stub->StreamSync(&context);
  v1::StreamSyncRequest batch;
  batch.mutable_metadata()->set_sequence_number(8);
  batch.mutable_metrics();
  ASSERT_TRUE(stream->Write(batch));
  v1::StreamSyncResponse ack;
  ASSERT_TRUE(stream->Read(&ack));
  EXPECT_EQ(ack.ack().sequence_number(), 8);

  // The connection is reset on both sides, as when a device drops off the
  // network: the server ends the stream and finishes the session once.
  (*proxy)->ResetAll();
  ASSERT_TRUE(fleetd::testing::WaitFor(
      [&] { return handler_.stream_finishes() == 1; }));
  EXPECT_FALSE(stream->Finish().ok());
  grpc::ClientContext unary;
  v1::SyncMetricsResponse response;
  EXPECT_TRUE(stub_->SyncMetrics(&unary, MetricsRequest(9), &response).ok());
  server_->Shutdown();
  EXPECT_EQ(handler_.stream_finishes(), 1);
}

TEST(GrpcFrontEndStartTest, RejectsInconsistentOrUnusableOptions) {
  FakeSyncHandler handler;
  GrpcFrontEndOptions options;
  options.address = "127.0.0.1:0";
  EXPECT_THAT(GrpcFrontEnd::Start(options, &handler),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("TLS")));
  options.insecure = true;
  options.tls_cert_file = "/some/cert.pem";
  EXPECT_THAT(
      GrpcFrontEnd::Start(options, &handler),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("insecure")));
  options.insecure = false;
  options.tls_key_file = "/some/key.pem";
  EXPECT_THAT(GrpcFrontEnd::Start(options, &handler),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("/some/cert.pem")));
  options.address = "nonsense";
  EXPECT_THAT(GrpcFrontEnd::Start(options, &handler),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("")));
}

TEST(GrpcFrontEndStartTest, BusyPortIsUnavailable) {
  absl::StatusOr<TestCertificate> cert = TestCertificate::Create();
  ASSERT_THAT(cert, IsOk());
  FakeSyncHandler handler;
  GrpcFrontEndOptions options;
  options.address = "127.0.0.1:0";
  options.tls_cert_file = cert->cert_file();
  options.tls_key_file = cert->key_file();
  absl::StatusOr<std::unique_ptr<GrpcFrontEnd>> first =
      GrpcFrontEnd::Start(options, &handler);
  ASSERT_THAT(first, IsOk());
  options.address = absl::StrCat("127.0.0.1:", (*first)->port());
  EXPECT_THAT(GrpcFrontEnd::Start(options, &handler),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("")));
  GrpcFrontEndOptions plain;
  plain.insecure = true;
  plain.address = options.address;
  EXPECT_THAT(GrpcFrontEnd::Start(plain, &handler),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("")));
}

}  // namespace
}  // namespace fleetd::server::rpc

namespace fleetd::server::rpc {
namespace {

TEST(GrpcFrontEndSettingsTest, EnvironmentOverridesDefaults) {
  GrpcFrontEndOptions options;
  Settings settings;
  AddGrpcFrontEndSettings(settings, &options);
  ASSERT_THAT(settings.Resolve(MapEnv({{"FLEET_GRPC_ADDR", "127.0.0.1:7000"},
                                       {"FLEET_GRPC_INSECURE", "true"},
                                       {"FLEET_GRPC_MAX_RECV_BYTES", "1MiB"}})),
              ::fleetd::testing::IsOk());
  EXPECT_EQ(options.address, "127.0.0.1:7000");
  EXPECT_TRUE(options.insecure);
  EXPECT_EQ(options.max_receive_message_bytes, 1 << 20);
  EXPECT_EQ(options.max_connections, 4096);  // default kept
  EXPECT_EQ(options.workers, 128);
  EXPECT_EQ(options.max_queued_calls, 2048);
}

TEST(GrpcFrontEndSettingsTest, WorkerSettings) {
  GrpcFrontEndOptions options;
  Settings settings;
  AddGrpcFrontEndSettings(settings, &options);
  ASSERT_THAT(settings.Resolve(MapEnv({{"FLEET_GRPC_WORKERS", "16"},
                                       {"FLEET_GRPC_QUEUE", "100"},
                                       {"FLEET_GRPC_STREAM_SEND_TIMEOUT", "5s"},
                                       {"FLEET_GRPC_MAX_THREADS", "8"}})),
              ::fleetd::testing::IsOk());
  EXPECT_EQ(options.workers, 16);
  EXPECT_EQ(options.max_queued_calls, 100);
  EXPECT_EQ(options.stream_send_timeout, absl::Seconds(5));
  EXPECT_EQ(options.max_threads, 8);
  EXPECT_FALSE(settings.Resolve(MapEnv({{"FLEET_GRPC_WORKERS", "0"}})).ok());
}

// The deprecated FLEET_GRPC_MAX_THREADS still bounds concurrent handler calls:
// it caps the workers.
TEST(GrpcFrontEndDeprecatedTest, MaxThreadsCapsWorkers) {
  TestHandler handler;
  metrics::Registry registry;
  GrpcFrontEndOptions options;
  options.address = "127.0.0.1:0";
  options.insecure = true;
  options.max_threads = 1;
  options.metrics = &registry;
  absl::StatusOr<std::unique_ptr<GrpcFrontEnd>> server =
      GrpcFrontEnd::Start(options, &handler);
  ASSERT_THAT(server, IsOk());
  EXPECT_THAT(registry.Render(),
              HasSubstr("fleetd_worker_pool_threads{pool=\"grpc\"} 1"));
  (*server)->Shutdown();
}

}  // namespace
}  // namespace fleetd::server::rpc
