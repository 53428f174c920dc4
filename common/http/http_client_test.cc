#include "common/http/http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"

namespace fleetd {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Optional;
using ::testing::Pair;
using ::testing::SizeIs;

// A cpp-httplib server on 127.0.0.1 and an ephemeral port, serving from a
// thread.
class LocalServer {
 public:
  LocalServer() {
    server_.set_tcp_nodelay(true);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // The socket already listens (connections queue in the backlog); waiting
    // for the accept loop only makes sure stop() in the destructor finds it
    // running.
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (!server_.is_running() && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(1));
    }
  }
  ~LocalServer() {
    server_.stop();
    thread_.join();
  }

  httplib::Server& server() { return server_; }
  int port() const { return port_; }
  std::string Url(absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", port_, path);
  }

 private:
  httplib::Server server_;
  int port_ = -1;
  std::thread thread_;
};

HttpRequest Request(std::string method, std::string url, std::string body = "",
                    HttpHeaders headers = {},
                    absl::Duration timeout = absl::Seconds(30)) {
  HttpRequest request;
  request.method = std::move(method);
  request.url = std::move(url);
  request.body = std::move(body);
  request.headers = std::move(headers);
  request.timeout = timeout;
  return request;
}

std::unique_ptr<HttpClient> NewClient(CurlHttpClientOptions options = {}) {
  auto client = NewCurlHttpClient(options);
  EXPECT_THAT(client, IsOk());
  return client.ok() ? *std::move(client) : nullptr;
}

TEST(HttpClientTest, GetReturnsStatusHeadersAndBody) {
  LocalServer local;
  local.server().Get("/hello",
                     [](const httplib::Request&, httplib::Response& res) {
                       res.set_header("X-Answer", "42");
                       res.set_content("hello world", "text/plain");
                     });
  auto client = NewClient();

  absl::StatusOr<HttpResponse> response =
      client->Send(Request("GET", local.Url("/hello")));

  ASSERT_THAT(response, IsOk());
  EXPECT_EQ(response->status_code, 200);
  EXPECT_EQ(response->body, "hello world");
  EXPECT_THAT(response->headers, Contains(Pair("X-Answer", "42")));
  // Lookup ignores case.
  EXPECT_THAT(response->Header("x-answer"), Optional(std::string("42")));
  EXPECT_THAT(response->Header("content-type"),
              Optional(std::string("text/plain")));
  EXPECT_EQ(response->Header("X-Missing"), std::nullopt);
}

TEST(HttpClientTest, PostSendsBodyAndOnlyTheGivenHeaders) {
  LocalServer local;
  absl::Mutex mu;
  std::vector<httplib::Request> seen;
  local.server().Post("/echo",
                      [&](const httplib::Request& req, httplib::Response& res) {
                        absl::MutexLock lock(&mu);
                        seen.push_back(req);
                        res.status = 201;
                        res.set_content(req.body, "application/octet-stream");
                      });
  auto client = NewClient();
  // Big enough that libcurl would ask for 100-continue on its own.
  const std::string big(2 << 20, 'x');

  absl::StatusOr<HttpResponse> plain =
      client->Send(Request("POST", local.Url("/echo"), "a=1&b=2"));
  absl::StatusOr<HttpResponse> typed = client->Send(Request(
      "POST", local.Url("/echo"), big,
      {{"Content-Type", "application/json"}, {"X-Scope-OrgID", "tenant-1"}}));

  ASSERT_THAT(plain, IsOk());
  ASSERT_THAT(typed, IsOk());
  EXPECT_EQ(plain->status_code, 201);
  EXPECT_EQ(plain->body, "a=1&b=2");
  EXPECT_EQ(typed->body, big);
  absl::MutexLock lock(&mu);
  ASSERT_THAT(seen, SizeIs(2));
  EXPECT_FALSE(seen[0].has_header("Content-Type"));
  EXPECT_FALSE(seen[0].has_header("Expect"));
  EXPECT_EQ(seen[0].get_header_value("User-Agent"), "fleetd-http-client");
  EXPECT_EQ(seen[1].get_header_value("Content-Type"), "application/json");
  EXPECT_EQ(seen[1].get_header_value("X-Scope-OrgID"), "tenant-1");
  EXPECT_FALSE(seen[1].has_header("Expect"));
}

