#include "server/rpc/connect/connect_front_end.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/clock/clock.h"
#include "common/codec/codec.h"
#include "common/metrics/metrics.h"
#include "common/status/error_class.h"
#include "common/status/retry_after.h"
#include "common/testing/status_matchers.h"
#include "fleetd/v1/sync.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/rpc/connect/connect_protocol.h"
#include "server/rpc/net/net.h"
#include "server/rpc/testing/fake_sync_handler.h"
#include "server/rpc/testing/test_tls.h"

namespace fleetd::server::rpc {
namespace {

using ::fleetd::server::testing::ConnectLoopback;
using ::fleetd::server::testing::FakeSyncHandler;
using ::fleetd::server::testing::RecordedCall;
using ::fleetd::server::testing::TestCertificate;
using ::fleetd::server::testing::TryTlsHandshake;
using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kPrefix[] = "/fleetd.v1.SyncService/";

std::string Path(const std::string& method) { return kPrefix + method; }

v1::SyncMetricsRequest MetricsRequest(int64_t sequence,
                                      size_t label_bytes = 0) {
  v1::SyncMetricsRequest request;
  request.mutable_metadata()->set_device_id("dev-1");
  request.mutable_metadata()->set_sequence_number(sequence);
  v1::Metric* metric = request.mutable_batch()->add_metrics();
  metric->set_name("cpu");
  if (label_bytes > 0) {
    (*metric->mutable_labels())["blob"] = std::string(label_bytes, 'x');
  }
  return request;
}

std::string Frame(uint8_t flags, const std::string& payload) {
  std::string out;
  connect::AppendEnvelope(flags, payload, &out);
  return out;
}

std::vector<connect::Envelope> Frames(const std::string& body) {
  absl::StatusOr<std::vector<connect::Envelope>> frames =
      connect::ParseEnvelopes(body, 1 << 30);
  EXPECT_THAT(frames, IsOk());
  return frames.ok() ? *frames : std::vector<connect::Envelope>{};
}

// Sends `request` on a fresh loopback connection and reads until the server
// closes it (bounded by a 10 s receive timeout). Appends "[EOF]" when the
// server closed the connection, "[TIMEOUT]" otherwise.
std::string RawExchange(int port, const std::string& request) {
  UniqueFd fd = ConnectLoopback(port, absl::Seconds(10));
  if (!fd.valid()) return "[CONNECT FAILED]";
  ::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd.get(), buf, sizeof(buf), 0)) > 0) out.append(buf, n);
  return out + (n == 0 ? "[EOF]" : "[TIMEOUT]");
}

