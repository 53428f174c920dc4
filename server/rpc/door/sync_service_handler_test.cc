#include "server/rpc/door/sync_service_handler.h"

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "common/codec/codec.h"
#include "common/concurrency/timer_queue.h"
#include "common/concurrency/worker_pool.h"
#include "common/metrics/metrics.h"
#include "common/status/retry_after.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "fleetd/v1/sync.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/rpc/connect/connect_protocol.h"
#include "server/rpc/http/exchange.h"
#include "server/rpc/testing/fake_exchange.h"
#include "server/rpc/testing/fake_sync_handler.h"

namespace fleetd::server::rpc {
namespace {

using ::fleetd::server::testing::FakeExchange;
using ::fleetd::server::testing::FakeSyncHandler;
using ::fleetd::server::testing::RecordedCall;
using ::fleetd::testing::IsOk;
using ::fleetd::testing::WaitFor;
using http::Headers;
using http::HttpVersion;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr absl::Duration kWait = absl::Seconds(10);
constexpr char kPeer[] = "192.0.2.7:4711";
constexpr char kApiKey[] = "key-1";

std::string Path(const std::string& method) {
  return "/fleetd.v1.SyncService/" + method;
}

// A FakeSyncHandler whose SyncMetrics waits for a gate, so a test can act
// while the handler runs.
class GatedSyncHandler final : public FakeSyncHandler {
 public:
  absl::StatusOr<v1::SyncMetricsResponse> SyncMetrics(
      const CallContext& context,
      const v1::SyncMetricsRequest& request) override {
    entered_.Notify();
    gate_.WaitForNotificationWithTimeout(kWait);
    return FakeSyncHandler::SyncMetrics(context, request);
  }
  absl::Notification& entered() { return entered_; }
  absl::Notification& gate() { return gate_; }

 private:
  absl::Notification entered_;
  absl::Notification gate_;
};

v1::SyncMetricsRequest MetricsRequest(int64_t sequence) {
  v1::SyncMetricsRequest request;
  request.mutable_metadata()->set_device_id("dev-1");
  request.mutable_metadata()->set_sequence_number(sequence);
  request.mutable_batch()->add_metrics()->set_name("cpu");
  return request;
}

std::string Frame(uint8_t flags, absl::string_view payload) {
  std::string out;
  connect::AppendEnvelope(flags, payload, &out);
  return out;
}

std::vector<connect::Envelope> Frames(absl::string_view body) {
  absl::StatusOr<std::vector<connect::Envelope>> frames =
      connect::ParseEnvelopes(body, 1 << 30);
  EXPECT_THAT(frames, IsOk());
  return frames.ok() ? *frames : std::vector<connect::Envelope>{};
}

// A FakeSyncHandler whose SyncMetricsAsync returns at once and answers only
// when the test says so, from the test's thread (as SyncCore answers from a
// backend's flusher).
class DeferredSyncHandler final : public FakeSyncHandler {
 public:
  void SyncMetricsAsync(const CallContext& context,
                        const v1::SyncMetricsRequest& request,
                        Reply<v1::SyncMetricsResponse> done) override {
    absl::StatusOr<v1::SyncMetricsResponse> answer =
        FakeSyncHandler::SyncMetrics(context, request);
    absl::MutexLock lock(&mu_);
    pending_.push_back({std::move(answer), std::move(done)});
  }
  size_t pending() {
    absl::MutexLock lock(&mu_);
    return pending_.size();
  }
  // Answers every call received so far.
  void AnswerAll() {
    std::vector<Pending> answering;
    {
      absl::MutexLock lock(&mu_);
      answering.swap(pending_);
    }
    for (Pending& p : answering) std::move(p.done)(std::move(p.answer));
  }

 private:
  struct Pending {
    absl::StatusOr<v1::SyncMetricsResponse> answer;
    Reply<v1::SyncMetricsResponse> done;
  };
  absl::Mutex mu_;
  std::vector<Pending> pending_ ABSL_GUARDED_BY(mu_);
};

class SyncServiceHandlerTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(); }

  void Start(int32_t threads = 2, int64_t max_queued = 16,
             int64_t max_message_bytes = int64_t{16} << 20,
             bool stream_timers = true) {
    WorkerPool::Options pool;
    pool.name = "door-test";
    pool.threads = threads;
    pool.max_queued = max_queued;
    absl::StatusOr<std::unique_ptr<WorkerPool>> workers =
        WorkerPool::Start(pool);
    ASSERT_THAT(workers, IsOk());
    if (workers_ != nullptr) workers_->Shutdown();
    workers_ = *std::move(workers);
    DoorOptions options;
    options.max_message_bytes = max_message_bytes;
    options.workers = workers_.get();
    options.clock = &clock_;
    options.metrics = &registry_;
    options.overload_retry_after = absl::Milliseconds(1500);
    options.timers = stream_timers ? &timers_ : nullptr;
    door_ = NewSyncServiceHandler(handler(), options);
  }

  void TearDown() override { workers_->Shutdown(); }

  virtual SyncHandler* handler() { return &handler_; }

  // Runs one exchange: headers, the body in one piece (if any), the end.
  std::shared_ptr<FakeExchange> Serve(
      const std::string& method, const std::string& path, Headers headers,
      const std::string& body, HttpVersion version = HttpVersion::kHttp2) {
    auto exchange = std::make_shared<FakeExchange>(method, path,
                                                   std::move(headers), version);
    std::unique_ptr<http::RequestObserver> observer = door_(exchange);
    EXPECT_NE(observer, nullptr);
    if (!body.empty()) observer->OnData(body);
    observer->OnEnd();
    EXPECT_TRUE(exchange->WaitForEnd()) << "no response";
    return exchange;
  }

  std::shared_ptr<FakeExchange> Grpc(const std::string& method,
                                     const std::string& body,
                                     Headers extra = {}) {
    Headers headers = {{"content-type", "application/grpc"},
                       {"te", "trailers"},
                       {"x-api-key", kApiKey}};
    headers.insert(headers.end(), extra.begin(), extra.end());
    return Serve("POST", Path(method), std::move(headers), body);
  }

  std::shared_ptr<FakeExchange> Connect(
      const std::string& method, const std::string& body, Headers extra = {},
      const std::string& type = "application/proto") {
    Headers headers = {{"content-type", type},
                       {"connect-protocol-version", "1"},
                       {"x-api-key", kApiKey}};
    headers.insert(headers.end(), extra.begin(), extra.end());
    return Serve("POST", Path(method), std::move(headers), body,
                 HttpVersion::kHttp11);
  }

  std::shared_ptr<FakeExchange> GrpcWeb(
      const std::string& method, const std::string& body,
      const std::string& type = "application/grpc-web+proto") {
    return Serve("POST", Path(method),
                 {{"content-type", type}, {"x-api-key", kApiKey}}, body,
                 HttpVersion::kHttp11);
  }

