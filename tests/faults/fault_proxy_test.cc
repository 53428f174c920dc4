// The fault proxy itself, against a small HTTP upstream (cpp-httplib) and a
// TCP echo upstream, with libcurl and raw sockets as clients.
#include "tests/faults/fault_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/http/http_client.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"

namespace fleetd::testing {
namespace {

using ::testing::HasSubstr;

// An HTTP upstream that echoes request bodies and counts requests.
class Upstream {
 public:
  Upstream() {
    server_.Post("/echo",
                 [this](const httplib::Request& req, httplib::Response& res) {
                   ++requests_;
                   res.set_content(req.body, "application/octet-stream");
                 });
    server_.Get("/big",
                [this](const httplib::Request&, httplib::Response& res) {
                  ++requests_;
                  res.set_content(std::string(2000, 'x'), "text/plain");
                });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    WaitFor([this] { return server_.is_running(); }, absl::Seconds(10));
  }
  ~Upstream() {
    server_.stop();
    thread_.join();
  }
  int port() const { return port_; }
  int requests() const { return requests_; }

 private:
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  std::atomic<int> requests_{0};
};

class HttpProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto p = FaultProxy::Start(
        {.mode = FaultProxy::Mode::kHttp, .upstream_port = upstream_.port()});
    ASSERT_THAT(p, IsOk());
    proxy_ = *std::move(p);
    auto c = NewCurlHttpClient();
    ASSERT_THAT(c, IsOk());
    client_ = *std::move(c);
  }

  absl::StatusOr<HttpResponse> Post(const std::string& body,
                                    absl::Duration timeout = absl::Seconds(5)) {
    HttpRequest r;
    r.method = "POST";
    r.url = proxy_->url() + "/echo";
    r.body = body;
    r.headers = {{"Content-Type", "application/octet-stream"}};
    r.timeout = timeout;
    return client_->Send(r);
  }

  Upstream upstream_;
  std::unique_ptr<FaultProxy> proxy_;
  std::unique_ptr<HttpClient> client_;
};

TEST_F(HttpProxyTest, PassesRequestsThroughOnOneKeptAliveConnection) {
  for (int i = 0; i < 5; ++i) {
    std::string body(i == 4 ? 5000 : 10, static_cast<char>('a' + i));
    auto r = Post(body);
    ASSERT_THAT(r, IsOk());
    EXPECT_EQ(r->status_code, 200);
    EXPECT_EQ(r->body, body);
  }
  EXPECT_EQ(upstream_.requests(), 5);
  EXPECT_EQ(proxy_->stats().connections, 1);
  EXPECT_EQ(proxy_->stats().requests, 5);
}

TEST_F(HttpProxyTest, ExpectContinueIsAnsweredByTheProxy) {
  HttpRequest r;
  r.method = "POST";
  r.url = proxy_->url() + "/echo";
  r.body = std::string(4096, 'e');
  r.headers = {{"Content-Type", "text/plain"}, {"Expect", "100-continue"}};
  const absl::Time start = absl::Now();
  auto resp = client_->Send(r);
  ASSERT_THAT(resp, IsOk());
  EXPECT_EQ(resp->body, r.body);
  // curl waits a whole second for a 100 that never comes.
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(900));
}

TEST_F(HttpProxyTest, BareStatusEveryThirdRequestNeverReachesUpstream) {
  proxy_->SetFault(
      {.kind = FaultKind::kStatus, .every_nth = 3, .http_status = 500});
  int errors = 0;
  for (int i = 0; i < 9; ++i) {
    auto r = Post("x");
    ASSERT_THAT(r, IsOk());
    if (r->status_code == 500) {
      ++errors;
      EXPECT_THAT(r->body, HasSubstr("Internal Server Error"));
      EXPECT_EQ(i % 3, 2);
    }
  }
  EXPECT_EQ(errors, 3);
  EXPECT_EQ(upstream_.requests(), 6);
  EXPECT_EQ(proxy_->stats().faults, 3);
}

TEST_F(HttpProxyTest, BurstEndsAfterMaxHits) {
  proxy_->SetFault(
      {.kind = FaultKind::kStatus, .max_hits = 2, .http_status = 503});
  EXPECT_EQ(Post("a")->status_code, 503);
  EXPECT_EQ(Post("b")->status_code, 503);
  EXPECT_EQ(Post("c")->status_code, 200);
}