class ConnectFrontEndTest : public ::testing::Test {
 protected:
  void Start(ConnectFrontEndOptions options = {}) {
    options.address = "127.0.0.1:0";
    options.insecure = true;
    options.metrics = &registry_;
    absl::StatusOr<std::unique_ptr<ConnectFrontEnd>> server =
        ConnectFrontEnd::Start(options, &handler_);
    ASSERT_THAT(server, IsOk());
    server_ = *std::move(server);
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  std::unique_ptr<httplib::Client> Client() {
    auto client =
        std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client->set_decompress(false);
    client->set_read_timeout(10, 0);
    return client;
  }

  httplib::Result Post(const std::string& method, const std::string& body,
                       const std::string& content_type,
                       httplib::Headers headers = {}) {
    if (headers.find("Accept-Encoding") == headers.end()) {
      headers.emplace("Accept-Encoding", "identity");
    }
    return Client()->Post(Path(method).c_str(), headers, body,
                          content_type.c_str());
  }

  metrics::Registry registry_;
  FakeSyncHandler handler_;
  std::unique_ptr<ConnectFrontEnd> server_;
};

// ---- Connect unary ---------------------------------------------------------

TEST_F(ConnectFrontEndTest, UnaryProtoCarriesApiKeyAndPeerToHandler) {
  Start();
  httplib::Result res =
      Post("SyncMetrics", MetricsRequest(42).SerializeAsString(),
           "application/proto",
           {{"X-API-Key", "key-1"}, {"Connect-Protocol-Version", "1"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/proto");
  v1::SyncMetricsResponse response;
  ASSERT_TRUE(response.ParseFromString(res->body));
  EXPECT_TRUE(response.success());
  EXPECT_EQ(response.last_sequence_ack(), 42);

  std::vector<RecordedCall> calls = handler_.calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].method, "SyncMetrics");
  EXPECT_EQ(calls[0].context.api_key, "key-1");
  EXPECT_EQ(calls[0].context.protocol, "connect");
  EXPECT_THAT(calls[0].context.peer, StartsWith("127.0.0.1:"));
  EXPECT_EQ(calls[0].context.deadline, absl::InfiniteFuture());
}

TEST_F(ConnectFrontEndTest, UnaryJsonAcceptsBothFieldNamesAndAnswersCamelCase) {
  Start();
  httplib::Result res = Post(
      "SyncLogs",
      R"({"metadata": {"device_id": "d", "sequenceNumber": "7"}, "batch": {}})",
      "application/json; charset=utf-8");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
  EXPECT_EQ(res->body, R"({"success":true,"lastSequenceAck":"7"})");
}

TEST_F(ConnectFrontEndTest, EveryUnaryProcedureReachesItsHandlerMethod) {
  Start();
  for (const char* method : {"SyncMetrics", "SyncLogs", "GetSyncConfig",
                             "SyncEvents", "UpdateDeviceInfo"}) {
    httplib::Result res = Post(method, "{}", "application/json");
    ASSERT_TRUE(res) << method;
    EXPECT_EQ(res->status, 200) << method << ": " << res->body;
  }
  std::vector<std::string> methods;
  for (const RecordedCall& call : handler_.calls()) {
    methods.push_back(call.method);
  }
  EXPECT_THAT(methods,
              ::testing::ElementsAre("SyncMetrics", "SyncLogs", "GetSyncConfig",
                                     "SyncEvents", "UpdateDeviceInfo"));
}

TEST_F(ConnectFrontEndTest, TimeoutHeaderBecomesDeadlineFromTheClock) {
  SimulatedClock clock;
  ConnectFrontEndOptions options;
  options.clock = &clock;
  Start(options);
  httplib::Result res = Post("GetSyncConfig", "{}", "application/json",
                             {{"Connect-Timeout-Ms", "1500"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(handler_.calls().at(0).context.deadline,
            clock.Now() + absl::Milliseconds(1500));
}

TEST_F(ConnectFrontEndTest, ProtocolHeaderErrorsAreInvalidArgument400) {
  Start();
  httplib::Result bad_timeout = Post("GetSyncConfig", "{}", "application/json",
                                     {{"Connect-Timeout-Ms", "soon"}});
  ASSERT_TRUE(bad_timeout);
  EXPECT_EQ(bad_timeout->status, 400);
  EXPECT_THAT(bad_timeout->body, HasSubstr(R"("code":"invalid_argument")"));

  httplib::Result bad_version = Post("GetSyncConfig", "{}", "application/json",
                                     {{"Connect-Protocol-Version", "2"}});
  ASSERT_TRUE(bad_version);
  EXPECT_EQ(bad_version->status, 400);
  EXPECT_EQ(bad_version->get_header_value("Content-Type"), "application/json");
  EXPECT_THAT(bad_version->body, HasSubstr("connect-protocol-version"));
  EXPECT_EQ(handler_.call_count(), 0);
}

TEST_F(ConnectFrontEndTest, MissingProtocolVersionRefusedOnlyWhenRequired) {
  ConnectFrontEndOptions options;
  options.require_connect_protocol_version = true;
  Start(options);
  httplib::Result missing = Post("GetSyncConfig", "{}", "application/json");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 400);
  httplib::Result present = Post("GetSyncConfig", "{}", "application/json",
                                 {{"Connect-Protocol-Version", "1"}});
  ASSERT_TRUE(present);
  EXPECT_EQ(present->status, 200);
}

TEST_F(ConnectFrontEndTest, HandlerErrorsUseTheSpecHttpStatusAndErrorJson) {
  Start();
  struct Case {
    absl::Status status;
    int http;
    std::string json;
  };
  const Case cases[] = {
      {absl::UnauthenticatedError("no key"), 401,
       R"({"code":"unauthenticated","message":"no key"})"},
      {absl::PermissionDeniedError("other device"), 403,
       R"({"code":"permission_denied","message":"other device"})"},
      {absl::InvalidArgumentError("bad batch"), 400,
       R"({"code":"invalid_argument","message":"bad batch"})"},
      {absl::NotFoundError("gone"), 404,
       R"({"code":"not_found","message":"gone"})"},
      {absl::UnavailableError("backend down"), 503,
       R"({"code":"unavailable","message":"backend down"})"},
      {absl::UnimplementedError("later"), 501,
       R"({"code":"unimplemented","message":"later"})"},
      {absl::InternalError("oops"), 500,
       R"({"code":"internal","message":"oops"})"},
  };
  for (const Case& c : cases) {
    handler_.SetStatus("SyncMetrics", c.status);
    httplib::Result res =
        Post("SyncMetrics", MetricsRequest(1).SerializeAsString(),
             "application/proto");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, c.http) << c.status;
    EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
    EXPECT_EQ(res->body, c.json);
    EXPECT_FALSE(res->has_header("Retry-After"));
  }
}

TEST_F(ConnectFrontEndTest, RetryHintBecomesRetryAfterHeaders) {
  Start();
  handler_.SetStatus("SyncMetrics",
                     WithRetryAfter(absl::ResourceExhaustedError("overloaded"),
                                    absl::Milliseconds(1500)));
  httplib::Result res =
      Post("SyncMetrics", MetricsRequest(1).SerializeAsString(),
           "application/proto");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 429);
  EXPECT_EQ(res->body,
            R"({"code":"resource_exhausted","message":"overloaded"})");
  EXPECT_EQ(res->get_header_value("Retry-After"), "2");
  EXPECT_EQ(res->get_header_value("Trailer-Retry-After-Ms"), "1500");
  EXPECT_THAT(
      registry_.Render(),
      HasSubstr("fleetd_rpc_frontend_requests_total{protocol=\"connect\","
                "method=\"SyncMetrics\",code=\"RESOURCE_EXHAUSTED\"} 1"));
}

TEST_F(ConnectFrontEndTest, BatchRejectedVerdictBecomesTrailerHeader) {
  Start();
  handler_.SetStatus(
      "SyncMetrics",
      MarkBatchRejected(absl::InvalidArgumentError("bad label name")));
  httplib::Result res =
      Post("SyncMetrics", MetricsRequest(1).SerializeAsString(),
           "application/proto");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_EQ(res->body,
            R"({"code":"invalid_argument","message":"bad label name"})");
  EXPECT_EQ(res->get_header_value("Trailer-Fleetd-Verdict"), "rejected");

  // The same code without the verdict (e.g. a malformed envelope the front
  // end refused, or any other INVALID_ARGUMENT) carries no verdict.
  handler_.SetStatus("SyncMetrics", absl::InvalidArgumentError("not ours"));
  res = Post("SyncMetrics", MetricsRequest(2).SerializeAsString(),
             "application/proto");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_FALSE(res->has_header("Trailer-Fleetd-Verdict"));
}

TEST_F(ConnectFrontEndTest, GrpcWebTrailersCarryTheVerdict) {
  Start();
  handler_.SetStatus("SyncMetrics",
                     MarkBatchRejected(absl::InvalidArgumentError("bad")));
  httplib::Result res =
      Post("SyncMetrics", Frame(0, MetricsRequest(1).SerializeAsString()),
           "application/grpc-web");
  ASSERT_TRUE(res);
  std::vector<connect::Envelope> frames = Frames(res->body);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].payload,
            "grpc-status: 3\r\ngrpc-message: bad\r\n"
            "fleetd-verdict: rejected\r\n");