  // Checks the one recorded call: a SyncMetrics with sequence `sequence`
  // over `protocol`, deadline `deadline`.
  void ExpectMetricsCall(const std::string& protocol, int64_t sequence,
                         absl::Time deadline) {
    std::vector<RecordedCall> calls = handler_.calls();
    ASSERT_EQ(calls.size(), 1u);
    EXPECT_EQ(calls[0].method, "SyncMetrics");
    EXPECT_EQ(calls[0].context.api_key, kApiKey);
    EXPECT_EQ(calls[0].context.peer, kPeer);
    EXPECT_EQ(calls[0].context.protocol, protocol);
    EXPECT_EQ(calls[0].context.deadline, deadline);
    const auto* request =
        dynamic_cast<const v1::SyncMetricsRequest*>(calls[0].request.get());
    ASSERT_NE(request, nullptr);
    EXPECT_EQ(request->metadata().sequence_number(), sequence);
    EXPECT_EQ(request->metadata().device_id(), "dev-1");
  }

  // The one data frame of a gRPC response, decoded.
  v1::SyncMetricsResponse GrpcResponse(const FakeExchange& exchange) {
    v1::SyncMetricsResponse response;
    std::vector<connect::Envelope> frames = Frames(exchange.body());
    EXPECT_EQ(frames.size(), 1u);
    if (frames.size() == 1) {
      EXPECT_EQ(frames[0].flags, 0);
      EXPECT_TRUE(response.ParseFromString(frames[0].payload));
    }
    return response;
  }

  // A gRPC-Web body: the data frames' payloads and the trailers frame's text.
  struct GrpcWebBody {
    std::vector<std::string> messages;
    std::string trailers;
  };
  GrpcWebBody ParseGrpcWeb(const std::string& body) {
    GrpcWebBody out;
    std::vector<connect::Envelope> frames = Frames(body);
    for (size_t i = 0; i < frames.size(); ++i) {
      if (frames[i].flags & connect::kFlagGrpcTrailers) {
        EXPECT_EQ(i, frames.size() - 1) << "trailers frame not last";
        out.trailers = frames[i].payload;
      } else {
        out.messages.push_back(frames[i].payload);
      }
    }
    return out;
  }

  std::string Metrics() const { return registry_.Render(); }

  // Keeps a worker busy until `release` is notified; true once it is.
  bool OccupyWorker(absl::Notification& release) {
    auto running = std::make_shared<absl::Notification>();
    absl::Status submitted =
        workers_->Submit([running, &release](absl::Status) {
          running->Notify();
          release.WaitForNotificationWithTimeout(kWait);
        });
    return submitted.ok() && running->WaitForNotificationWithTimeout(kWait);
  }

  FakeSyncHandler handler_;
  SimulatedClock clock_;
  // Outlives the calls (they cancel their timers when they end).
  TimerQueue timers_{&clock_};
  metrics::Registry registry_;
  std::unique_ptr<WorkerPool> workers_;
  http::ExchangeHandler door_;
};

// ---- Success, per protocol ------------------------------------------------

TEST_F(SyncServiceHandlerTest, GrpcSyncMetrics) {
  auto ex = Grpc("SyncMetrics", Frame(0, MetricsRequest(7).SerializeAsString()),
                 {{"grpc-timeout", "5S"}});
  EXPECT_EQ(ex->status(), 200);
  EXPECT_EQ(ex->header("content-type"), "application/grpc");
  EXPECT_FALSE(ex->headers_ended());
  EXPECT_EQ(GrpcResponse(*ex).last_sequence_ack(), 7);
  EXPECT_EQ(ex->trailer("grpc-status"), "0");
  ExpectMetricsCall("grpc", 7, clock_.Now() + absl::Seconds(5));
  EXPECT_THAT(Metrics(),
              HasSubstr("fleetd_rpc_frontend_requests_total{protocol=\"grpc\","
                        "method=\"SyncMetrics\",code=\"OK\"} 1"));
}

TEST_F(SyncServiceHandlerTest, GrpcWebSyncMetrics) {
  auto ex = Serve("POST", Path("SyncMetrics"),
                  {{"content-type", "application/grpc-web+proto"},
                   {"x-api-key", kApiKey},
                   {"grpc-timeout", "250m"}},
                  Frame(0, MetricsRequest(8).SerializeAsString()),
                  HttpVersion::kHttp11);
  EXPECT_EQ(ex->status(), 200);
  EXPECT_EQ(ex->header("content-type"), "application/grpc-web+proto");
  EXPECT_FALSE(ex->has_trailers());
  GrpcWebBody body = ParseGrpcWeb(ex->body());
  ASSERT_EQ(body.messages.size(), 1u);
  v1::SyncMetricsResponse response;
  ASSERT_TRUE(response.ParseFromString(body.messages[0]));
  EXPECT_EQ(response.last_sequence_ack(), 8);
  EXPECT_EQ(body.trailers, "grpc-status: 0\r\n");
  ExpectMetricsCall("grpc-web", 8, clock_.Now() + absl::Milliseconds(250));
}

TEST_F(SyncServiceHandlerTest, GrpcWebTextSyncMetrics) {
  auto ex = GrpcWeb(
      "SyncMetrics",
      absl::Base64Escape(Frame(0, MetricsRequest(9).SerializeAsString())),
      "application/grpc-web-text");
  EXPECT_EQ(ex->status(), 200);
  std::string raw;
  ASSERT_TRUE(absl::Base64Unescape(ex->body(), &raw));
  GrpcWebBody body = ParseGrpcWeb(raw);
  ASSERT_EQ(body.messages.size(), 1u);
  v1::SyncMetricsResponse response;
  ASSERT_TRUE(response.ParseFromString(body.messages[0]));
  EXPECT_EQ(response.last_sequence_ack(), 9);
  ExpectMetricsCall("grpc-web", 9, absl::InfiniteFuture());
}

TEST_F(SyncServiceHandlerTest, ConnectProtoSyncMetrics) {
  auto ex = Connect("SyncMetrics", MetricsRequest(10).SerializeAsString(),
                    {{"connect-timeout-ms", "1500"}});
  EXPECT_EQ(ex->status(), 200);
  EXPECT_EQ(ex->header("content-type"), "application/proto");
  v1::SyncMetricsResponse response;
  ASSERT_TRUE(response.ParseFromString(ex->body()));
  EXPECT_EQ(response.last_sequence_ack(), 10);
  EXPECT_EQ(ex->header("content-length"), absl::StrCat(ex->body().size()));
  ExpectMetricsCall("connect", 10, clock_.Now() + absl::Milliseconds(1500));
}

TEST_F(SyncServiceHandlerTest, ConnectJsonSyncMetrics) {
  auto ex =
      Connect("SyncMetrics",
              R"({"metadata":{"deviceId":"dev-1","sequenceNumber":"11"}})", {},
              "application/json");
  EXPECT_EQ(ex->status(), 200);
  EXPECT_EQ(ex->header("content-type"), "application/json");
  EXPECT_THAT(ex->body(), HasSubstr("\"lastSequenceAck\":\"11\""));
  ExpectMetricsCall("connect", 11, absl::InfiniteFuture());
}

// ---- Request compression --------------------------------------------------

class CompressionTest : public SyncServiceHandlerTest,
                        public ::testing::WithParamInterface<Compression> {};

