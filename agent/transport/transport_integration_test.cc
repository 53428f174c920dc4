// Both agent transports against the real server front ends (gRPC and
// Connect, server/rpc) over loopback, plaintext and TLS, with a scripted
// SyncHandler behind them.
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "agent/transport/transport.h"
#include "common/status/retry_after.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/rpc/connect/connect_front_end.h"
#include "server/rpc/grpc/grpc_front_end.h"
#include "server/rpc/testing/fake_sync_handler.h"
#include "server/rpc/testing/test_tls.h"

namespace fleetd::agent {
namespace {

using ::fleetd::server::rpc::ConnectFrontEnd;
using ::fleetd::server::rpc::ConnectFrontEndOptions;
using ::fleetd::server::rpc::GrpcFrontEnd;
using ::fleetd::server::rpc::GrpcFrontEndOptions;
using ::fleetd::server::testing::FakeSyncHandler;
using ::fleetd::server::testing::RecordedCall;
using ::fleetd::server::testing::TestCertificate;
using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Optional;

constexpr absl::Duration kTimeout = absl::Seconds(30);

struct Setup {
  std::string kind;  // "grpc" or "connect"
  bool tls = false;
};

std::string SetupName(const ::testing::TestParamInfo<Setup>& info) {
  return absl::StrCat(info.param.kind, info.param.tls ? "_tls" : "_plaintext");
}

v1::SyncMetadata Metadata(int64_t sequence) {
  v1::SyncMetadata metadata;
  metadata.set_device_id("dev-1");
  metadata.set_sequence_number(sequence);
  return metadata;
}

v1::SyncMetricsRequest MetricsRequest(int64_t sequence) {
  v1::SyncMetricsRequest request;
  *request.mutable_metadata() = Metadata(sequence);
  for (int i = 0; i < 200; ++i) {
    v1::Metric* metric = request.mutable_batch()->add_metrics();
    metric->set_name("temperature_celsius");
    metric->set_value(20 + i % 5);
    (*metric->mutable_labels())["sensor"] = "greenhouse-north";
  }
  return request;
}

class TransportIntegrationTest : public ::testing::TestWithParam<Setup> {
 protected:
  void SetUp() override {
    if (GetParam().tls) {
      absl::StatusOr<TestCertificate> cert = TestCertificate::Create();
      ASSERT_THAT(cert, IsOk());
      cert_ = std::make_unique<TestCertificate>(*std::move(cert));
    }
    if (GetParam().kind == "grpc") {
      GrpcFrontEndOptions options;
      options.address = "127.0.0.1:0";
      options.insecure = cert_ == nullptr;
      if (cert_ != nullptr) {
        options.tls_cert_file = cert_->cert_file();
        options.tls_key_file = cert_->key_file();
      }
      absl::StatusOr<std::unique_ptr<GrpcFrontEnd>> server =
          GrpcFrontEnd::Start(options, &handler_);
      ASSERT_THAT(server, IsOk());
      grpc_server_ = *std::move(server);
      port_ = grpc_server_->port();
    } else {
      ConnectFrontEndOptions options;
      options.address = "127.0.0.1:0";
      options.insecure = cert_ == nullptr;
      options.threads = 2;
      if (cert_ != nullptr) {
        options.tls_cert_file = cert_->cert_file();
        options.tls_key_file = cert_->key_file();
      }
      absl::StatusOr<std::unique_ptr<ConnectFrontEnd>> server =
          ConnectFrontEnd::Start(options, &handler_);
      ASSERT_THAT(server, IsOk());
      connect_server_ = *std::move(server);
      port_ = connect_server_->port();
    }
  }

  void TearDown() override {
    if (grpc_server_ != nullptr) grpc_server_->Shutdown();
    if (connect_server_ != nullptr) connect_server_->Shutdown();
  }