  handler_.SetStatus("SyncMetrics", absl::InvalidArgumentError("bad"));
  res = Post("SyncMetrics", Frame(0, MetricsRequest(1).SerializeAsString()),
             "application/grpc-web");
  ASSERT_TRUE(res);
  frames = Frames(res->body);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].payload, "grpc-status: 3\r\ngrpc-message: bad\r\n");
}

TEST_F(ConnectFrontEndTest, CorruptBodyIsInvalidArgument) {
  Start();
  httplib::Result proto =
      Post("SyncMetrics", "\xff\xff\xff", "application/proto");
  ASSERT_TRUE(proto);
  EXPECT_EQ(proto->status, 400);
  EXPECT_THAT(proto->body, HasSubstr("invalid_argument"));
  // A batch that can never parse is our verdict on it.
  EXPECT_EQ(proto->get_header_value("Trailer-Fleetd-Verdict"), "rejected");
  httplib::Result json = Post("SyncMetrics", "{nope", "application/json");
  ASSERT_TRUE(json);
  EXPECT_EQ(json->status, 400);
  EXPECT_EQ(json->get_header_value("Trailer-Fleetd-Verdict"), "rejected");
  // Not a batch: no verdict.
  httplib::Result config =
      Post("GetSyncConfig", "\xff\xff\xff", "application/proto");
  ASSERT_TRUE(config);
  EXPECT_EQ(config->status, 400);
  EXPECT_FALSE(config->has_header("Trailer-Fleetd-Verdict"));
  EXPECT_EQ(handler_.call_count(), 0);
}

// ---- Compression -----------------------------------------------------------