TEST_P(CompressionTest, Grpc) {
  absl::StatusOr<std::string> compressed =
      Compress(GetParam(), MetricsRequest(21).SerializeAsString());
  ASSERT_THAT(compressed, IsOk());
  auto ex = Grpc("SyncMetrics", Frame(connect::kFlagCompressed, *compressed),
                 {{"grpc-encoding", std::string(CompressionName(GetParam()))}});
  EXPECT_EQ(ex->trailer("grpc-status"), "0");
  EXPECT_EQ(GrpcResponse(*ex).last_sequence_ack(), 21);
  ExpectMetricsCall("grpc", 21, absl::InfiniteFuture());
}

TEST_P(CompressionTest, Connect) {
  absl::StatusOr<std::string> compressed =
      Compress(GetParam(), MetricsRequest(22).SerializeAsString());
  ASSERT_THAT(compressed, IsOk());
  auto ex =
      Connect("SyncMetrics", *compressed,
              {{"content-encoding", std::string(CompressionName(GetParam()))}});
  EXPECT_EQ(ex->status(), 200);
  v1::SyncMetricsResponse response;
  ASSERT_TRUE(response.ParseFromString(ex->body()));
  EXPECT_EQ(response.last_sequence_ack(), 22);
}

// A GetSyncConfig answer of well over kCompressMinBytes.
v1::GetSyncConfigResponse LargeConfig() {
  v1::GetSyncConfigResponse response;
  response.mutable_config()->set_compression_type(std::string(4000, 'm'));
  return response;
}

std::string ConfigRequest() {
  v1::GetSyncConfigRequest request;
  request.set_device_id("dev-1");
  return request.SerializeAsString();
}

TEST_P(CompressionTest, ResponsesInTheCodingTheClientAccepts) {
  handler_.SetConfigResponse(LargeConfig());
  const std::string name(CompressionName(GetParam()));
  // Connect unary: Accept-Encoding, Content-Encoding on the response.
  auto connect =
      Connect("GetSyncConfig", ConfigRequest(), {{"accept-encoding", name}});
  EXPECT_EQ(connect->header("content-encoding"), name);
  absl::StatusOr<std::string> body =
      Decompress(GetParam(), connect->body(), 1 << 20);
  ASSERT_THAT(body, IsOk());
  v1::GetSyncConfigResponse config;
  ASSERT_TRUE(config.ParseFromString(*body));
  EXPECT_EQ(config.config().compression_type().size(), 4000u);
  // gRPC: only with grpc-accept-encoding; grpc-encoding names it and the
  // message carries the compressed flag.
  auto grpc = Grpc("GetSyncConfig", Frame(0, ConfigRequest()),
                   {{"grpc-accept-encoding", name}});
  EXPECT_EQ(grpc->header("grpc-encoding"), name);
  std::vector<connect::Envelope> frames = Frames(grpc->body());
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].flags, connect::kFlagCompressed);
  body = Decompress(GetParam(), frames[0].payload, 1 << 20);
  ASSERT_THAT(body, IsOk());
  ASSERT_TRUE(config.ParseFromString(*body));
  EXPECT_EQ(config.config().compression_type().size(), 4000u);
}

TEST_F(SyncServiceHandlerTest, SmallOrUnacceptedResponsesGoUncompressed) {
  // Small: the ack is under kCompressMinBytes.
  auto small = Connect("SyncMetrics", MetricsRequest(3).SerializeAsString(),
                       {{"accept-encoding", "gzip"}});
  EXPECT_EQ(small->header("content-encoding"), std::nullopt);
  // gRPC without grpc-accept-encoding: never compressed.
  handler_.SetConfigResponse(LargeConfig());
  auto grpc = Grpc("GetSyncConfig", Frame(0, ConfigRequest()));
  EXPECT_EQ(grpc->header("grpc-encoding"), std::nullopt);
  std::vector<connect::Envelope> frames = Frames(grpc->body());
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].flags, 0);
}

INSTANTIATE_TEST_SUITE_P(Codings, CompressionTest,
                         ::testing::Values(Compression::kGzip,
                                           Compression::kZstd));

TEST_F(SyncServiceHandlerTest, UnknownGrpcEncodingIsUnimplemented) {
  auto ex = Grpc("SyncMetrics", Frame(1, "xx"), {{"grpc-encoding", "br"}});
  EXPECT_TRUE(ex->headers_ended());
  EXPECT_EQ(ex->header("grpc-status"), "12");
  EXPECT_EQ(ex->header("grpc-accept-encoding"), "gzip,zstd");
  EXPECT_THAT(handler_.calls(), IsEmpty());
}

TEST_F(SyncServiceHandlerTest, CompressedFlagWithoutEncodingIsInternal) {
  auto ex = Grpc("SyncMetrics", Frame(connect::kFlagCompressed, "xx"));
  EXPECT_EQ(ex->header("grpc-status"), "13");
  EXPECT_THAT(handler_.calls(), IsEmpty());
}

// ---- Error mapping --------------------------------------------------------

absl::Status Overloaded() {
  return WithRetryAfter(absl::ResourceExhaustedError("overloaded"),
                        absl::Milliseconds(1500));
}

// A body no protobuf parser accepts (a truncated varint tag).
constexpr char kUnparsable[] = "\xff";

TEST_F(SyncServiceHandlerTest, GrpcErrorIsTrailersOnlyWithRetryHint) {
  handler_.SetStatus("SyncMetrics", Overloaded());
  auto ex =
      Grpc("SyncMetrics", Frame(0, MetricsRequest(1).SerializeAsString()));
  EXPECT_EQ(ex->status(), 200);
  EXPECT_TRUE(ex->headers_ended());  // one header block, end of stream
  EXPECT_EQ(ex->header("content-type"), "application/grpc");
  EXPECT_EQ(ex->header("grpc-status"), "8");
  EXPECT_EQ(ex->header("grpc-message"), "overloaded");
  EXPECT_EQ(ex->header("retry-after-ms"), "1500");
  EXPECT_EQ(ex->header("fleetd-verdict"), std::nullopt);
  EXPECT_EQ(ex->body(), "");
  EXPECT_THAT(Metrics(),
              HasSubstr("fleetd_rpc_frontend_requests_total{protocol=\"grpc\","
                        "method=\"SyncMetrics\",code=\"RESOURCE_EXHAUSTED\"} "
                        "1"));
}

TEST_F(SyncServiceHandlerTest, GrpcUnparsableBatchIsRejected) {
  auto ex = Grpc("SyncMetrics", Frame(0, kUnparsable));
  EXPECT_TRUE(ex->headers_ended());
  EXPECT_EQ(ex->header("grpc-status"), "3");
  EXPECT_EQ(ex->header("fleetd-verdict"), "rejected");
  EXPECT_THAT(handler_.calls(), IsEmpty());
}

TEST_F(SyncServiceHandlerTest, GrpcMessageIsPercentEncoded) {
  handler_.SetStatus("SyncMetrics",
                     absl::UnavailableError("store 100% down\n"));
  auto ex =
      Grpc("SyncMetrics", Frame(0, MetricsRequest(1).SerializeAsString()));
  EXPECT_EQ(ex->header("grpc-status"), "14");
  EXPECT_EQ(ex->header("grpc-message"), "store 100%25 down%0A");
}