// Accepts one connection on 127.0.0.1, captures the raw request (headers and a
// Content-Length body) and answers 200 "ok".
class RawServer {
 public:
  RawServer() {
    listener_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(listener_, 4);
    socklen_t len = sizeof(addr);
    getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~RawServer() {
    thread_.join();
    close(listener_);
  }
  std::string Url() const {
    return absl::StrCat("http://127.0.0.1:", port_, "/raw");
  }
  // The request as received; valid after the client got its response.
  std::string request() {
    absl::MutexLock lock(&mu_);
    return request_;
  }

 private:
  void Serve() {
    int conn = accept(listener_, nullptr, nullptr);
    if (conn < 0) return;
    std::string data;
    char buf[4096];
    size_t header_end = std::string::npos;
    size_t want = 0;
    for (;;) {
      if (header_end == std::string::npos) {
        header_end = data.find("\r\n\r\n");
        if (header_end != std::string::npos) {
          const size_t cl = data.find("Content-Length: ");
          want = header_end + 4 +
                 (cl != std::string::npos && cl < header_end
                      ? std::stoul(data.substr(cl + 16))
                      : 0);
        }
      }
      if (header_end != std::string::npos && data.size() >= want) break;
      ssize_t n = read(conn, buf, sizeof(buf));
      if (n <= 0) break;
      data.append(buf, static_cast<size_t>(n));
    }
    {
      absl::MutexLock lock(&mu_);
      request_ = data;
    }
    const char response[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    (void)!write(conn, response, sizeof(response) - 1);
    close(conn);
  }

  int listener_ = -1;
  int port_ = 0;
  std::thread thread_;
  absl::Mutex mu_;
  std::string request_ ABSL_GUARDED_BY(mu_);
};

TEST(HttpClientTest, SendsExactlyTheGivenHeadersOnTheWire) {
  RawServer raw;
  auto client = NewClient();

  auto response = client->Send(Request("POST", raw.Url(), "payload",
                                       {{"X-Empty", ""}, {"X-Api-Key", "k1"}}));

  ASSERT_THAT(response, IsOk());
  EXPECT_EQ(response->body, "ok");
  const std::string request = raw.request();
  EXPECT_THAT(request, HasSubstr("POST /raw HTTP/1.1\r\n"));
  EXPECT_THAT(request, HasSubstr("\r\nX-Empty:"));
  EXPECT_THAT(request, HasSubstr("\r\nX-Api-Key: k1\r\n"));
  EXPECT_THAT(request, HasSubstr("\r\nContent-Length: 7\r\n"));
  EXPECT_THAT(request, Not(HasSubstr("Content-Type")));
  EXPECT_THAT(request, Not(HasSubstr("Expect")));
  EXPECT_THAT(request, HasSubstr("\r\n\r\npayload"));
}

TEST(HttpClientTest, SupportsOtherMethods) {
  LocalServer local;
  local.server().Put(
      "/r", [](const httplib::Request& req, httplib::Response& res) {
        res.set_content(absl::StrCat("put:", req.body), "text/plain");
      });
  local.server().Delete("/r", [](const httplib::Request& req,
                                 httplib::Response& res) { res.status = 204; });
  local.server().Get("/r", [](const httplib::Request&, httplib::Response& res) {
    res.set_header("X-Kind", "resource");
    res.set_content("body that HEAD must not return", "text/plain");
  });
  auto client = NewClient();

  auto put = client->Send(Request("PUT", local.Url("/r"), "v"));
  auto del = client->Send(Request("DELETE", local.Url("/r")));
  auto head = client->Send(Request("HEAD", local.Url("/r")));

  ASSERT_THAT(put, IsOk());
  EXPECT_EQ(put->body, "put:v");
  ASSERT_THAT(del, IsOk());
  EXPECT_EQ(del->status_code, 204);
  ASSERT_THAT(head, IsOk());
  EXPECT_EQ(head->status_code, 200);
  EXPECT_EQ(head->body, "");
  EXPECT_THAT(head->Header("X-Kind"), Optional(std::string("resource")));
}

TEST(HttpClientTest, ErrorStatusCodesAreResponsesNotFailures) {
  LocalServer local;
  local.server().Post("/busy",
                      [](const httplib::Request&, httplib::Response& res) {
                        res.status = 503;
                        res.set_header("Retry-After", "7");
                        res.set_content("overloaded", "text/plain");
                      });
  auto client = NewClient();

  auto busy = client->Send(Request("POST", local.Url("/busy")));
  auto missing = client->Send(Request("GET", local.Url("/nowhere")));

  ASSERT_THAT(busy, IsOk());
  EXPECT_EQ(busy->status_code, 503);
  EXPECT_EQ(busy->body, "overloaded");
  EXPECT_THAT(busy->Header("Retry-After"), Optional(std::string("7")));
  ASSERT_THAT(missing, IsOk());
  EXPECT_EQ(missing->status_code, 404);
}

TEST(HttpClientTest, ReusesTheConnectionAcrossRequests) {
  LocalServer local;
  absl::Mutex mu;
  std::vector<int> client_ports;
  local.server().Get("/ping",
                     [&](const httplib::Request& req, httplib::Response& res) {
                       absl::MutexLock lock(&mu);
                       client_ports.push_back(req.remote_port);
                       res.set_content("pong", "text/plain");
                     });
  auto client = NewClient();

  for (int i = 0; i < 3; ++i) {
    ASSERT_THAT(client->Send(Request("GET", local.Url("/ping"))), IsOk());
  }

  absl::MutexLock lock(&mu);
  ASSERT_THAT(client_ports, SizeIs(3));
  // One TCP connection (one client port) carried all three requests.
  EXPECT_EQ(std::set<int>(client_ports.begin(), client_ports.end()).size(), 1u);
}

TEST(HttpClientTest, SlowServerIsDeadlineExceeded) {
  LocalServer local;
  absl::Notification release;
  local.server().Get(
      "/slow", [&](const httplib::Request&, httplib::Response& res) {
        release.WaitForNotificationWithTimeout(absl::Seconds(30));
        res.set_content("late", "text/plain");
      });
  auto client = NewClient();

  auto response = client->Send(
      Request("GET", local.Url("/slow"), "", {}, absl::Milliseconds(200)));
  release.Notify();

  EXPECT_THAT(response, StatusIs(absl::StatusCode::kDeadlineExceeded,
                                 HasSubstr("/slow")));
}

TEST(HttpClientTest, RefusedConnectionIsUnavailable) {
  // A port that is bound but not listening refuses connections, and stays ours.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  auto client = NewClient();

  auto response = client->Send(Request(
      "GET", absl::StrCat("http://127.0.0.1:", ntohs(addr.sin_port), "/")));
  close(fd);

  EXPECT_THAT(response, StatusIs(absl::StatusCode::kUnavailable));
}

TEST(HttpClientTest, ServerClosingWithoutAnswerIsUnavailable) {
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)),
            0);
  ASSERT_EQ(listen(listener, 4), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  std::thread closer([listener] {
    int conn = accept(listener, nullptr, nullptr);
    if (conn >= 0) {
      char buf[1024];
      (void)!read(conn, buf, sizeof(buf));  // Take the request, answer nothing.
      close(conn);
    }
  });
  auto client = NewClient();

  auto response = client->Send(Request(
      "GET", absl::StrCat("http://127.0.0.1:", ntohs(addr.sin_port), "/")));
  closer.join();
  close(listener);

  EXPECT_THAT(response, StatusIs(absl::StatusCode::kUnavailable));
}