TEST_F(ConnectFrontEndTest, GzipRequestAndGzipResponse) {
  Start();
  v1::GetSyncConfigResponse big;
  big.set_metrics_endpoint(std::string(5000, 'e'));
  handler_.SetConfigResponse(big);
  v1::GetSyncConfigRequest request;
  request.set_device_id("dev-gz");
  absl::StatusOr<std::string> body =
      Compress(Compression::kGzip, request.SerializeAsString());
  ASSERT_THAT(body, IsOk());
  httplib::Result res =
      Post("GetSyncConfig", *body, "application/proto",
           {{"Content-Encoding", "gzip"}, {"Accept-Encoding", "br, gzip"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Encoding"), "gzip");
  absl::StatusOr<std::string> plain =
      Decompress(Compression::kGzip, res->body, 1 << 20);
  ASSERT_THAT(plain, IsOk());
  v1::GetSyncConfigResponse response;
  ASSERT_TRUE(response.ParseFromString(*plain));
  EXPECT_EQ(response.metrics_endpoint(), big.metrics_endpoint());
  auto* seen = dynamic_cast<v1::GetSyncConfigRequest*>(
      handler_.calls().at(0).request.get());
  ASSERT_NE(seen, nullptr);
  EXPECT_EQ(seen->device_id(), "dev-gz");
}

TEST_F(ConnectFrontEndTest, ZstdRequestWithoutAcceptEncodingGetsZstdBack) {
  Start();
  v1::GetSyncConfigResponse big;
  big.set_logs_endpoint(std::string(4000, 'l'));
  handler_.SetConfigResponse(big);
  absl::StatusOr<std::string> body =
      Compress(Compression::kZstd, R"({"deviceId":"z"})");
  ASSERT_THAT(body, IsOk());
  // No Accept-Encoding at all: the spec says the client accepts what it sent.
  std::string raw =
      RawExchange(server_->port(),
                  absl::StrCat("POST ", Path("GetSyncConfig"),
                               " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                               "Content-Type: application/json\r\n"
                               "Content-Encoding: zstd\r\nContent-Length: ",
                               body->size(), "\r\n\r\n", *body));
  ASSERT_THAT(raw, StartsWith("HTTP/1.1 200"));
  EXPECT_THAT(raw, HasSubstr("Content-Encoding: zstd\r\n"));
  std::string payload = raw.substr(raw.find("\r\n\r\n") + 4);
  payload.resize(payload.size() - std::string("[EOF]").size());
  absl::StatusOr<std::string> json =
      Decompress(Compression::kZstd, payload, 1 << 20);
  ASSERT_THAT(json, IsOk());
  EXPECT_THAT(*json, HasSubstr(R"("logsEndpoint":"llll)"));
}

TEST_F(ConnectFrontEndTest, SmallResponsesStayUncompressed) {
  Start();
  httplib::Result res = Post("GetSyncConfig", "{}", "application/json",
                             {{"Accept-Encoding", "gzip"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_FALSE(res->has_header("Content-Encoding"));
  EXPECT_THAT(res->body, HasSubstr("config"));
}

TEST_F(ConnectFrontEndTest, UnsupportedContentEncodingIsUnimplemented) {
  Start();
  httplib::Result res = Post("GetSyncConfig", "xx", "application/json",
                             {{"Content-Encoding", "br"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 501);
  EXPECT_THAT(res->body, HasSubstr(R"("code":"unimplemented")"));
  EXPECT_THAT(res->body, HasSubstr("gzip"));
}

TEST_F(ConnectFrontEndTest, DecompressionBombIsResourceExhausted) {
  ConnectFrontEndOptions options;
  options.max_message_bytes = 64 * 1024;
  Start(options);
  for (Compression coding : {Compression::kGzip, Compression::kZstd}) {
    absl::StatusOr<std::string> bomb =
        Compress(coding, std::string(32 << 20, '\0'));
    ASSERT_THAT(bomb, IsOk());
    ASSERT_LT(bomb->size(), 64u * 1024);
    httplib::Result res =
        Post("SyncMetrics", *bomb, "application/proto",
             {{"Content-Encoding", std::string(CompressionName(coding))}});
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 429);
    EXPECT_THAT(res->body, HasSubstr(R"("code":"resource_exhausted")"));
  }
  EXPECT_EQ(handler_.call_count(), 0);
}

// ---- Size limits -----------------------------------------------------------

TEST_F(ConnectFrontEndTest, OversizedBodyIsRefusedUnreadAndConnectionClosed) {
  ConnectFrontEndOptions options;
  options.max_message_bytes = 1024;
  Start(options);
  httplib::Result res =
      Post("SyncMetrics", MetricsRequest(1, 4096).SerializeAsString(),
           "application/proto");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 429);
  EXPECT_THAT(res->body, HasSubstr(R"("code":"resource_exhausted")"));
  EXPECT_EQ(res->get_header_value("Connection"), "close");

  // Chunked, no declared length: read up to the limit only, then closed even
  // though the client asked for keep-alive.
  std::string chunk(800, 'a');
  std::string raw = RawExchange(
      server_->port(),
      absl::StrCat("POST ", Path("SyncMetrics"),
                   " HTTP/1.1\r\nHost: x\r\nContent-Type: application/proto\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n",
                   "320\r\n", chunk, "\r\n", "320\r\n", chunk, "\r\n",
                   "320\r\n", chunk, "\r\n"));
  EXPECT_THAT(raw, StartsWith("HTTP/1.1 429"));
  EXPECT_THAT(raw, HasSubstr("Connection: close"));
  EXPECT_TRUE(absl::EndsWith(raw, "[EOF]")) << raw;
  EXPECT_EQ(handler_.call_count(), 0);
}

TEST_F(ConnectFrontEndTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  Start();
  auto client = Client();
  client->set_keep_alive(true);
  for (int i = 0; i < 3; ++i) {
    httplib::Result res = client->Post(
        Path("SyncMetrics").c_str(), {{"Accept-Encoding", "identity"}},
        MetricsRequest(i).SerializeAsString(), "application/proto");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
  }
  std::vector<RecordedCall> calls = handler_.calls();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[0].context.peer, calls[2].context.peer);
}

// ---- GET -------------------------------------------------------------------

TEST_F(ConnectFrontEndTest, GetServesSideEffectFreeMethodInJsonAndProto) {
  Start();
  std::string json_query =
      absl::StrCat(Path("GetSyncConfig"), "?connect=v1&encoding=json&message=",
                   httplib::detail::encode_query_param(
                       R"({"deviceId":"g1","capability":{"tier":3}})"));
  httplib::Result json = Client()->Get(
      json_query.c_str(),
      {{"Accept-Encoding", "identity"}, {"X-API-Key", "get-key"}});
  ASSERT_TRUE(json);
  EXPECT_EQ(json->status, 200);
  EXPECT_EQ(json->get_header_value("Content-Type"), "application/json");
  EXPECT_THAT(json->body, HasSubstr(R"("batchSize":103)"));
  EXPECT_THAT(json->body, HasSubstr(R"("metricsEndpoint":"metrics/g1")"));
  EXPECT_EQ(handler_.calls().at(0).context.api_key, "get-key");

  v1::GetSyncConfigRequest request;
  request.set_device_id("g2");
  absl::StatusOr<std::string> gz =
      Compress(Compression::kGzip, request.SerializeAsString());
  ASSERT_THAT(gz, IsOk());
  std::string proto_query = absl::StrCat(
      Path("GetSyncConfig"), "?encoding=proto&base64=1&compression=gzip&",
      "message=", absl::WebSafeBase64Escape(*gz), "&connect=v1&unrelated=1");
  httplib::Result proto =
      Client()->Get(proto_query.c_str(), {{"Accept-Encoding", "identity"}});
  ASSERT_TRUE(proto);
  EXPECT_EQ(proto->status, 200);
  EXPECT_EQ(proto->get_header_value("Content-Type"), "application/proto");
  v1::GetSyncConfigResponse response;
  ASSERT_TRUE(response.ParseFromString(proto->body));
  EXPECT_EQ(response.metrics_endpoint(), "metrics/g2");
}

TEST_F(ConnectFrontEndTest, GetWithWrongConnectVersionIsInvalidArgument) {
  Start();
  httplib::Result res =
      Client()->Get(absl::StrCat(Path("GetSyncConfig"),
                                 "?connect=v2&encoding=json&message=", "%7B%7D")
                        .c_str());
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_THAT(res->body, HasSubstr(R"("code":"invalid_argument")"));
  EXPECT_EQ(handler_.call_count(), 0);
}

TEST_F(ConnectFrontEndTest, GetIsRefusedForMethodsWithSideEffects) {
  Start();
  httplib::Result res = Client()->Get(
      absl::StrCat(Path("SyncMetrics"), "?encoding=json&message=%7B%7D")
          .c_str());
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 405);
  EXPECT_EQ(res->get_header_value("Allow"), "POST");
  httplib::Result codec = Client()->Get(
      absl::StrCat(Path("GetSyncConfig"), "?encoding=xml&message=x").c_str());
  ASSERT_TRUE(codec);
  EXPECT_EQ(codec->status, 415);
  EXPECT_EQ(handler_.call_count(), 0);
}

// ---- Routing and negotiation -----------------------------------------------

TEST_F(ConnectFrontEndTest, UnknownProcedureVerbOrContentTypeAreRefused) {
  Start();
  httplib::Result unknown = Post("NoSuchMethod", "{}", "application/json");
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
  httplib::Result other_service =
      Client()->Post("/other.v1.Service/SyncMetrics", "{}", "application/json");
  ASSERT_TRUE(other_service);
  EXPECT_EQ(other_service->status, 404);

  httplib::Result media = Post("SyncMetrics", "hello", "text/plain");
  ASSERT_TRUE(media);
  EXPECT_EQ(media->status, 415);
  EXPECT_THAT(media->get_header_value("Accept-Post"),
              HasSubstr("application/proto"));
  httplib::Result streaming_on_unary =
      Post("SyncMetrics", Frame(0, ""), "application/connect+proto");
  ASSERT_TRUE(streaming_on_unary);
  EXPECT_EQ(streaming_on_unary->status, 415);

  httplib::Result put =
      Client()->Put(Path("SyncMetrics").c_str(), "{}", "application/json");
  ASSERT_TRUE(put);
  EXPECT_EQ(put->status, 405);
  EXPECT_EQ(put->get_header_value("Allow"), "POST");
  httplib::Result del = Client()->Delete(Path("GetSyncConfig").c_str());
  ASSERT_TRUE(del);
  EXPECT_EQ(del->status, 405);
  EXPECT_EQ(del->get_header_value("Allow"), "GET, POST");
  EXPECT_EQ(handler_.call_count(), 0);
}

TEST_F(ConnectFrontEndTest, BidiOverHttp11IsHttpVersionNotSupported) {
  Start();
  v1::StreamSyncRequest heartbeat;
  heartbeat.mutable_heartbeat();
  for (const char* type : {"application/connect+proto", "application/grpc-web",
                           "application/grpc-web-text"}) {
    httplib::Result res =
        Post("StreamSync", Frame(0, heartbeat.SerializeAsString()), type);
    ASSERT_TRUE(res) << type;
    EXPECT_EQ(res->status, 505) << type;
    EXPECT_EQ(res->get_header_value("Connection"), "close") << type;
  }
  httplib::Result unary_type = Post("StreamSync", "", "application/proto");
  ASSERT_TRUE(unary_type);
  EXPECT_EQ(unary_type->status, 415);
  EXPECT_EQ(handler_.call_count(), 0);
}

// ---- Half-duplex StreamSync ------------------------------------------------

class HalfDuplexTest : public ConnectFrontEndTest {
 protected:
  void SetUp() override {
    ConnectFrontEndOptions options;
    options.http1_bidi_half_duplex = true;
    options.compress_min_bytes = 0;
    Start(options);
  }

  static std::string Requests(bool json) {
    std::vector<v1::StreamSyncRequest> requests(3);
    requests[0].mutable_metadata()->set_sequence_number(1);
    requests[0].mutable_metrics()->add_metrics()->set_name("m");
    requests[1].mutable_heartbeat()->set_unsynced_logs(4);
    requests[2].mutable_metadata()->set_sequence_number(2);
    requests[2].mutable_logs()->add_logs()->set_message("l");
    std::string body;
    for (const auto& request : requests) {
      body += Frame(0, *connect::EncodeMessage(json ? connect::Codec::kJson
                                                    : connect::Codec::kProto,
                                               request));
    }
    return body;
  }
};

TEST_F(HalfDuplexTest, ConnectStreamAnswersEveryMessageThenEndOfStream) {
  v1::StreamSyncResponse greeting;
  greeting.mutable_resume()->set_reason("go");
  handler_.SetStreamGreeting(greeting);
  httplib::Result res =
      Post("StreamSync", Requests(false), "application/connect+proto",
           {{"X-API-Key", "s-key"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/connect+proto");
  std::vector<connect::Envelope> frames = Frames(res->body);
  ASSERT_EQ(frames.size(), 4u);
  v1::StreamSyncResponse r0, r1, r2;
  ASSERT_TRUE(r0.ParseFromString(frames[0].payload));
  ASSERT_TRUE(r1.ParseFromString(frames[1].payload));
  ASSERT_TRUE(r2.ParseFromString(frames[2].payload));
  EXPECT_EQ(r0.resume().reason(), "go");
  EXPECT_EQ(r1.ack().sequence_number(), 1);
  EXPECT_EQ(r2.ack().sequence_number(), 2);
  EXPECT_EQ(frames[3].flags, connect::kFlagEndStream);
  EXPECT_EQ(frames[3].payload, "{}");
  EXPECT_EQ(handler_.stream_messages().size(), 3u);
  EXPECT_EQ(handler_.stream_finishes(), 1);
  EXPECT_EQ(handler_.calls().at(0).context.api_key, "s-key");
}

TEST_F(HalfDuplexTest, ConnectStreamJsonWithCompressedMessages) {
  std::string body;
  for (const connect::Envelope& e : Frames(Requests(true))) {
    body += Frame(connect::kFlagCompressed,
                  *Compress(Compression::kGzip, e.payload));
  }
  httplib::Result res = Post("StreamSync", body, "application/connect+json",
                             {{"Connect-Content-Encoding", "gzip"},
                              {"Connect-Accept-Encoding", "gzip"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Connect-Content-Encoding"), "gzip");
  std::vector<connect::Envelope> frames = Frames(res->body);
  ASSERT_EQ(frames.size(), 3u);
  EXPECT_EQ(frames[0].flags, connect::kFlagCompressed);
  absl::StatusOr<std::string> first =
      Decompress(Compression::kGzip, frames[0].payload, 1 << 20);
  ASSERT_THAT(first, IsOk());
  EXPECT_THAT(*first, HasSubstr(R"("sequenceNumber":"1")"));
  EXPECT_EQ(frames[2].flags, connect::kFlagEndStream);
}

TEST_F(HalfDuplexTest, StreamErrorsEndTheStreamWithErrorAndMetadata) {
  handler_.FailStreamAtMessage(
      2, WithRetryAfter(absl::UnavailableError("writer down"),
                        absl::Milliseconds(300)));
  httplib::Result res =
      Post("StreamSync", Requests(false), "application/connect+proto");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  std::vector<connect::Envelope> frames = Frames(res->body);
  ASSERT_EQ(frames.size(), 2u);  // the ack of message 1, then the end
  EXPECT_EQ(frames[1].flags, connect::kFlagEndStream);
  EXPECT_EQ(frames[1].payload,
            R"({"error":{"code":"unavailable","message":"writer down"},)"
            R"("metadata":{"retry-after-ms":["300"]}})");
  EXPECT_EQ(handler_.stream_finishes(), 1);

  handler_.SetStatus("StreamSync", absl::UnauthenticatedError("who?"));
  httplib::Result open =
      Post("StreamSync", Requests(false), "application/connect+proto");
  ASSERT_TRUE(open);
  EXPECT_EQ(open->status, 200);
  std::vector<connect::Envelope> end = Frames(open->body);
  ASSERT_EQ(end.size(), 1u);
  EXPECT_EQ(end[0].payload,
            R"({"error":{"code":"unauthenticated","message":"who?"}})");
}

TEST_F(HalfDuplexTest, EndOfStreamMetadataCarriesTheVerdict) {
  handler_.FailStreamAtMessage(
      2, MarkBatchRejected(absl::InvalidArgumentError("bad batch")));
  httplib::Result res =
      Post("StreamSync", Requests(false), "application/connect+proto");
  ASSERT_TRUE(res);
  std::vector<connect::Envelope> frames = Frames(res->body);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[1].flags, connect::kFlagEndStream);
  EXPECT_EQ(frames[1].payload,
            R"({"error":{"code":"invalid_argument","message":"bad batch"},)"
            R"("metadata":{"fleetd-verdict":["rejected"]}})");

  handler_.FailStreamAtMessage(2, absl::InvalidArgumentError("bad batch"));
  res = Post("StreamSync", Requests(false), "application/connect+proto");
  ASSERT_TRUE(res);
  frames = Frames(res->body);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[1].payload,
            R"({"error":{"code":"invalid_argument","message":"bad batch"}})");
}

TEST_F(HalfDuplexTest, GrpcWebStreamEndsWithTrailers) {
  httplib::Result res =
      Post("StreamSync", Requests(false), "application/grpc-web+proto");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  std::vector<connect::Envelope> frames = Frames(res->body);
  ASSERT_EQ(frames.size(), 3u);
  EXPECT_EQ(frames[2].flags, connect::kFlagGrpcTrailers);
  EXPECT_EQ(frames[2].payload, "grpc-status: 0\r\n");
}

// ---- gRPC-Web --------------------------------------------------------------

TEST_F(ConnectFrontEndTest, GrpcWebUnaryAnswersDataFrameThenTrailers) {
  Start();
  httplib::Result res = Post(
      "SyncMetrics", Frame(0, MetricsRequest(9).SerializeAsString()),
      "application/grpc-web+proto",
      {{"X-API-Key", "web-key"}, {"X-Grpc-Web", "1"}, {"grpc-timeout", "5S"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"),
            "application/grpc-web+proto");
  std::vector<connect::Envelope> frames = Frames(res->body);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[0].flags, 0);
  v1::SyncMetricsResponse response;
  ASSERT_TRUE(response.ParseFromString(frames[0].payload));
  EXPECT_EQ(response.last_sequence_ack(), 9);
  EXPECT_EQ(frames[1].flags, connect::kFlagGrpcTrailers);
  EXPECT_EQ(frames[1].payload, "grpc-status: 0\r\n");
  RecordedCall call = handler_.calls().at(0);
  EXPECT_EQ(call.context.protocol, "grpc-web");
  EXPECT_EQ(call.context.api_key, "web-key");
  EXPECT_LT(call.context.deadline, absl::InfiniteFuture());
}

TEST_F(ConnectFrontEndTest, GrpcWebErrorIsTrailersOnlyWithEncodedMessage) {
  Start();
  handler_.SetStatus("SyncMetrics",
                     WithRetryAfter(absl::UnavailableError("down 50%\nretry"),
                                    absl::Milliseconds(20)));
  httplib::Result res =
      Post("SyncMetrics", Frame(0, MetricsRequest(1).SerializeAsString()),
           "application/grpc-web");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  std::vector<connect::Envelope> frames = Frames(res->body);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].flags, connect::kFlagGrpcTrailers);
  EXPECT_EQ(frames[0].payload,
            "grpc-status: 14\r\ngrpc-message: down 50%25%0Aretry\r\n"
            "retry-after-ms: 20\r\n");
}

TEST_F(ConnectFrontEndTest, GrpcWebTextIsBase64BothWays) {
  Start();
  std::string body =
      absl::Base64Escape(Frame(0, MetricsRequest(3).SerializeAsString()));
  httplib::Result res = Post("SyncMetrics", body, "application/grpc-web-text");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/grpc-web-text");
  std::string decoded;
  ASSERT_TRUE(absl::Base64Unescape(res->body, &decoded));
  std::vector<connect::Envelope> frames = Frames(decoded);
  ASSERT_EQ(frames.size(), 2u);
  v1::SyncMetricsResponse response;
  ASSERT_TRUE(response.ParseFromString(frames[0].payload));
  EXPECT_EQ(response.last_sequence_ack(), 3);
  EXPECT_EQ(frames[1].payload, "grpc-status: 0\r\n");
}

TEST_F(ConnectFrontEndTest, GrpcWebCompressedFramesBothWays) {
  ConnectFrontEndOptions options;
  options.compress_min_bytes = 0;
  Start(options);
  absl::StatusOr<std::string> compressed =
      Compress(Compression::kGzip, MetricsRequest(4).SerializeAsString());
  ASSERT_THAT(compressed, IsOk());
  httplib::Result res =
      Post("SyncMetrics", Frame(connect::kFlagCompressed, *compressed),
           "application/grpc-web+proto",
           {{"grpc-encoding", "gzip"}, {"grpc-accept-encoding", "gzip"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->get_header_value("grpc-encoding"), "gzip");
  std::vector<connect::Envelope> frames = Frames(res->body);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[0].flags, connect::kFlagCompressed);
  absl::StatusOr<std::string> plain =
      Decompress(Compression::kGzip, frames[0].payload, 1 << 20);
  ASSERT_THAT(plain, IsOk());
  v1::SyncMetricsResponse response;
  ASSERT_TRUE(response.ParseFromString(*plain));
  EXPECT_EQ(response.last_sequence_ack(), 4);

  // A compressed frame without grpc-encoding is a protocol error, INTERNAL
  // as gRPC's compression spec says.
  httplib::Result bad =
      Post("SyncMetrics", Frame(connect::kFlagCompressed, *compressed),
           "application/grpc-web+proto");
  ASSERT_TRUE(bad);
  std::vector<connect::Envelope> trailers = Frames(bad->body);
  ASSERT_EQ(trailers.size(), 1u);
  EXPECT_THAT(trailers[0].payload, StartsWith("grpc-status: 13\r\n"));
}

TEST_F(ConnectFrontEndTest, GrpcWebUnaryNeedsExactlyOneMessage) {
  Start();
  std::string two = Frame(0, "") + Frame(0, "");
  httplib::Result res = Post("SyncMetrics", two, "application/grpc-web+proto");
  ASSERT_TRUE(res);
  std::vector<connect::Envelope> frames = Frames(res->body);
  ASSERT_EQ(frames.size(), 1u);
  // A cardinality violation: UNIMPLEMENTED.
  EXPECT_THAT(frames[0].payload, StartsWith("grpc-status: 12\r\n"));
  EXPECT_EQ(handler_.call_count(), 0);
}

// ---- TLS and lifecycle -----------------------------------------------------

TEST(ConnectFrontEndTlsTest, ServesOverTls13AndRefusesTls12) {
  absl::StatusOr<TestCertificate> cert = TestCertificate::Create();
  ASSERT_THAT(cert, IsOk());
  FakeSyncHandler handler;
  ConnectFrontEndOptions options;
  options.address = "127.0.0.1:0";
  options.tls_cert_file = cert->cert_file();
  options.tls_key_file = cert->key_file();
  absl::StatusOr<std::unique_ptr<ConnectFrontEnd>> server =
      ConnectFrontEnd::Start(options, &handler);
  ASSERT_THAT(server, IsOk());
  int port = (*server)->port();

  httplib::SSLClient client("localhost", port);
  client.set_ca_cert_path(cert->cert_file().c_str());
  client.enable_server_certificate_verification(true);
  client.set_read_timeout(10, 0);
  httplib::Result res =
      client.Post(Path("GetSyncConfig").c_str(), {{"X-API-Key", "tls"}},
                  R"({"deviceId":"t"})", "application/json");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->body, HasSubstr("metrics/t"));
  EXPECT_EQ(handler.calls().at(0).context.api_key, "tls");

  absl::StatusOr<testing::HandshakeResult> tls13 =
      TryTlsHandshake(port, TLS1_2_VERSION, TLS1_3_VERSION, {"http/1.1"});
  ASSERT_THAT(tls13, IsOk());
  EXPECT_EQ(tls13->version, "TLSv1.3");
  EXPECT_EQ(tls13->alpn, "http/1.1");
  EXPECT_THAT(TryTlsHandshake(port, TLS1_VERSION, TLS1_2_VERSION, {}),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("handshake")));
  (*server)->Shutdown();
}

TEST(ConnectFrontEndStartTest, RejectsInconsistentOptionsAndBusyPorts) {
  FakeSyncHandler handler;
  ConnectFrontEndOptions options;
  options.address = "127.0.0.1:0";
  EXPECT_THAT(ConnectFrontEnd::Start(options, &handler),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("TLS")));
  options.insecure = true;
  options.tls_key_file = "/k.pem";
  EXPECT_THAT(
      ConnectFrontEnd::Start(options, &handler),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("insecure")));
  options.tls_key_file.clear();
  options.threads = 0;
  EXPECT_THAT(
      ConnectFrontEnd::Start(options, &handler),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("threads")));
  options.threads = 2;
  absl::StatusOr<std::unique_ptr<ConnectFrontEnd>> first =
      ConnectFrontEnd::Start(options, &handler);
  ASSERT_THAT(first, IsOk());
  options.address = absl::StrCat("127.0.0.1:", (*first)->port());
  EXPECT_THAT(ConnectFrontEnd::Start(options, &handler),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("")));
}

TEST(ConnectFrontEndStartTest, ShutdownClosesIdleConnectionsAndIsIdempotent) {
  FakeSyncHandler handler;
  ConnectFrontEndOptions options;
  options.address = "127.0.0.1:0";
  options.insecure = true;
  options.idle_timeout = absl::Hours(1);  // only Shutdown can end the wait
  absl::StatusOr<std::unique_ptr<ConnectFrontEnd>> server =
      ConnectFrontEnd::Start(options, &handler);
  ASSERT_THAT(server, IsOk());
  httplib::Client client("127.0.0.1", (*server)->port());
  client.set_keep_alive(true);
  httplib::Result res =
      client.Post(Path("GetSyncConfig").c_str(), "{}", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  (*server)->Shutdown();  // returns although the connection is kept alive
  (*server)->Shutdown();
  httplib::Client after("127.0.0.1", (*server)->port());
  after.set_connection_timeout(5, 0);
  EXPECT_FALSE(
      after.Post(Path("GetSyncConfig").c_str(), "{}", "application/json"));
}

}  // namespace
}  // namespace fleetd::server::rpc

namespace fleetd::server::rpc {
namespace {

TEST(ConnectFrontEndSettingsTest, EnvironmentOverridesDefaults) {
  ConnectFrontEndOptions options;
  Settings settings;
  AddConnectFrontEndSettings(settings, &options);
  ASSERT_THAT(
      settings.Resolve(MapEnv({{"FLEET_CONNECT_THREADS", "4"},
                               {"FLEET_CONNECT_MAX_MESSAGE_BYTES", "2MiB"},
                               {"FLEET_CONNECT_HTTP1_BIDI_HALF_DUPLEX", "1"}})),
      ::fleetd::testing::IsOk());
  EXPECT_EQ(options.threads, 4);
  EXPECT_EQ(options.max_message_bytes, 2 << 20);
  EXPECT_TRUE(options.http1_bidi_half_duplex);
  EXPECT_FALSE(options.insecure);  // default kept
}

}  // namespace
}  // namespace fleetd::server::rpc