TEST_F(SyncServiceHandlerTest, ConnectErrorIsJsonWithRetryHeaders) {
  handler_.SetStatus("SyncMetrics", Overloaded());
  auto ex = Connect("SyncMetrics", MetricsRequest(1).SerializeAsString());
  EXPECT_EQ(ex->status(), 429);
  EXPECT_EQ(ex->header("content-type"), "application/json");
  EXPECT_EQ(ex->body(),
            R"({"code":"resource_exhausted","message":"overloaded"})");
  EXPECT_EQ(ex->header("retry-after"), "2");
  EXPECT_EQ(ex->header("trailer-retry-after-ms"), "1500");
  EXPECT_EQ(ex->header("trailer-fleetd-verdict"), std::nullopt);
  EXPECT_THAT(
      Metrics(),
      HasSubstr("fleetd_rpc_frontend_requests_total{protocol=\"connect\","
                "method=\"SyncMetrics\",code=\"RESOURCE_EXHAUSTED\"} 1"));
}

TEST_F(SyncServiceHandlerTest, ConnectUnparsableBatchIsRejected) {
  auto ex = Connect("SyncLogs", kUnparsable);
  EXPECT_EQ(ex->status(), 400);
  EXPECT_THAT(ex->body(), HasSubstr("\"code\":\"invalid_argument\""));
  EXPECT_EQ(ex->header("trailer-fleetd-verdict"), "rejected");
}

TEST_F(SyncServiceHandlerTest, ConnectUnparsableConfigRequestIsNotRejected) {
  auto ex = Connect("GetSyncConfig", kUnparsable);
  EXPECT_EQ(ex->status(), 400);
  EXPECT_EQ(ex->header("trailer-fleetd-verdict"), std::nullopt);
}

TEST_F(SyncServiceHandlerTest, ConnectWrongProtocolVersion) {
  auto ex = Serve("POST", Path("SyncMetrics"),
                  {{"content-type", "application/proto"},
                   {"connect-protocol-version", "2"}},
                  MetricsRequest(1).SerializeAsString(), HttpVersion::kHttp11);
  EXPECT_EQ(ex->status(), 400);
  EXPECT_THAT(ex->body(), HasSubstr("connect-protocol-version"));
  EXPECT_THAT(handler_.calls(), IsEmpty());
}

TEST_F(SyncServiceHandlerTest, GrpcWebErrorIsTrailerFrame) {
  handler_.SetStatus("SyncMetrics", Overloaded());
  auto ex =
      GrpcWeb("SyncMetrics", Frame(0, MetricsRequest(1).SerializeAsString()));
  EXPECT_EQ(ex->status(), 200);
  GrpcWebBody body = ParseGrpcWeb(ex->body());
  EXPECT_THAT(body.messages, IsEmpty());
  EXPECT_EQ(body.trailers,
            "grpc-status: 8\r\ngrpc-message: overloaded\r\n"
            "retry-after-ms: 1500\r\n");

  auto rejected = GrpcWeb("SyncEvents", Frame(0, kUnparsable));
  GrpcWebBody rejected_body = ParseGrpcWeb(rejected->body());
  EXPECT_THAT(rejected_body.trailers, HasSubstr("grpc-status: 3\r\n"));
  EXPECT_THAT(rejected_body.trailers, HasSubstr("fleetd-verdict: rejected"));
}

// ---- Framing and limits ---------------------------------------------------

TEST_F(SyncServiceHandlerTest, BodyOverLimitIsRefusedBeforeTheEnd) {
  Start(/*threads=*/2, /*max_queued=*/16, /*max_message_bytes=*/1024);
  for (bool grpc : {true, false}) {
    auto exchange = std::make_shared<FakeExchange>(
        "POST", Path("SyncMetrics"),
        Headers{
            {"content-type", grpc ? "application/grpc" : "application/proto"}},
        HttpVersion::kHttp2);
    std::unique_ptr<http::RequestObserver> observer = door_(exchange);
    observer->OnData(std::string(1000, 'a'));
    EXPECT_FALSE(exchange->ended());
    observer->OnData(std::string(1000, 'a'));
    // Answered at once, without OnEnd.
    ASSERT_TRUE(exchange->ended());
    if (grpc) {
      EXPECT_EQ(exchange->header("grpc-status"), "8");
    } else {
      EXPECT_EQ(exchange->status(), 429);
      EXPECT_THAT(exchange->body(), HasSubstr("resource_exhausted"));
    }
    observer->OnData(std::string(1000, 'a'));
    observer->OnEnd();
  }
  EXPECT_THAT(handler_.calls(), IsEmpty());
}

TEST_F(SyncServiceHandlerTest, MalformedEnvelopes) {
  // Truncated: the header declares 100 bytes, 3 follow.
  std::string truncated = Frame(0, std::string(100, 'x')).substr(0, 8);
  EXPECT_EQ(Grpc("SyncMetrics", truncated)->header("grpc-status"), "3");
  // Two messages for a unary method: a cardinality violation.
  std::string two = Frame(0, MetricsRequest(1).SerializeAsString()) +
                    Frame(0, MetricsRequest(2).SerializeAsString());
  auto ex = Grpc("SyncMetrics", two);
  EXPECT_EQ(ex->header("grpc-status"), "12");
  EXPECT_THAT(ex->header("grpc-message").value_or(""),
              HasSubstr("exactly one message"));
  // Not base64.
  auto text = GrpcWeb("SyncMetrics", "!!!!", "application/grpc-web-text");
  std::string raw;
  ASSERT_TRUE(absl::Base64Unescape(text->body(), &raw));
  EXPECT_THAT(ParseGrpcWeb(raw).trailers, HasSubstr("grpc-status: 3\r\n"));
  EXPECT_THAT(handler_.calls(), IsEmpty());
}

// ---- Routing --------------------------------------------------------------

TEST_F(SyncServiceHandlerTest, UnknownMethod) {
  auto grpc = Grpc("NoSuchMethod", Frame(0, ""));
  EXPECT_EQ(grpc->status(), 200);
  EXPECT_TRUE(grpc->headers_ended());
  EXPECT_EQ(grpc->header("grpc-status"), "12");

  auto connect = Connect("NoSuchMethod", "");
  EXPECT_EQ(connect->status(), 404);
  EXPECT_THAT(connect->body(), HasSubstr(R"({"code":"unimplemented")"));

  auto other = Serve("POST", "/other.Service/Call",
                     {{"content-type", "application/grpc"}}, "");
  EXPECT_EQ(other->status(), 404);
  EXPECT_TRUE(other->headers_ended());
  EXPECT_THAT(handler_.calls(), IsEmpty());
}

TEST_F(SyncServiceHandlerTest, WrongContentTypeIs415) {
  auto ex = Serve("POST", Path("SyncMetrics"), {{"content-type", "text/plain"}},
                  "hello", HttpVersion::kHttp11);
  EXPECT_EQ(ex->status(), 415);
  EXPECT_THAT(ex->header("accept-post").value_or(""),
              HasSubstr("application/grpc"));
  EXPECT_THAT(ex->header("accept-post").value_or(""),
              HasSubstr("application/proto"));
  // A streaming content type for a unary method.
  auto stream = Connect("SyncMetrics", "", {}, "application/connect+proto");
  EXPECT_EQ(stream->status(), 415);
}