TEST(HttpClientTest, OversizedResponseIsResourceExhausted) {
  LocalServer local;
  const std::string big(4096, 'b');
  local.server().Get("/sized",
                     [&](const httplib::Request&, httplib::Response& res) {
                       res.set_content(big, "text/plain");
                     });
  // Chunked: no Content-Length, so only the body callback can notice.
  local.server().Get("/chunked",
                     [&](const httplib::Request&, httplib::Response& res) {
                       res.set_chunked_content_provider(
                           "text/plain", [&](size_t, httplib::DataSink& sink) {
                             sink.write(big.data(), big.size());
                             sink.done();
                             return true;
                           });
                     });
  CurlHttpClientOptions options;
  options.max_response_body_bytes = 1024;
  auto client = NewClient(options);

  EXPECT_THAT(
      client->Send(Request("GET", local.Url("/sized"))),
      StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("1024")));
  EXPECT_THAT(
      client->Send(Request("GET", local.Url("/chunked"))),
      StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("1024")));
}

TEST(HttpClientTest, MalformedRequestsAreInvalidArgument) {
  auto client = NewClient();
  const std::string url = "http://127.0.0.1:9/";
  CurlHttpClientOptions zero_connect;
  zero_connect.connect_timeout = absl::ZeroDuration();

  EXPECT_THAT(client->Send(Request("GET", "ftp://127.0.0.1/file")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(client->Send(Request("GE T", url)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      client->Send(Request("GET", url, "", {{"X-Evil", "a\r\nInjected: 1"}})),
      StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(client->Send(Request("GET", url, "", {{"Bad Name", "v"}})),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(client->Send(Request("GET", url, "", {}, absl::ZeroDuration())),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(NewCurlHttpClient(zero_connect),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(HttpClientTest, ConcurrentSendsOnOneClientAllSucceed) {
  LocalServer local;
  local.server().Post("/echo",
                      [](const httplib::Request& req, httplib::Response& res) {
                        res.set_content(req.body, "text/plain");
                      });
  auto client = NewClient();
  std::atomic<int> ok{0};

  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        const std::string body = absl::StrCat(t, "-", i);
        auto response = client->Send(Request("POST", local.Url("/echo"), body));
        if (response.ok() && response->body == body) ok.fetch_add(1);
      }
    });
  }
  for (auto& thread : threads) thread.join();

  EXPECT_EQ(ok.load(), 40);
}

}  // namespace
}  // namespace fleetd
