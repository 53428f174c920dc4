#include "agent/transport/connect_transport.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "agent/transport/connect_error.h"
#include "agent/transport/transport.h"
#include "common/clock/clock.h"
#include "common/codec/codec.h"
#include "common/status/error_class.h"
#include "common/status/retry_after.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "httplib.h"

namespace fleetd::agent {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::fleetd::testing::WaitFor;
using ::google::protobuf::util::MessageDifferencer;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Optional;

constexpr absl::Duration kTimeout = absl::Seconds(30);

// What the server saw of one request.
struct SeenRequest {
  std::string method;
  std::string path;
  httplib::Headers headers;
  // The body after cpp-httplib undid any Content-Encoding.
  std::string body;
  int remote_port = 0;

  std::string Header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

using Handler =
    std::function<void(const httplib::Request&, httplib::Response&)>;

// A cpp-httplib server on 127.0.0.1, an ephemeral port, that records every
// request and answers with the scripted handler.
class ScriptedServer {
 public:
  ScriptedServer() {
    // Without it, Nagle's algorithm and delayed ACKs add 40 ms to answers
    // written in two parts.
    server_.set_tcp_nodelay(true);
    server_.Post(
        R"(/.*)", [this](const httplib::Request& req, httplib::Response& res) {
          Handler handler;
          {
            absl::MutexLock lock(&mu_);
            seen_.push_back(
                {req.method, req.path, req.headers, req.body, req.remote_port});
            handler = handler_;
          }
          handler(req, res);
        });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // The socket listens already; this only makes sure stop() finds the
    // accept loop running.
    EXPECT_TRUE(WaitFor([this] { return server_.is_running(); }));
  }
  ~ScriptedServer() {
    server_.stop();
    thread_.join();
  }

  int port() const { return port_; }
  std::string Url(const std::string& path = "") const {
    return absl::StrCat("http://127.0.0.1:", port_, path);
  }

  void Answer(Handler handler) {
    absl::MutexLock lock(&mu_);
    handler_ = std::move(handler);
  }
  std::vector<SeenRequest> seen() const {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  mutable absl::Mutex mu_;
  Handler handler_ ABSL_GUARDED_BY(mu_);
  std::vector<SeenRequest> seen_ ABSL_GUARDED_BY(mu_);
};

v1::SyncMetricsRequest MetricsRequest(int64_t sequence, int metrics = 50) {
  v1::SyncMetricsRequest request;
  request.mutable_metadata()->set_device_id("dev-1");
  request.mutable_metadata()->set_sequence_number(sequence);
  for (int i = 0; i < metrics; ++i) {
    v1::Metric* metric = request.mutable_batch()->add_metrics();
    metric->set_name("cpu_usage_percent");
    metric->set_value(i);
    (*metric->mutable_labels())["host"] = "raspberry-pi-7";
  }
  return request;
}

Handler ProtoAnswer(const google::protobuf::Message& message,
                    Compression compression = Compression::kNone) {
  std::string body = message.SerializeAsString();
  std::string encoding;
  if (compression != Compression::kNone) {
    body = *Compress(compression, body);
    encoding = std::string(CompressionName(compression));
  }
  return [body, encoding](const httplib::Request&, httplib::Response& res) {
    if (!encoding.empty()) res.set_header("Content-Encoding", encoding);
    res.set_content(body, "application/proto");
  };
}

Handler ErrorAnswer(int http_status, std::string content_type, std::string body,
                    httplib::Headers headers = {}) {
  return [=](const httplib::Request&, httplib::Response& res) {
    res.status = http_status;
    for (const auto& [name, value] : headers) res.set_header(name, value);
    res.set_content(body, content_type);
  };
}

class ConnectTransportTest : public ::testing::Test {
 protected:
  std::unique_ptr<SyncTransport> MakeTransport(
      std::function<void(TransportOptions&)> adjust = nullptr) {
    TransportOptions options;
    options.kind = "connect";
    options.server_url = server_.Url();
    options.api_key = "key-1";
    if (adjust) adjust(options);
    absl::StatusOr<std::unique_ptr<SyncTransport>> transport =
        NewTransport(options);
    EXPECT_THAT(transport, IsOk());
    return transport.ok() ? *std::move(transport) : nullptr;
  }