TEST_F(SyncServiceHandlerTest, ConnectGetGetSyncConfig) {
  v1::GetSyncConfigRequest request;
  request.set_device_id("dev-9");
  request.mutable_capability()->set_tier(2);
  std::string message;
  absl::WebSafeBase64Escape(request.SerializeAsString(), &message);
  auto ex = Serve("GET",
                  Path("GetSyncConfig") +
                      "?connect=v1&encoding=proto&base64=1&message=" + message,
                  {{"x-api-key", kApiKey}}, "", HttpVersion::kHttp11);
  EXPECT_EQ(ex->status(), 200);
  EXPECT_EQ(ex->header("content-type"), "application/proto");
  // One device's answer: no shared cache may give it to another.
  EXPECT_EQ(ex->header("cache-control"), "private, no-cache");
  EXPECT_EQ(ex->header("vary"), "Accept-Encoding, X-Api-Key");
  v1::GetSyncConfigResponse response;
  ASSERT_TRUE(response.ParseFromString(ex->body()));
  EXPECT_EQ(response.config().batch_size(), 102);
  EXPECT_EQ(response.metrics_endpoint(), "metrics/dev-9");
  std::vector<RecordedCall> calls = handler_.calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].context.protocol, "connect");
  EXPECT_EQ(calls[0].context.api_key, kApiKey);

  // JSON, percent-encoded.
  auto json = Serve("GET",
                    Path("GetSyncConfig") +
                        "?encoding=json&message=%7B%22deviceId%22%3A%22dev-"
                        "3%22%7D",
                    {}, "", HttpVersion::kHttp11);
  EXPECT_EQ(json->status(), 200);
  EXPECT_THAT(json->body(), HasSubstr("metrics/dev-3"));

  // An error answer to a GET is kept out of caches too; a POST's has no
  // caching headers.
  handler_.SetStatus("GetSyncConfig", absl::PermissionDeniedError("revoked"));
  auto denied =
      Serve("GET",
            Path("GetSyncConfig") +
                "?connect=v1&encoding=proto&base64=1&message=" + message,
            {{"x-api-key", kApiKey}}, "", HttpVersion::kHttp11);
  EXPECT_EQ(denied->status(), 403);
  EXPECT_EQ(denied->header("cache-control"), "private, no-cache");
  handler_.SetStatus("GetSyncConfig", absl::OkStatus());
  auto post = Connect("GetSyncConfig", request.SerializeAsString());
  EXPECT_EQ(post->status(), 200);
  EXPECT_EQ(post->header("cache-control"), std::nullopt);
  EXPECT_EQ(post->header("vary"), std::nullopt);
}

TEST_F(SyncServiceHandlerTest, GetOfPostOnlyMethodIs405) {
  auto ex = Serve("GET", Path("SyncMetrics") + "?encoding=proto&message=", {},
                  "", HttpVersion::kHttp11);
  EXPECT_EQ(ex->status(), 405);
  EXPECT_EQ(ex->header("allow"), "POST");
  auto put = Serve("PUT", Path("GetSyncConfig"), {}, "", HttpVersion::kHttp11);
  EXPECT_EQ(put->status(), 405);
  EXPECT_EQ(put->header("allow"), "GET, POST");
  EXPECT_THAT(handler_.calls(), IsEmpty());
}

TEST_F(SyncServiceHandlerTest, GrpcOverHttp11IsRefused) {
  auto ex = Serve(
      "POST", Path("SyncMetrics"), {{"content-type", "application/grpc"}},
      Frame(0, MetricsRequest(1).SerializeAsString()), HttpVersion::kHttp11);
  EXPECT_EQ(ex->status(), 505);
  EXPECT_THAT(handler_.calls(), IsEmpty());
}

// ---- StreamSync ------------------------------------------------------------

v1::StreamSyncRequest StreamMetrics(int64_t sequence) {
  v1::StreamSyncRequest request;
  request.mutable_metadata()->set_device_id("dev-1");
  request.mutable_metadata()->set_sequence_number(sequence);
  request.mutable_metrics()->add_metrics()->set_name("cpu");
  return request;
}

std::string StreamFrame(int64_t sequence) {
  return Frame(0, StreamMetrics(sequence).SerializeAsString());
}

// The acks (by sequence) among `frames`' data messages, and whether the
// frames after them hold only `end_flags` frames.
std::vector<int64_t> AckedSequences(
    const std::vector<connect::Envelope>& frames, uint8_t end_flag) {
  std::vector<int64_t> acks;
  for (const connect::Envelope& frame : frames) {
    if (frame.flags & end_flag) continue;
    v1::StreamSyncResponse response;
    EXPECT_TRUE(response.ParseFromString(frame.payload));
    if (response.has_ack()) acks.push_back(response.ack().sequence_number());
  }
  return acks;
}

// A stream whose messages are fed one at a time, its responses read as they
// come.
class OpenStream {
 public:
  OpenStream(const http::ExchangeHandler& door, Headers headers,
             HttpVersion version = HttpVersion::kHttp2)
      : exchange_(std::make_shared<FakeExchange>("POST", Path("StreamSync"),
                                                 std::move(headers), version)),
        observer_(door(exchange_)) {}

  void Send(absl::string_view bytes) { observer_->OnData(bytes); }
  void HalfClose() { observer_->OnEnd(); }
  void Cancel() {
    exchange_->Cancel();
    observer_->OnCancel();
  }
  // Waits for at least `n` complete frames in the response body.
  bool WaitForFrames(size_t n) {
    return WaitFor([&] {
      absl::StatusOr<std::vector<connect::Envelope>> frames =
          connect::ParseEnvelopes(exchange_->body(), 1 << 30);
      return frames.ok() && frames->size() >= n;
    });
  }
  FakeExchange& exchange() { return *exchange_; }
  std::vector<connect::Envelope> frames() { return Frames(exchange_->body()); }

 private:
  std::shared_ptr<FakeExchange> exchange_;
  std::unique_ptr<http::RequestObserver> observer_;
};

Headers GrpcStreamHeaders() {
  return {{"content-type", "application/grpc"},
          {"te", "trailers"},
          {"x-api-key", kApiKey}};
}

TEST_F(SyncServiceHandlerTest, GrpcStreamSyncIsFullDuplex) {
  OpenStream stream(door_, GrpcStreamHeaders());
  stream.Send(StreamFrame(1));
  // The ack arrives while the request is still open.
  ASSERT_TRUE(stream.WaitForFrames(1));
  EXPECT_EQ(stream.exchange().status(), 200);
  EXPECT_EQ(stream.exchange().header("content-type"), "application/grpc");
  EXPECT_FALSE(stream.exchange().ended());
  stream.Send(StreamFrame(2));
  ASSERT_TRUE(stream.WaitForFrames(2));
  stream.HalfClose();
  ASSERT_TRUE(stream.exchange().WaitForEnd());
  EXPECT_EQ(stream.exchange().trailer("grpc-status"), "0");
  EXPECT_THAT(AckedSequences(stream.frames(), 0), ::testing::ElementsAre(1, 2));
  ASSERT_EQ(handler_.stream_messages().size(), 2u);
  EXPECT_EQ(handler_.stream_finishes(), 1);
  std::vector<RecordedCall> calls = handler_.calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].method, "StreamSync");
  EXPECT_EQ(calls[0].context.protocol, "grpc");
  EXPECT_EQ(calls[0].context.api_key, kApiKey);
  EXPECT_EQ(calls[0].context.peer, kPeer);
  EXPECT_THAT(Metrics(), HasSubstr("protocol=\"grpc\",method=\"StreamSync\","
                                   "code=\"OK\"} 1"));
}