  // Options for a transport to the front end under test, trusting its
  // certificate when it has one.
  TransportOptions Options() const {
    TransportOptions options;
    options.kind = GetParam().kind;
    options.server_url = absl::StrCat(cert_ != nullptr ? "https" : "http",
                                      "://127.0.0.1:", port_);
    options.api_key = "key-1";
    if (cert_ != nullptr) options.ca_file = cert_->cert_file();
    return options;
  }

  std::unique_ptr<SyncTransport> MakeTransport(
      const TransportOptions& options) {
    absl::StatusOr<std::unique_ptr<SyncTransport>> transport =
        NewTransport(options);
    EXPECT_THAT(transport, IsOk());
    return transport.ok() ? *std::move(transport) : nullptr;
  }

  std::string Protocol() const {
    return GetParam().kind == "grpc" ? "grpc" : "connect";
  }

  FakeSyncHandler handler_;
  std::unique_ptr<TestCertificate> cert_;
  std::unique_ptr<GrpcFrontEnd> grpc_server_;
  std::unique_ptr<ConnectFrontEnd> connect_server_;
  int port_ = 0;
};

TEST_P(TransportIntegrationTest, EveryUnaryRpcRoundTrips) {
  auto transport = MakeTransport(Options());
  ASSERT_NE(transport, nullptr);

  absl::StatusOr<v1::SyncMetricsResponse> metrics =
      transport->SyncMetrics(MetricsRequest(42), kTimeout);
  ASSERT_THAT(metrics, IsOk());
  EXPECT_TRUE(metrics->success());
  EXPECT_EQ(metrics->last_sequence_ack(), 42);

  v1::SyncLogsRequest logs;
  *logs.mutable_metadata() = Metadata(43);
  logs.mutable_batch()->add_logs()->set_message("boot complete");
  absl::StatusOr<v1::SyncLogsResponse> logs_response =
      transport->SyncLogs(logs, kTimeout);
  ASSERT_THAT(logs_response, IsOk());
  EXPECT_EQ(logs_response->last_sequence_ack(), 43);

  v1::SyncEventsRequest events;
  *events.mutable_metadata() = Metadata(44);
  events.mutable_batch()->add_events()->set_name("door_opened");
  absl::StatusOr<v1::SyncEventsResponse> events_response =
      transport->SyncEvents(events, kTimeout);
  ASSERT_THAT(events_response, IsOk());
  EXPECT_EQ(events_response->last_sequence_ack(), 44);

  v1::GetSyncConfigRequest config;
  config.set_device_id("dev-1");
  config.mutable_capability()->set_tier(2);
  absl::StatusOr<v1::GetSyncConfigResponse> config_response =
      transport->GetSyncConfig(config, kTimeout);
  ASSERT_THAT(config_response, IsOk());
  EXPECT_EQ(config_response->config().batch_size(), 102);
  EXPECT_EQ(config_response->metrics_endpoint(), "metrics/dev-1");

  v1::UpdateDeviceInfoRequest info;
  *info.mutable_metadata() = Metadata(45);
  info.mutable_info()->set_hostname("pi-7");
  absl::StatusOr<v1::UpdateDeviceInfoResponse> info_response =
      transport->UpdateDeviceInfo(info, kTimeout);
  ASSERT_THAT(info_response, IsOk());
  EXPECT_TRUE(info_response->success());

  // The server saw each call with the API key, the protocol and a deadline.
  std::vector<RecordedCall> calls = handler_.calls();
  ASSERT_EQ(calls.size(), 5u);
  std::vector<std::string> methods;
  for (const RecordedCall& call : calls) {
    methods.push_back(call.method);
    EXPECT_EQ(call.context.api_key, "key-1") << call.method;
    EXPECT_EQ(call.context.protocol, Protocol()) << call.method;
    EXPECT_NE(call.context.deadline, absl::InfiniteFuture()) << call.method;
  }
  EXPECT_THAT(methods,
              ::testing::ElementsAre("SyncMetrics", "SyncLogs", "SyncEvents",
                                     "GetSyncConfig", "UpdateDeviceInfo"));
  const TransportStats stats = transport->stats();
  EXPECT_EQ(stats.calls, 5);
  EXPECT_EQ(stats.failures, 0);
  EXPECT_GT(stats.bytes_sent, 0);
  EXPECT_GT(stats.bytes_received, 0);
}

TEST_P(TransportIntegrationTest, GzipRequestsAreAccepted) {
  TransportOptions options = Options();
  options.compression = "gzip";
  auto transport = MakeTransport(options);
  ASSERT_NE(transport, nullptr);
  const v1::SyncMetricsRequest request = MetricsRequest(7);
  absl::StatusOr<v1::SyncMetricsResponse> response =
      transport->SyncMetrics(request, kTimeout);
  ASSERT_THAT(response, IsOk());
  EXPECT_EQ(response->last_sequence_ack(), 7);
  auto* received = dynamic_cast<v1::SyncMetricsRequest*>(
      handler_.calls().at(0).request.get());
  ASSERT_NE(received, nullptr);
  EXPECT_EQ(received->SerializeAsString(), request.SerializeAsString());
}

TEST_P(TransportIntegrationTest, ErrorKeepsCodeMessageAndRetryHint) {
  handler_.SetStatus("SyncMetrics",
                     WithRetryAfter(absl::ResourceExhaustedError("overloaded"),
                                    absl::Milliseconds(1500)));
  auto transport = MakeTransport(Options());
  ASSERT_NE(transport, nullptr);
  absl::StatusOr<v1::SyncMetricsResponse> response =
      transport->SyncMetrics(MetricsRequest(1), kTimeout);
  EXPECT_THAT(response,
              StatusIs(absl::StatusCode::kResourceExhausted, "overloaded"));
  EXPECT_THAT(GetRetryAfter(response.status()),
              Optional(absl::Milliseconds(1500)));
  EXPECT_EQ(transport->stats().failures, 1);
}

TEST_P(TransportIntegrationTest, ErrorsWithoutRetryHintKeepTheirCode) {
  handler_.SetStatus("SyncLogs", absl::UnauthenticatedError("unknown key"));
  handler_.SetStatus("GetSyncConfig",
                     absl::PermissionDeniedError("device mismatch"));
  auto transport = MakeTransport(Options());
  ASSERT_NE(transport, nullptr);
  absl::StatusOr<v1::SyncLogsResponse> logs = transport->SyncLogs({}, kTimeout);
  EXPECT_THAT(logs,
              StatusIs(absl::StatusCode::kUnauthenticated, "unknown key"));
  EXPECT_EQ(GetRetryAfter(logs.status()), std::nullopt);
  EXPECT_THAT(transport->GetSyncConfig({}, kTimeout),
              StatusIs(absl::StatusCode::kPermissionDenied, "device mismatch"));
}

// StreamSync needs HTTP/2: gRPC only.
class GrpcStreamIntegrationTest : public TransportIntegrationTest {};

TEST_P(GrpcStreamIntegrationTest, StreamSyncRoundTrips) {
  auto transport = MakeTransport(Options());
  ASSERT_NE(transport, nullptr);
  absl::StatusOr<std::unique_ptr<SyncStream>> stream = transport->OpenStream();
  ASSERT_THAT(stream, IsOk());
  for (int64_t seq = 1; seq <= 3; ++seq) {
    v1::StreamSyncRequest request;
    *request.mutable_metadata() = Metadata(seq);
    *request.mutable_metrics() = MetricsRequest(seq).batch();
    ASSERT_THAT((*stream)->Write(request), IsOk());
  }
  for (int64_t seq = 1; seq <= 3; ++seq) {
    absl::StatusOr<v1::StreamSyncResponse> ack = (*stream)->Read(kTimeout);
    ASSERT_THAT(ack, IsOk());
    EXPECT_EQ(ack->ack().sequence_number(), seq);
    EXPECT_TRUE(ack->ack().success());
  }
  ASSERT_THAT((*stream)->CloseSend(), IsOk());
  EXPECT_THAT((*stream)->Read(kTimeout),
              StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_THAT((*stream)->Finish(kTimeout), IsOk());
  EXPECT_EQ(handler_.stream_messages().size(), 3u);
  EXPECT_EQ(handler_.stream_finishes(), 1);
  EXPECT_EQ(handler_.calls().at(0).context.api_key, "key-1");
}

TEST_P(GrpcStreamIntegrationTest, StreamErrorEndsTheCallWithItsStatus) {
  handler_.FailStreamAtMessage(
      2, WithRetryAfter(absl::UnavailableError("backend down"),
                        absl::Milliseconds(250)));
  auto transport = MakeTransport(Options());
  ASSERT_NE(transport, nullptr);
  absl::StatusOr<std::unique_ptr<SyncStream>> stream = transport->OpenStream();
  ASSERT_THAT(stream, IsOk());
  for (int64_t seq = 1; seq <= 2; ++seq) {
    v1::StreamSyncRequest request;
    *request.mutable_metadata() = Metadata(seq);
    request.mutable_logs()->add_logs()->set_message("x");
    ASSERT_THAT((*stream)->Write(request), IsOk());
  }
  EXPECT_THAT((*stream)->Read(kTimeout), IsOk());  // ack of the first
  EXPECT_THAT((*stream)->Read(kTimeout),
              StatusIs(absl::StatusCode::kOutOfRange));
  absl::Status finished = (*stream)->Finish(kTimeout);
  EXPECT_THAT(finished,
              StatusIs(absl::StatusCode::kUnavailable, "backend down"));
  EXPECT_THAT(GetRetryAfter(finished), Optional(absl::Milliseconds(250)));
}

class ConnectStreamIntegrationTest : public TransportIntegrationTest {};

TEST_P(ConnectStreamIntegrationTest, StreamSyncIsUnimplementedOverHttp1) {
  auto transport = MakeTransport(Options());
  ASSERT_NE(transport, nullptr);
  EXPECT_THAT(transport->OpenStream(),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("HTTP/2")));
  EXPECT_EQ(handler_.call_count(), 0);
}

// TLS failures: both transports, TLS front ends only.
class TlsIntegrationTest : public TransportIntegrationTest {};

TEST_P(TlsIntegrationTest, UntrustedCertificateIsUnavailable) {
  // The system roots do not include the test's self-signed certificate.
  TransportOptions options = Options();
  options.ca_file = "";
  auto transport = MakeTransport(options);
  ASSERT_NE(transport, nullptr);
  EXPECT_THAT(transport->SyncMetrics(MetricsRequest(1), kTimeout),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(handler_.call_count(), 0);
}

TEST_P(TlsIntegrationTest, PlaintextClientToTlsServerIsUnavailable) {
  TransportOptions options = Options();
  options.server_url = absl::StrCat("http://127.0.0.1:", port_);
  options.ca_file = "";
  auto transport = MakeTransport(options);
  ASSERT_NE(transport, nullptr);
  EXPECT_THAT(transport->GetSyncConfig({}, absl::Seconds(10)),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(handler_.call_count(), 0);
}

INSTANTIATE_TEST_SUITE_P(AllTransports, TransportIntegrationTest,
                         ::testing::Values(Setup{"grpc", false},
                                           Setup{"grpc", true},
                                           Setup{"connect", false},
                                           Setup{"connect", true}),
                         SetupName);
INSTANTIATE_TEST_SUITE_P(Grpc, GrpcStreamIntegrationTest,
                         ::testing::Values(Setup{"grpc", false},
                                           Setup{"grpc", true}),
                         SetupName);
INSTANTIATE_TEST_SUITE_P(Connect, ConnectStreamIntegrationTest,
                         ::testing::Values(Setup{"connect", false},
                                           Setup{"connect", true}),
                         SetupName);
INSTANTIATE_TEST_SUITE_P(Tls, TlsIntegrationTest,
                         ::testing::Values(Setup{"grpc", true},
                                           Setup{"connect", true}),
                         SetupName);

}  // namespace
}  // namespace fleetd::agent