  ScriptedServer server_;
};

TEST_F(ConnectTransportTest, UnaryRequestFollowsTheConnectProtocol) {
  auto transport =
      MakeTransport([](TransportOptions& o) { o.compression = "gzip"; });
  const v1::SyncMetricsRequest request = MetricsRequest(7);
  v1::SyncMetricsResponse answer;
  answer.set_success(true);
  answer.set_last_sequence_ack(7);
  server_.Answer(ProtoAnswer(answer));

  absl::StatusOr<v1::SyncMetricsResponse> response =
      transport->SyncMetrics(request, absl::Seconds(30));
  ASSERT_THAT(response, IsOk());
  EXPECT_TRUE(MessageDifferencer::Equals(*response, answer));

  ASSERT_EQ(server_.seen().size(), 1u);
  const SeenRequest seen = server_.seen()[0];
  EXPECT_EQ(seen.method, "POST");
  EXPECT_EQ(seen.path, "/fleetd.v1.SyncService/SyncMetrics");
  EXPECT_EQ(seen.Header("Content-Type"), "application/proto");
  EXPECT_EQ(seen.Header("Connect-Protocol-Version"), "1");
  EXPECT_EQ(seen.Header("X-API-Key"), "key-1");
  EXPECT_EQ(seen.Header("Connect-Timeout-Ms"), "30000");
  EXPECT_THAT(seen.Header("Accept-Encoding"),
              AllOf(HasSubstr("gzip"), HasSubstr("zstd")));
  // The body went gzip-compressed: its length on the wire is well below the
  // serialized request, and once decoded it is the request.
  EXPECT_EQ(seen.Header("Content-Encoding"), "gzip");
  const size_t wire_length = std::stoul(seen.Header("Content-Length"));
  EXPECT_LT(wire_length, request.ByteSizeLong() / 2);
  v1::SyncMetricsRequest received;
  ASSERT_TRUE(received.ParseFromString(seen.body));
  EXPECT_TRUE(MessageDifferencer::Equals(received, request));

  // Traffic is counted as it crossed the connection.
  const TransportStats stats = transport->stats();
  EXPECT_EQ(stats.bytes_sent, static_cast<int64_t>(wire_length));
  EXPECT_EQ(stats.bytes_received, static_cast<int64_t>(answer.ByteSizeLong()));
  EXPECT_EQ(stats.calls, 1);
  EXPECT_EQ(stats.failures, 0);
}

TEST_F(ConnectTransportTest, SmallBodiesAndDisabledCompressionGoAsTheyAre) {
  auto gzip =
      MakeTransport([](TransportOptions& o) { o.compression = "gzip"; });
  auto plain = MakeTransport();
  server_.Answer(ProtoAnswer(v1::GetSyncConfigResponse()));
  v1::GetSyncConfigRequest tiny;
  tiny.set_device_id("d");
  ASSERT_THAT(gzip->GetSyncConfig(tiny, kTimeout), IsOk());
  ASSERT_THAT(plain->SyncMetrics(MetricsRequest(1), kTimeout), IsOk());
  ASSERT_EQ(server_.seen().size(), 2u);
  EXPECT_EQ(server_.seen()[0].Header("Content-Encoding"), "");
  EXPECT_EQ(server_.seen()[0].body, tiny.SerializeAsString());
  EXPECT_EQ(server_.seen()[1].Header("Content-Encoding"), "");
  EXPECT_EQ(server_.seen()[1].body, MetricsRequest(1).SerializeAsString());
}

TEST_F(ConnectTransportTest, EachMethodPostsToItsProcedure) {
  auto transport = MakeTransport(
      [this](TransportOptions& o) { o.server_url = server_.Url("/fleet/"); });
  server_.Answer([](const httplib::Request&, httplib::Response& res) {
    res.set_content("", "application/proto");  // every response empty
  });
  EXPECT_THAT(transport->SyncMetrics({}, kTimeout), IsOk());
  EXPECT_THAT(transport->SyncLogs({}, kTimeout), IsOk());
  EXPECT_THAT(transport->SyncEvents({}, kTimeout), IsOk());
  EXPECT_THAT(transport->GetSyncConfig({}, kTimeout), IsOk());
  EXPECT_THAT(transport->UpdateDeviceInfo({}, kTimeout), IsOk());
  std::vector<std::string> paths;
  for (const SeenRequest& seen : server_.seen()) paths.push_back(seen.path);
  EXPECT_THAT(paths,
              ElementsAre("/fleet/fleetd.v1.SyncService/SyncMetrics",
                          "/fleet/fleetd.v1.SyncService/SyncLogs",
                          "/fleet/fleetd.v1.SyncService/SyncEvents",
                          "/fleet/fleetd.v1.SyncService/GetSyncConfig",
                          "/fleet/fleetd.v1.SyncService/UpdateDeviceInfo"));
}

TEST_F(ConnectTransportTest, KeepsTheConnectionAlive) {
  auto transport = MakeTransport();
  server_.Answer(ProtoAnswer(v1::SyncLogsResponse()));
  ASSERT_THAT(transport->SyncLogs({}, kTimeout), IsOk());
  ASSERT_THAT(transport->SyncLogs({}, kTimeout), IsOk());
  ASSERT_EQ(server_.seen().size(), 2u);
  // Same client port: the second call reused the first call's connection.
  EXPECT_EQ(server_.seen()[0].remote_port, server_.seen()[1].remote_port);
}

TEST_F(ConnectTransportTest, DecompressesGzipAndZstdResponses) {
  auto transport = MakeTransport();
  v1::GetSyncConfigResponse answer;
  answer.mutable_config()->set_batch_size(1000);
  answer.set_metrics_endpoint(std::string(4096, 'm'));
  for (Compression compression : {Compression::kGzip, Compression::kZstd}) {
    server_.Answer(ProtoAnswer(answer, compression));
    absl::StatusOr<v1::GetSyncConfigResponse> response =
        transport->GetSyncConfig({}, kTimeout);
    ASSERT_THAT(response, IsOk()) << CompressionName(compression);
    EXPECT_TRUE(MessageDifferencer::Equals(*response, answer));
  }
}

TEST_F(ConnectTransportTest, ResponseBombIsResourceExhausted) {
  auto transport = MakeTransport(
      [](TransportOptions& o) { o.max_response_bytes = 1 << 20; });
  // 64 MiB of zeros in a few kilobytes.
  const std::string bomb =
      *Compress(Compression::kZstd, std::string(64 << 20, '\0'));
  ASSERT_LT(bomb.size(), 64u << 10);
  server_.Answer([bomb](const httplib::Request&, httplib::Response& res) {
    res.set_header("Content-Encoding", "zstd");
    res.set_content(bomb, "application/proto");
  });
  EXPECT_THAT(transport->SyncMetrics({}, kTimeout),
              StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST_F(ConnectTransportTest, ErrorJsonMapsEveryCodeWithItsMessage) {
  auto transport = MakeTransport();
  for (int i = 1; i <= 16; ++i) {
    const auto code = static_cast<absl::StatusCode>(i);
    const std::string name(ConnectCodeName(code));
    const std::string message = absl::StrCat("failed: ", name, " \"quoted\"");
    server_.Answer(ErrorAnswer(
        400, "application/json",
        absl::StrCat(R"({"code":")", name, R"(","message":"failed: )", name,
                     R"( \"quoted\""})")));
    EXPECT_THAT(transport->SyncMetrics({}, kTimeout), StatusIs(code, message))
        << name;
  }
  EXPECT_EQ(transport->stats().failures, 16);
}

TEST_F(ConnectTransportTest, CompressedErrorBodyIsDecoded) {
  auto transport = MakeTransport();
  const std::string message(3000, 'x');
  const std::string json = absl::StrCat(
      R"({"code":"invalid_argument","message":")", message, R"("})");
  // cpp-httplib gzips JSON bodies for clients that accept gzip, as a Connect
  // server may.
  server_.Answer(ErrorAnswer(400, "application/json", json));
  EXPECT_THAT(transport->SyncMetrics({}, kTimeout),
              StatusIs(absl::StatusCode::kInvalidArgument, message));
  EXPECT_LT(transport->stats().bytes_received,
            static_cast<int64_t>(json.size()) / 10);
}

TEST_F(ConnectTransportTest, VerdictHeaderWithAConnectErrorMarksTheRejection) {
  auto transport = MakeTransport();
  server_.Answer(ErrorAnswer(
      400, "application/json",
      R"({"code":"invalid_argument","message":"invalid UTF-8 in a label"})",
      {{"Trailer-Fleetd-Verdict", "rejected"}}));
  absl::StatusOr<v1::SyncMetricsResponse> response =
      transport->SyncMetrics({}, kTimeout);
  EXPECT_THAT(response, StatusIs(absl::StatusCode::kInvalidArgument,
                                 "invalid UTF-8 in a label"));
  EXPECT_EQ(ClassifyError(response.status()), ErrorClass::kSetAside);
}

TEST_F(ConnectTransportTest, ProxyAnswersNeverCarryAVerdict) {
  auto transport = MakeTransport();
  // A Connect error without the verdict header (another Connect server, or
  // ours before this change): retried.
  server_.Answer(
      ErrorAnswer(400, "application/json",
                  R"({"code":"invalid_argument","message":"something"})"));
  EXPECT_EQ(ClassifyError(transport->SyncMetrics({}, kTimeout).status()),
            ErrorClass::kRetry);
  // The header on a body that is not a Connect error (a proxy's page that
  // passed a header through): no verdict.
  for (int http_status : {400, 500, 502}) {
    server_.Answer(ErrorAnswer(http_status, "text/html", "<h1>error</h1>",
                               {{"Trailer-Fleetd-Verdict", "rejected"}}));
    absl::Status s = transport->SyncMetrics({}, kTimeout).status();
    EXPECT_FALSE(IsBatchRejected(s)) << http_status;
    EXPECT_EQ(ClassifyError(s), ErrorClass::kRetry) << http_status;
  }
  // A bare 500 with an empty body, as the issue's proxy answered.
  server_.Answer(ErrorAnswer(500, "", ""));
  EXPECT_EQ(ClassifyError(transport->SyncMetrics({}, kTimeout).status()),
            ErrorClass::kRetry);
}

TEST_F(ConnectTransportTest, RetryAfterSecondsBecomesRetryHint) {
  auto transport = MakeTransport();
  server_.Answer(
      ErrorAnswer(503, "application/json",
                  R"({"code":"unavailable","message":"backend down"})",
                  {{"Retry-After", "3"}}));
  absl::StatusOr<v1::SyncMetricsResponse> response =
      transport->SyncMetrics({}, kTimeout);
  EXPECT_THAT(response,
              StatusIs(absl::StatusCode::kUnavailable, "backend down"));
  EXPECT_THAT(GetRetryAfter(response.status()), Optional(absl::Seconds(3)));
}

TEST_F(ConnectTransportTest, TrailerRetryAfterMsIsPreferred) {
  auto transport = MakeTransport();
  server_.Answer(
      ErrorAnswer(429, "application/json",
                  R"({"code":"resource_exhausted","message":"overloaded"})",
                  {{"Retry-After", "2"}, {"Trailer-Retry-After-Ms", "1500"}}));
  absl::StatusOr<v1::SyncMetricsResponse> response =
      transport->SyncMetrics({}, kTimeout);
  EXPECT_THAT(response,
              StatusIs(absl::StatusCode::kResourceExhausted, "overloaded"));
  EXPECT_THAT(GetRetryAfter(response.status()),
              Optional(absl::Milliseconds(1500)));
}

TEST_F(ConnectTransportTest, RetryAfterHttpDateIsRelativeToTheClock) {
  SimulatedClock clock(absl::FromUnixSeconds(1445412480));  // 07:28:00 GMT
  auto transport =
      MakeTransport([&](TransportOptions& o) { o.clock = &clock; });
  server_.Answer(
      ErrorAnswer(503, "text/html", "<h1>maintenance</h1>",
                  {{"Retry-After", "Wed, 21 Oct 2015 07:30:00 GMT"}}));
  absl::StatusOr<v1::SyncMetricsResponse> response =
      transport->SyncMetrics({}, kTimeout);
  EXPECT_THAT(response, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(GetRetryAfter(response.status()), Optional(absl::Minutes(2)));
}

TEST_F(ConnectTransportTest, NonConnectErrorsFallBackToTheHttpStatus) {
  auto transport = MakeTransport();
  struct Case {
    int http_status;
    absl::StatusCode code;
  };
  for (const Case& c : {Case{502, absl::StatusCode::kUnavailable},
                        Case{504, absl::StatusCode::kUnavailable},
                        Case{429, absl::StatusCode::kResourceExhausted},
                        Case{401, absl::StatusCode::kUnauthenticated},
                        Case{404, absl::StatusCode::kUnimplemented},
                        Case{500, absl::StatusCode::kUnknown}}) {
    server_.Answer(ErrorAnswer(c.http_status, "text/html",
                               "<html><body>proxy error</body></html>"));
    EXPECT_THAT(transport->SyncMetrics({}, kTimeout),
                StatusIs(c.code, AllOf(HasSubstr(absl::StrCat(c.http_status)),
                                       HasSubstr("proxy error"))))
        << c.http_status;
  }
}

TEST_F(ConnectTransportTest, NonProtoSuccessIsUnavailable) {
  auto transport = MakeTransport();
  // A captive portal or a misrouted URL answering 200 with a web page.
  server_.Answer([](const httplib::Request&, httplib::Response& res) {
    res.set_content("<html>Welcome to the hotel wifi</html>", "text/html");
  });
  EXPECT_THAT(transport->SyncMetrics({}, kTimeout),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("text/html")));
  // The right content type, but not the message.
  server_.Answer([](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string("\xff\xff\xff\xff", 4), "application/proto");
  });
  EXPECT_THAT(transport->SyncMetrics({}, kTimeout),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("parse")));
  // A body in an encoding the transport did not ask for.
  server_.Answer([](const httplib::Request&, httplib::Response& res) {
    res.set_header("Content-Encoding", "br");
    res.set_content("abc", "application/proto");
  });
  EXPECT_THAT(transport->SyncMetrics({}, kTimeout),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("br")));
}

TEST_F(ConnectTransportTest, SlowServerIsDeadlineExceeded) {
  auto transport = MakeTransport();
  // Shared with the handler: the first request's server thread may still be
  // leaving WaitForNotification when the test body ends, so the
  // notifications must outlive it (the handler copy it runs holds them).
  struct Gates {
    absl::Notification release;
    absl::Notification arrived;
  };
  auto gates = std::make_shared<Gates>();
  server_.Answer([gates](const httplib::Request&, httplib::Response& res) {
    if (!gates->arrived.HasBeenNotified()) {
      gates->arrived.Notify();
      gates->release.WaitForNotification();
    }
    res.set_content("", "application/proto");
  });
  EXPECT_THAT(transport->SyncMetrics({}, absl::Milliseconds(200)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_TRUE(gates->arrived.HasBeenNotified());
  EXPECT_EQ(server_.seen()[0].Header("Connect-Timeout-Ms"), "200");
  gates->release.Notify();
  // The abandoned connection is replaced on the next call.
  EXPECT_THAT(transport->SyncMetrics({}, kTimeout), IsOk());
}

TEST_F(ConnectTransportTest, ExpiredTimeoutFailsWithoutSending) {
  auto transport = MakeTransport();
  EXPECT_THAT(transport->SyncMetrics({}, absl::ZeroDuration()),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_TRUE(server_.seen().empty());
}

TEST(ConnectTransportNetworkTest, ConnectionRefusedIsUnavailable) {
  // A bound socket that does not listen refuses connections.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);

  TransportOptions options;
  options.kind = "connect";
  options.server_url = absl::StrCat("http://127.0.0.1:", ntohs(addr.sin_port));
  absl::StatusOr<std::unique_ptr<SyncTransport>> transport =
      NewTransport(options);
  ASSERT_THAT(transport, IsOk());
  EXPECT_THAT((*transport)->SyncMetrics({}, kTimeout),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ((*transport)->stats().failures, 1);
  EXPECT_EQ((*transport)->stats().bytes_sent, 0);
  close(fd);
}

TEST(ConnectTransportNetworkTest, AnswerThatIsNotHttpIsUnavailable) {
  // A TLS server's alert to a plaintext request: not HTTP at all.
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)),
            0);
  ASSERT_EQ(listen(listener, 1), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  TransportOptions options;
  options.kind = "connect";
  options.server_url = absl::StrCat("http://127.0.0.1:", ntohs(addr.sin_port));
  absl::StatusOr<std::unique_ptr<SyncTransport>> transport =
      NewTransport(options);
  ASSERT_THAT(transport, IsOk());
  std::thread server([listener] {
    const int conn = accept(listener, nullptr, nullptr);
    if (conn < 0) return;
    char buffer[4096];
    (void)!recv(conn, buffer, sizeof(buffer), 0);
    const char alert[] = "\x15\x03\x03\x00\x02\x02\x46";
    (void)!send(conn, alert, sizeof(alert) - 1, MSG_NOSIGNAL);
    close(conn);
  });

  EXPECT_THAT((*transport)->SyncMetrics({}, kTimeout),
              StatusIs(absl::StatusCode::kUnavailable));
  server.join();
  close(listener);
}

// --- Through the HttpClient seam ---------------------------------------------

// Fails every request with a fixed status.
class FailingHttpClient : public HttpClient {
 public:
  explicit FailingHttpClient(absl::Status status)
      : status_(std::move(status)) {}
  absl::StatusOr<HttpResponse> Send(const HttpRequest&) override {
    return status_;
  }

 private:
  absl::Status status_;
};

TEST(ConnectTransportSeamTest, HttpClientFailuresKeepRetryableCodes) {
  for (absl::StatusCode code :
       {absl::StatusCode::kUnavailable, absl::StatusCode::kDeadlineExceeded,
        absl::StatusCode::kResourceExhausted}) {
    ConnectCallConfig config;
    config.base_url = "http://fleet.invalid";
    auto transport = NewConnectTransportWithClient(
        std::make_unique<FailingHttpClient>(absl::Status(code, "boom")),
        config);
    EXPECT_THAT(
        transport->SyncLogs({}, kTimeout),
        StatusIs(code, AllOf(HasSubstr("SyncLogs"), HasSubstr("boom"))));
  }
}

TEST(ConnectTransportSeamTest, OtherClientErrorsBecomeUnavailable) {
  // INVALID_ARGUMENT would tell the sync manager the batch itself is bad.
  ConnectCallConfig config;
  config.base_url = "http://fleet.invalid";
  auto transport = NewConnectTransportWithClient(
      std::make_unique<FailingHttpClient>(absl::InvalidArgumentError(
          "Unsupported protocol (Received HTTP/0.9 when not allowed)")),
      config);
  EXPECT_THAT(transport->SyncLogs({}, kTimeout),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("HTTP/0.9")));
}

}  // namespace
}  // namespace fleetd::agent