TEST_F(SyncServiceHandlerTest, ConnectStreamSyncProtoAndJson) {
  v1::StreamSyncResponse greeting;
  greeting.mutable_pause();
  handler_.SetStreamGreeting(greeting);
  OpenStream proto(door_, {{"content-type", "application/connect+proto"},
                           {"x-api-key", kApiKey}});
  // The greeting the session sends on opening comes before any request.
  ASSERT_TRUE(proto.WaitForFrames(1));
  EXPECT_EQ(proto.exchange().header("content-type"),
            "application/connect+proto");
  proto.Send(StreamFrame(7));
  ASSERT_TRUE(proto.WaitForFrames(2));
  proto.HalfClose();
  ASSERT_TRUE(proto.exchange().WaitForEnd());
  std::vector<connect::Envelope> frames = proto.frames();
  ASSERT_EQ(frames.size(), 3u);
  v1::StreamSyncResponse first;
  ASSERT_TRUE(first.ParseFromString(frames[0].payload));
  EXPECT_TRUE(first.has_pause());
  EXPECT_THAT(AckedSequences(frames, connect::kFlagEndStream),
              ::testing::ElementsAre(7));
  EXPECT_EQ(frames[2].flags, connect::kFlagEndStream);
  EXPECT_EQ(frames[2].payload, "{}");

  OpenStream json(door_, {{"content-type", "application/connect+json"},
                          {"x-api-key", kApiKey}});
  json.Send(Frame(0, R"({"metadata":{"deviceId":"dev-1","sequenceNumber":"9"},)"
                     R"("metrics":{"metrics":[{"name":"cpu"}]}})"));
  json.HalfClose();
  ASSERT_TRUE(json.exchange().WaitForEnd());
  frames = json.frames();
  ASSERT_EQ(frames.size(), 3u);
  EXPECT_THAT(frames[1].payload, HasSubstr(R"("sequenceNumber":"9")"));
  EXPECT_EQ(frames[2].payload, "{}");
}

TEST_F(SyncServiceHandlerTest, StreamResponsesInTheAcceptedCoding) {
  v1::StreamSyncResponse greeting;
  greeting.mutable_config_update()->set_compression_type(
      std::string(4000, 'm'));
  handler_.SetStreamGreeting(greeting);
  OpenStream stream(door_, {{"content-type", "application/connect+proto"},
                            {"connect-accept-encoding", "zstd"},
                            {"x-api-key", kApiKey}});
  stream.Send(StreamFrame(5));
  stream.HalfClose();
  ASSERT_TRUE(stream.exchange().WaitForEnd());
  EXPECT_EQ(stream.exchange().header("connect-content-encoding"), "zstd");
  std::vector<connect::Envelope> frames = stream.frames();
  ASSERT_EQ(frames.size(), 3u);
  // The large greeting compressed, the small ack and the end as they are.
  EXPECT_EQ(frames[0].flags, connect::kFlagCompressed);
  absl::StatusOr<std::string> greeting_bytes =
      Decompress(Compression::kZstd, frames[0].payload, 1 << 20);
  ASSERT_THAT(greeting_bytes, IsOk());
  v1::StreamSyncResponse first;
  ASSERT_TRUE(first.ParseFromString(*greeting_bytes));
  EXPECT_EQ(first.config_update().compression_type().size(), 4000u);
  EXPECT_EQ(frames[1].flags, 0);
  EXPECT_THAT(AckedSequences({frames[1]}, connect::kFlagEndStream),
              ::testing::ElementsAre(5));
  EXPECT_EQ(frames[2].flags, connect::kFlagEndStream);
}

TEST_F(SyncServiceHandlerTest, GrpcWebTextStreamSyncInOddPieces) {
  OpenStream stream(door_, {{"content-type", "application/grpc-web-text"},
                            {"x-api-key", kApiKey}});
  // Base64 arriving in pieces that split its 4-character groups, padded
  // once in the middle (each message encoded on its own).
  std::string text =
      absl::Base64Escape(StreamFrame(3)) + absl::Base64Escape(StreamFrame(4));
  for (size_t at = 0; at < text.size(); at += 3)
    stream.Send(text.substr(at, 3));
  stream.HalfClose();
  ASSERT_TRUE(stream.exchange().WaitForEnd());
  absl::StatusOr<std::string> body =
      connect::DecodeGrpcWebText(stream.exchange().body());
  ASSERT_THAT(body, IsOk());
  std::vector<connect::Envelope> frames = Frames(*body);
  EXPECT_THAT(AckedSequences(frames, connect::kFlagGrpcTrailers),
              ::testing::ElementsAre(3, 4));
  EXPECT_THAT(ParseGrpcWeb(*body).trailers, HasSubstr("grpc-status: 0\r\n"));
}

TEST_F(SyncServiceHandlerTest, StreamSyncOverHttp11Is505) {
  for (const char* type :
       {"application/connect+proto", "application/grpc-web+proto"}) {
    auto ex = Serve("POST", Path("StreamSync"),
                    {{"content-type", type}, {"x-api-key", kApiKey}},
                    StreamFrame(1), HttpVersion::kHttp11);
    EXPECT_EQ(ex->status(), 505) << type;
  }
  EXPECT_EQ(handler_.call_count(), 0);
}

TEST_F(SyncServiceHandlerTest, StreamOpenFailureInEachForm) {
  handler_.SetStatus("StreamSync",
                     absl::UnauthenticatedError("unknown device key"));
  OpenStream grpc(door_, GrpcStreamHeaders());
  ASSERT_TRUE(grpc.exchange().WaitForEnd());
  EXPECT_TRUE(grpc.exchange().headers_ended()) << "not trailers-only";
  EXPECT_EQ(grpc.exchange().header("grpc-status"), "16");

  OpenStream connect(door_, {{"content-type", "application/connect+proto"}});
  ASSERT_TRUE(connect.exchange().WaitForEnd());
  std::vector<connect::Envelope> frames = connect.frames();
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].flags, connect::kFlagEndStream);
  EXPECT_THAT(frames[0].payload,
              HasSubstr(R"({"error":{"code":"unauthenticated")"));
  EXPECT_EQ(handler_.stream_finishes(), 0);
}