TEST_F(HttpProxyTest, ResetBeforeForwardingKeepsUpstreamUntouched) {
  proxy_->SetFault({.kind = FaultKind::kResetBefore});
  EXPECT_THAT(Post("x"), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(upstream_.requests(), 0);
}

TEST_F(HttpProxyTest, ResetAfterTheUpstreamAnswered) {
  proxy_->SetFault({.kind = FaultKind::kResetAfter});
  EXPECT_THAT(Post("x"), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(upstream_.requests(), 1) << "the upstream applied it";
}

TEST_F(HttpProxyTest, StallHoldsUntilTheClientGivesUp) {
  proxy_->SetFault({.kind = FaultKind::kStall});
  EXPECT_THAT(Post("x", absl::Milliseconds(300)), ::testing::Not(IsOk()));
  EXPECT_EQ(upstream_.requests(), 0);
  proxy_->SetFault({.kind = FaultKind::kBlackhole});
  EXPECT_THAT(Post("y", absl::Milliseconds(300)), ::testing::Not(IsOk()));
  EXPECT_EQ(upstream_.requests(), 0);
  proxy_->Pass();
  EXPECT_EQ(Post("z")->status_code, 200);
}

TEST_F(HttpProxyTest, SlowDripPacesTheAnswer) {
  proxy_->SetFault(
      {.kind = FaultKind::kSlowDrip, .drip_bytes_per_second = 10000});
  HttpRequest r;
  r.url = proxy_->url() + "/big";
  const absl::Time start = absl::Now();
  auto resp = client_->Send(r);
  ASSERT_THAT(resp, IsOk());
  EXPECT_EQ(resp->body.size(), 2000u);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(150));
}

TEST_F(HttpProxyTest, PartitionRefusesEverythingThenHeals) {
  proxy_->SetFault(
      {.kind = FaultKind::kPartition, .duration = absl::Milliseconds(500)});
  EXPECT_TRUE(proxy_->Partitioned());
  EXPECT_THAT(Post("x"), StatusIs(absl::StatusCode::kUnavailable));
  ASSERT_TRUE(WaitFor(
      [&] {
        auto r = Post("y");
        return r.ok() && r->status_code == 200;
      },
      absl::Seconds(5)));
  EXPECT_FALSE(proxy_->Partitioned());
}

int Connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  timeval tv{.tv_sec = 5, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// Reads until `n` bytes or EOF/error; returns what was read.
std::string ReadN(int fd, size_t n) {
  std::string out;
  char buf[4096];
  while (out.size() < n) {
    ssize_t r = recv(fd, buf, sizeof(buf), 0);
    if (r <= 0) break;
    out.append(buf, static_cast<size_t>(r));
  }
  return out;
}

TEST_F(HttpProxyTest, ChunkedRequestBodiesAreForwardedWhole) {
  int fd = Connect(proxy_->port());
  ASSERT_GE(fd, 0);
  std::string req =
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
      "Content-Type: text/plain\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
  ASSERT_EQ(send(fd, req.data(), req.size(), 0),
            static_cast<ssize_t>(req.size()));
  std::string resp = ReadN(fd, 1);
  ASSERT_TRUE(WaitFor(
      [&] {
        if (resp.find("hello world") != std::string::npos) return true;
        resp += ReadN(fd, 1);
        return false;
      },
      absl::Seconds(5)))
      << resp;
  close(fd);
  EXPECT_EQ(upstream_.requests(), 1);
}

// A TCP upstream that echoes everything back.
class EchoServer {
 public:
  EchoServer() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    listen(fd_, 16);
    socklen_t len = sizeof(a);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      for (;;) {
        int c = accept(fd_, nullptr, nullptr);
        if (c < 0) return;
        ++accepted_;
        std::thread([c] {
          char buf[4096];
          for (;;) {
            ssize_t n = recv(c, buf, sizeof(buf), 0);
            if (n <= 0) break;
            send(c, buf, static_cast<size_t>(n), MSG_NOSIGNAL);
          }
          close(c);
        }).detach();
      }
    });
  }
  ~EchoServer() {
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
  }
  int port() const { return port_; }
  int accepted() const { return accepted_; }

 private:
  int fd_ = -1;
  int port_ = 0;
  std::atomic<int> accepted_{0};
  std::thread thread_;
};

TEST(TcpProxyTest, ForwardsBytesAndInjectsConnectionFaults) {
  EchoServer echo;
  auto proxy = FaultProxy::Start(
      {.mode = FaultProxy::Mode::kTcp, .upstream_port = echo.port()});
  ASSERT_THAT(proxy, IsOk());
  const std::string msg(300, 'm');
  {
    int fd = Connect((*proxy)->port());
    send(fd, msg.data(), msg.size(), 0);
    EXPECT_EQ(ReadN(fd, msg.size()), msg);
    close(fd);
  }
  // Reset before: the upstream never sees the connection.
  (*proxy)->SetFault({.kind = FaultKind::kResetBefore});
  int before = echo.accepted();
  {
    int fd = Connect((*proxy)->port());
    send(fd, msg.data(), msg.size(), MSG_NOSIGNAL);
    EXPECT_EQ(ReadN(fd, msg.size()), "");
    close(fd);
  }
  EXPECT_EQ(echo.accepted(), before);
  // Reset after: the upstream got the bytes and answered; the client hears
  // nothing.
  (*proxy)->SetFault({.kind = FaultKind::kResetAfter});
  {
    int fd = Connect((*proxy)->port());
    send(fd, msg.data(), msg.size(), 0);
    EXPECT_EQ(ReadN(fd, msg.size()), "");
    close(fd);
  }
  EXPECT_EQ(echo.accepted(), before + 1);
  // A partition resets open connections too, and ends by itself.
  (*proxy)->Pass();
  int fd = Connect((*proxy)->port());
  send(fd, "ping", 4, 0);
  EXPECT_EQ(ReadN(fd, 4), "ping");
  (*proxy)->SetFault(
      {.kind = FaultKind::kPartition, .duration = absl::Milliseconds(300)});
  EXPECT_EQ(ReadN(fd, 1), "");
  close(fd);
  ASSERT_TRUE(
      WaitFor([&] { return !(*proxy)->Partitioned(); }, absl::Seconds(5)));
  fd = Connect((*proxy)->port());
  send(fd, "pong", 4, 0);
  EXPECT_EQ(ReadN(fd, 4), "pong");
  close(fd);
}

}  // namespace
}  // namespace fleetd::testing