TEST_F(SyncServiceHandlerTest, SessionErrorEndsTheStreamAfterFinish) {
  handler_.FailStreamAtMessage(
      2,
      WithRetryAfter(absl::UnavailableError("backend down"), absl::Seconds(2)));
  OpenStream stream(door_, GrpcStreamHeaders());
  stream.Send(StreamFrame(1) + StreamFrame(2) + StreamFrame(3));
  ASSERT_TRUE(stream.exchange().WaitForEnd());
  EXPECT_EQ(stream.exchange().trailer("grpc-status"), "14");
  EXPECT_EQ(stream.exchange().trailer("retry-after-ms"), "2000");
  EXPECT_THAT(AckedSequences(stream.frames(), 0), ::testing::ElementsAre(1));
  // The third message never reached the session; Finish ran once.
  EXPECT_EQ(handler_.stream_messages().size(), 2u);
  EXPECT_EQ(handler_.stream_finishes(), 1);
}

TEST_F(SyncServiceHandlerTest, MalformedStreamRequestsEndTheCall) {
  Start(/*threads=*/2, /*max_queued=*/16, /*max_message_bytes=*/1024);
  struct Case {
    std::string name;
    std::string body;
    bool half_close;
    std::string status;
  };
  std::vector<Case> cases = {
      {"trailer flag from the client", Frame(0x80, "x"), false, "3"},
      {"envelope over the limit", std::string("\0\0\0\x10\0", 5), false, "8"},
      {"body ends inside an envelope", StreamFrame(1).substr(0, 6), true, "3"},
      {"payload that does not parse", Frame(0, "\xff\xff\xff"), false, "3"},
      {"compressed without grpc-encoding", Frame(1, "abc"), false, "13"},
  };
  for (const Case& c : cases) {
    OpenStream stream(door_, GrpcStreamHeaders());
    stream.Send(c.body);
    if (c.half_close) stream.HalfClose();
    ASSERT_TRUE(stream.exchange().WaitForEnd()) << c.name;
    // Trailers, or trailers-only when the error came before the session
    // opened.
    EXPECT_EQ(
        stream.exchange()
            .trailer("grpc-status")
            .value_or(stream.exchange().header("grpc-status").value_or("")),
        c.status)
        << c.name;
  }
  // Every session that opened was finished.
  EXPECT_TRUE(WaitFor(
      [&] { return handler_.stream_finishes() == handler_.call_count(); }));
  EXPECT_THAT(handler_.stream_messages(), IsEmpty());
}

TEST_F(SyncServiceHandlerTest, CancelledStreamIsFinishedAndCounted) {
  OpenStream stream(door_, GrpcStreamHeaders());
  stream.Send(StreamFrame(1));
  ASSERT_TRUE(stream.WaitForFrames(1));
  stream.Cancel();
  EXPECT_TRUE(WaitFor([&] { return handler_.stream_finishes() == 1; }));
  EXPECT_TRUE(WaitFor([&] {
    return absl::StrContains(
        Metrics(),
        "protocol=\"grpc\",method=\"StreamSync\",code=\"CANCELLED\"} 1");
  }));
  EXPECT_FALSE(stream.exchange().has_trailers());
}

TEST_F(SyncServiceHandlerTest, StreamRefusedWhenNoWorkerIsFree) {
  Start(/*threads=*/1, /*max_queued=*/0);
  absl::Notification release;
  ASSERT_TRUE(OccupyWorker(release));
  OpenStream stream(door_, GrpcStreamHeaders());
  ASSERT_TRUE(stream.exchange().WaitForEnd());
  EXPECT_EQ(stream.exchange().header("grpc-status"), "8");
  EXPECT_EQ(stream.exchange().header("retry-after-ms"), "1500");
  release.Notify();
  EXPECT_EQ(handler_.call_count(), 0);
}

TEST_F(SyncServiceHandlerTest, StreamDeadlineEndsAnIdleCallOnTime) {
  Headers headers = GrpcStreamHeaders();
  headers.push_back({"grpc-timeout", "1S"});
  OpenStream stream(door_, std::move(headers));
  ASSERT_TRUE(WaitFor([&] { return stream.exchange().status() == 200; }));
  EXPECT_EQ(timers_.pending(), 1u);
  // Not a moment before the deadline.
  clock_.Advance(absl::Milliseconds(999));
  stream.Send(StreamFrame(1));
  ASSERT_TRUE(stream.WaitForFrames(1));
  EXPECT_FALSE(stream.exchange().ended());
  // Then without another message from the client.
  clock_.Advance(absl::Milliseconds(1));
  ASSERT_TRUE(stream.exchange().WaitForEnd());
  EXPECT_EQ(stream.exchange().trailer("grpc-status"), "4");
  EXPECT_TRUE(WaitFor([&] { return handler_.stream_finishes() == 1; }));
  EXPECT_EQ(handler_.stream_messages().size(), 1u);
  EXPECT_TRUE(WaitFor([&] {
    return absl::StrContains(Metrics(),
                             "protocol=\"grpc\",method=\"StreamSync\",code="
                             "\"DEADLINE_EXCEEDED\"} 1");
  }));
}

TEST_F(SyncServiceHandlerTest, StreamThatEndsBeforeItsDeadlineDropsItsTimer) {
  Headers headers = GrpcStreamHeaders();
  headers.push_back({"grpc-timeout", "1S"});
  OpenStream stream(door_, std::move(headers));
  ASSERT_TRUE(WaitFor([&] { return stream.exchange().status() == 200; }));
  EXPECT_EQ(timers_.pending(), 1u);
  stream.HalfClose();
  ASSERT_TRUE(stream.exchange().WaitForEnd());
  EXPECT_EQ(stream.exchange().trailer("grpc-status"), "0");
  EXPECT_EQ(timers_.pending(), 0u);
  clock_.Advance(absl::Seconds(2));
  EXPECT_EQ(handler_.stream_finishes(), 1);
}

TEST_F(SyncServiceHandlerTest, WithoutTimersStreamDeadlineEndsAtNextMessage) {
  Start(/*threads=*/2, /*max_queued=*/16, int64_t{16} << 20,
        /*stream_timers=*/false);
  Headers headers = GrpcStreamHeaders();
  headers.push_back({"grpc-timeout", "1S"});
  OpenStream stream(door_, std::move(headers));
  ASSERT_TRUE(WaitFor([&] { return stream.exchange().status() == 200; }));
  clock_.Advance(absl::Seconds(2));
  stream.Send(StreamFrame(1));
  ASSERT_TRUE(stream.exchange().WaitForEnd());
  EXPECT_EQ(stream.exchange().trailer("grpc-status"), "4");
  EXPECT_THAT(handler_.stream_messages(), IsEmpty());
  EXPECT_EQ(handler_.stream_finishes(), 1);
}

// A FakeSyncHandler whose stream sessions wait for a gate in OnRequest.
class GatedStreamHandler final : public FakeSyncHandler {
 public:
  absl::StatusOr<std::unique_ptr<StreamSession>> OpenStream(
      const CallContext& context, StreamSink* sink) override {
    absl::StatusOr<std::unique_ptr<StreamSession>> inner =
        FakeSyncHandler::OpenStream(context, sink);
    if (!inner.ok()) return inner.status();
    return std::make_unique<Gated>(*std::move(inner), this);
  }
  // Lets `n` more messages through.
  void Allow(int n) {
    absl::MutexLock lock(&mu_);
    allowed_ += n;
  }
  int waiting() const {
    absl::MutexLock lock(&mu_);
    return waiting_;
  }

 private:
  class Gated final : public StreamSession {
   public:
    Gated(std::unique_ptr<StreamSession> inner, GatedStreamHandler* gate)
        : inner_(std::move(inner)), gate_(gate) {}
    absl::Status OnRequest(const v1::StreamSyncRequest& request) override {
      gate_->Pass();
      return inner_->OnRequest(request);
    }
    absl::Status Finish() override { return inner_->Finish(); }

   private:
    std::unique_ptr<StreamSession> inner_;
    GatedStreamHandler* gate_;
  };

  void Pass() {
    absl::MutexLock lock(&mu_);
    ++waiting_;
    mu_.AwaitWithTimeout(absl::Condition(
                             +[](int* n) { return *n > 0; }, &allowed_),
                         kWait);
    --allowed_;
    --waiting_;
  }

  mutable absl::Mutex mu_;
  int allowed_ ABSL_GUARDED_BY(mu_) = 0;
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;
};

class StreamPacingTest : public SyncServiceHandlerTest {
 protected:
  SyncHandler* handler() override { return &gated_; }
  GatedStreamHandler gated_;
};

TEST_F(StreamPacingTest, ClientIsHeldWhileAMessageWaitsForTheSession) {
  OpenStream stream(door_, GrpcStreamHeaders());
  const std::string one = StreamFrame(1), two = StreamFrame(2),
                    three = StreamFrame(3);
  // Part of a message is acknowledged at once: nothing waits yet.
  stream.Send(one.substr(0, 4));
  EXPECT_EQ(stream.exchange().consumed(), 4u);
  stream.Send(one.substr(4));
  // The session took message 1 (its bytes acknowledged) and is busy with it.
  ASSERT_TRUE(WaitFor([&] { return gated_.waiting() == 1; }));
  ASSERT_TRUE(
      WaitFor([&] { return stream.exchange().consumed() == one.size(); }));
  // Message 2 waits for the session: it and what follows are held.
  stream.Send(two);
  stream.Send(three.substr(0, 3));
  EXPECT_EQ(stream.exchange().consumed(), one.size());
  // The session takes message 2: the held bytes are acknowledged.
  gated_.Allow(1);
  ASSERT_TRUE(WaitFor([&] {
    return stream.exchange().consumed() == one.size() + two.size() + 3;
  }));
  stream.Send(three.substr(3));
  stream.HalfClose();
  gated_.Allow(2);
  ASSERT_TRUE(stream.exchange().WaitForEnd());
  EXPECT_EQ(stream.exchange().trailer("grpc-status"), "0");
  EXPECT_THAT(AckedSequences(stream.frames(), 0),
              ::testing::ElementsAre(1, 2, 3));
}

// ---- Workers and cancellation ---------------------------------------------

TEST_F(SyncServiceHandlerTest, FullWorkerPoolIsResourceExhaustedWithHint) {
  Start(/*threads=*/1, /*max_queued=*/0);
  absl::Notification release;
  ASSERT_TRUE(OccupyWorker(release));
  auto grpc =
      Grpc("SyncMetrics", Frame(0, MetricsRequest(1).SerializeAsString()));
  EXPECT_EQ(grpc->header("grpc-status"), "8");
  EXPECT_EQ(grpc->header("retry-after-ms"), "1500");
  auto connect = Connect("SyncMetrics", MetricsRequest(1).SerializeAsString());
  EXPECT_EQ(connect->status(), 429);
  EXPECT_EQ(connect->header("retry-after"), "2");
  release.Notify();
  EXPECT_THAT(handler_.calls(), IsEmpty());
}

TEST_F(SyncServiceHandlerTest, CancelBeforeTheCallRunsSkipsTheHandler) {
  Start(/*threads=*/1, /*max_queued=*/4);
  absl::Notification release;
  ASSERT_TRUE(OccupyWorker(release));
  auto exchange = std::make_shared<FakeExchange>(
      "POST", Path("SyncMetrics"),
      Headers{{"content-type", "application/grpc"}}, HttpVersion::kHttp2);
  std::unique_ptr<http::RequestObserver> observer = door_(exchange);
  observer->OnData(Frame(0, MetricsRequest(1).SerializeAsString()));
  observer->OnEnd();  // queued behind the blocked worker
  exchange->Cancel();
  observer->OnCancel();
  observer.reset();
  release.Notify();
  ASSERT_TRUE(exchange->WaitForIgnored());
  EXPECT_EQ(exchange->status(), 0);
  EXPECT_THAT(handler_.calls(), IsEmpty());
}

class DeferredAnswerTest : public SyncServiceHandlerTest {
 protected:
  SyncHandler* handler() override { return &deferred_; }
  DeferredSyncHandler deferred_;
};

TEST_F(DeferredAnswerTest, BatchCallsDoNotHoldAWorkerWhileTheAnswerIsDue) {
  // One worker and no queue: a call that held its worker until answered
  // would make the second call RESOURCE_EXHAUSTED.
  Start(/*threads=*/1, /*max_queued=*/0);
  std::vector<std::shared_ptr<FakeExchange>> exchanges;
  for (int64_t sequence : {1, 2}) {
    auto exchange = std::make_shared<FakeExchange>(
        "POST", Path("SyncMetrics"),
        Headers{{"content-type", "application/grpc"}, {"x-api-key", kApiKey}},
        HttpVersion::kHttp2);
    std::unique_ptr<http::RequestObserver> observer = door_(exchange);
    observer->OnData(Frame(0, MetricsRequest(sequence).SerializeAsString()));
    observer->OnEnd();
    ASSERT_TRUE(WaitFor(
        [&] { return deferred_.pending() == static_cast<size_t>(sequence); }));
    EXPECT_EQ(exchange->status(), 0) << "answered before the handler did";
    exchanges.push_back(exchange);
  }
  deferred_.AnswerAll();
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(exchanges[i]->WaitForEnd());
    EXPECT_EQ(exchanges[i]->status(), 200);
    EXPECT_EQ(exchanges[i]->trailer("grpc-status"), "0");
    EXPECT_EQ(GrpcResponse(*exchanges[i]).last_sequence_ack(), i + 1);
  }
}

class CancelWhileRunningTest : public SyncServiceHandlerTest {
 protected:
  SyncHandler* handler() override { return &gated_; }
  GatedSyncHandler gated_;
};

TEST_F(CancelWhileRunningTest, HandlerFinishingAfterCancelIsHarmless) {
  auto exchange = std::make_shared<FakeExchange>(
      "POST", Path("SyncMetrics"),
      Headers{{"content-type", "application/grpc"}}, HttpVersion::kHttp2);
  std::unique_ptr<http::RequestObserver> observer = door_(exchange);
  observer->OnData(Frame(0, MetricsRequest(5).SerializeAsString()));
  observer->OnEnd();
  ASSERT_TRUE(gated_.entered().WaitForNotificationWithTimeout(kWait));
  exchange->Cancel();
  observer->OnCancel();
  observer.reset();
  gated_.gate().Notify();
  // The response the handler's answer produced went nowhere.
  ASSERT_TRUE(exchange->WaitForIgnored());
  EXPECT_EQ(exchange->status(), 0);
  EXPECT_EQ(gated_.call_count(), 1);
}

}  // namespace
}  // namespace fleetd::server::rpc
