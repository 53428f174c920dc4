#include <algorithm>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/rpc/http/exchange.h"
#include "server/rpc/http/session.h"

namespace fleetd::server::rpc::http {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// A strand that runs what was posted when the test pumps it.
class QueuePoster : public StrandPoster {
 public:
  void Post(absl::AnyInvocable<void() &&> fn) override {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(fn));
  }
  // Runs queued closures, and those they queue, until none is left.
  void RunAll() {
    while (true) {
      absl::AnyInvocable<void() &&> fn;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (queue_.empty()) return;
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      std::move(fn)();
    }
  }
  size_t Pending() {
    std::lock_guard<std::mutex> lock(mu_);
    return queue_.size();
  }

 private:
  std::mutex mu_;
  std::deque<absl::AnyInvocable<void() &&>> queue_;
};

// What the handler saw of one exchange.
struct Seen {
  std::shared_ptr<Exchange> exchange;
  std::string body;
  int data_calls = 0;
  int ends = 0;
  int cancels = 0;
};

class RecordingObserver : public RequestObserver {
 public:
  explicit RecordingObserver(std::shared_ptr<Seen> seen)
      : seen_(std::move(seen)) {}
  void OnData(absl::string_view chunk) override {
    EXPECT_EQ(seen_->ends, 0) << "OnData after OnEnd";
    seen_->body.append(chunk.data(), chunk.size());
    ++seen_->data_calls;
  }
  void OnEnd() override { ++seen_->ends; }
  void OnCancel() override { ++seen_->cancels; }

 private:
  std::shared_ptr<Seen> seen_;
};

class Http1SessionTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(SessionLimits()); }

  void Start(SessionLimits limits) {
    SessionOptions options;
    options.poster = poster_;
    options.output_ready = [this] { ++output_ready_; };
    options.peer = "127.0.0.1:4242";
    options.secure = true;
    options.limits = limits;
    options.handler = [this](std::shared_ptr<Exchange> exchange) {
      auto seen = std::make_shared<Seen>();
      seen->exchange = std::move(exchange);
      seen_.push_back(seen);
      return std::make_unique<RecordingObserver>(seen);
    };
    session_ = NewHttp1Session(std::move(options));
  }

  // Runs what exchanges posted, then returns the session's output.
  std::string Pump() {
    poster_->RunAll();
    std::string out;
    session_->TakeOutput(&out);
    return out;
  }

  Exchange& Ex(size_t i) { return *seen_.at(i)->exchange; }

  std::shared_ptr<QueuePoster> poster_ = std::make_shared<QueuePoster>();
  int output_ready_ = 0;
  std::vector<std::shared_ptr<Seen>> seen_;
  std::unique_ptr<ConnectionSession> session_;
};

constexpr absl::string_view kGet =
    "GET /fleetd.v1.Sync/Get?x=1 HTTP/1.1\r\nHost: example.com:8443\r\n"
    "User-Agent: test\r\nX-Mixed-Case: Value\r\n\r\n";

TEST_F(Http1SessionTest, GetWithoutBodyAndContentLengthResponse) {
  EXPECT_TRUE(session_->Idle());
  ASSERT_THAT(session_->Feed(kGet), IsOk());
  ASSERT_EQ(seen_.size(), 1u);
  Exchange& ex = Ex(0);
  EXPECT_EQ(ex.method(), "GET");
  EXPECT_EQ(ex.path(), "/fleetd.v1.Sync/Get?x=1");
  EXPECT_EQ(ex.authority(), "example.com:8443");
  EXPECT_EQ(ex.version(), HttpVersion::kHttp11);
  EXPECT_EQ(ex.peer(), "127.0.0.1:4242");
  EXPECT_TRUE(ex.secure());
  EXPECT_EQ(FindHeader(ex.headers(), "x-mixed-case").value_or(""), "Value");
  EXPECT_EQ(FindHeader(ex.headers(), "user-agent").value_or(""), "test");
  EXPECT_EQ(seen_[0]->ends, 1);
  EXPECT_EQ(seen_[0]->body, "");
  EXPECT_FALSE(session_->Idle());
  EXPECT_FALSE(session_->WantsRead()) << "request complete, response not";

  ex.SendHeaders(200, {{"content-type", "text/plain"}, {"content-length", "5"}},
                 false);
  ex.SendData("hello", true);
  EXPECT_EQ(Pump(),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
            "content-length: 5\r\n\r\nhello");
  EXPECT_GE(output_ready_, 1);
  EXPECT_TRUE(session_->Idle());
  EXPECT_TRUE(session_->WantsRead());
  EXPECT_FALSE(session_->WantsClose());
  EXPECT_EQ(seen_[0]->cancels, 0);
}

std::string PostWithBody(absl::string_view body) {
  return absl::StrCat("POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: ",
                      body.size(), "\r\n\r\n", body);
}

std::string Letters(size_t n) {
  std::string body;
  for (size_t i = 0; i < n; ++i)
    body.push_back(static_cast<char>('a' + i % 26));
  return body;
}

TEST_F(Http1SessionTest, ContentLengthBodyFedOneByteAtATime) {
  std::string body = Letters(1000);
  std::string request = PostWithBody(body);
  for (char c : request) {
    ASSERT_THAT(session_->Feed(absl::string_view(&c, 1)), IsOk());
  }
  ASSERT_EQ(seen_.size(), 1u);
  EXPECT_EQ(seen_[0]->body, body);
  EXPECT_EQ(seen_[0]->data_calls, 1000) << "bytes delivered as they arrive";
  EXPECT_EQ(seen_[0]->ends, 1);
}

TEST_F(Http1SessionTest, ContentLengthBodyInUnevenPieces) {
  std::string body = Letters(5000);
  std::string request = PostWithBody(body);
  size_t piece = 1;
  for (size_t pos = 0; pos < request.size();
       pos += piece, piece = piece * 3 % 97 + 1) {
    ASSERT_THAT(session_->Feed(absl::string_view(request).substr(pos, piece)),
                IsOk());
  }
  ASSERT_EQ(seen_.size(), 1u);
  EXPECT_EQ(seen_[0]->body, body);
  EXPECT_EQ(seen_[0]->ends, 1);
}

constexpr absl::string_view kChunkedPost =
    "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    "5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n";

TEST_F(Http1SessionTest, ChunkedRequestBody) {
  ASSERT_THAT(session_->Feed(kChunkedPost), IsOk());
  ASSERT_EQ(seen_.size(), 1u);
  EXPECT_EQ(seen_[0]->body, "hello world");
  EXPECT_EQ(seen_[0]->ends, 1);
  EXPECT_FALSE(FindHeader(Ex(0).headers(), "x-trailer").has_value())
      << "trailers are ignored";
}

TEST_F(Http1SessionTest, ChunkedRequestBodyOneByteAtATime) {
  for (char c : kChunkedPost) {
    ASSERT_THAT(session_->Feed(absl::string_view(&c, 1)), IsOk());
  }
  ASSERT_EQ(seen_.size(), 1u);
  EXPECT_EQ(seen_[0]->body, "hello world");
  EXPECT_EQ(seen_[0]->ends, 1);
}

TEST_F(Http1SessionTest, ExpectContinueIsAnsweredWhenHeadersAreComplete) {
  ASSERT_THAT(
      session_->Feed("PUT /x HTTP/1.1\r\nHost: h\r\n"
                     "Expect: 100-continue\r\nContent-Length: 3\r\n\r\n"),
      IsOk());
  EXPECT_EQ(Pump(), "HTTP/1.1 100 Continue\r\n\r\n");
  EXPECT_TRUE(session_->WantsRead());
  ASSERT_THAT(session_->Feed("abc"), IsOk());
  EXPECT_EQ(seen_[0]->body, "abc");
  EXPECT_EQ(seen_[0]->ends, 1);
  Ex(0).SendHeaders(204, {}, true);
  EXPECT_EQ(Pump(), "HTTP/1.1 204 No Content\r\n\r\n");
}

TEST_F(Http1SessionTest, ChunkedResponseWithTrailers) {
  ASSERT_THAT(session_->Feed(kGet), IsOk());
  Exchange& ex = Ex(0);
  ex.SendHeaders(200, {{"content-type", "application/grpc-web"}}, false);
  ex.SendData("abc", false);
  ex.SendData("", false);  // no chunk: an empty one would end the body
  ex.SendData(std::string(17, 'z'), false);
  ex.SendTrailers({{"grpc-status", "0"}, {"grpc-message", "ok"}});
  EXPECT_EQ(Pump(),
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc-web\r\n"
            "transfer-encoding: chunked\r\n\r\n"
            "3\r\nabc\r\n"
            "11\r\nzzzzzzzzzzzzzzzzz\r\n"
            "0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n");
  EXPECT_TRUE(session_->Idle());
  EXPECT_FALSE(session_->WantsClose());
}

TEST_F(Http1SessionTest, WholeResponseInOneStepIsTheSameBytes) {
  ASSERT_THAT(session_->Feed(kGet), IsOk());
  Ex(0).SendResponse(200, {{"content-type", "application/grpc-web"}}, "abc",
                     {{"grpc-status", "0"}});
  EXPECT_EQ(Pump(),
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc-web\r\n"
            "transfer-encoding: chunked\r\n\r\n"
            "3\r\nabc\r\n"
            "0\r\ngrpc-status: 0\r\n\r\n");
  ASSERT_THAT(session_->Feed(kGet), IsOk());
  Ex(1).SendResponse(200, {{"content-length", "2"}}, "ok", {});
  EXPECT_EQ(Pump(), "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
  EXPECT_TRUE(session_->Idle());
}

TEST_F(Http1SessionTest, ChunkedResponseEndedByData) {
  ASSERT_THAT(session_->Feed(kGet), IsOk());
  Ex(0).SendHeaders(500, {}, false);
  Ex(0).SendData("x", true);
  EXPECT_EQ(Pump(),
            "HTTP/1.1 500 Internal Server Error\r\n"
            "transfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n");
}

TEST_F(Http1SessionTest, TrailersAreDroppedWithContentLength) {
  ASSERT_THAT(session_->Feed(kGet), IsOk());
  Ex(0).SendHeaders(200, {{"content-length", "2"}}, false);
  Ex(0).SendData("ok", false);
  Ex(0).SendTrailers({{"grpc-status", "0"}});
  EXPECT_EQ(Pump(), "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
  EXPECT_TRUE(session_->Idle());
}

TEST_F(Http1SessionTest, HeadersOnlyResponseGetsContentLengthZero) {
  ASSERT_THAT(session_->Feed(kGet), IsOk());
  Ex(0).SendHeaders(404, {{"x-a", "b"}, {"connection", "keep-alive"}}, true);
  EXPECT_EQ(Pump(),
            "HTTP/1.1 404 Not Found\r\nx-a: b\r\ncontent-length: 0\r\n\r\n");
}

TEST_F(Http1SessionTest, PipelinedRequestsAreAnsweredInOrder) {
  std::string two = absl::StrCat(kGet, PostWithBody("body2"));
  ASSERT_THAT(session_->Feed(two), IsOk());
  ASSERT_EQ(seen_.size(), 1u) << "one request at a time";
  EXPECT_FALSE(session_->WantsRead());

  Ex(0).SendHeaders(200, {{"content-length", "3"}}, false);
  Ex(0).SendData("one", true);
  int ready_before = output_ready_;
  EXPECT_EQ(Pump(), "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none");
  EXPECT_GT(output_ready_, ready_before);
  ASSERT_EQ(seen_.size(), 2u)
      << "the kept request is parsed after the response";
  EXPECT_EQ(Ex(1).method(), "POST");
  EXPECT_EQ(seen_[1]->body, "body2");
  EXPECT_EQ(seen_[1]->ends, 1);

  // The first exchange is over: its methods do nothing now.
  Ex(0).SendData("late", true);
  Ex(1).SendHeaders(200, {{"content-length", "3"}}, false);
  Ex(1).SendData("two", true);
  EXPECT_EQ(Pump(), "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo");
  EXPECT_TRUE(session_->WantsRead());
  EXPECT_FALSE(session_->WantsClose());
}

TEST_F(Http1SessionTest, ConnectionCloseClosesAfterTheResponse) {
  ASSERT_THAT(session_->Feed("GET / HTTP/1.1\r\nHost: h\r\n"
                             "Connection: close\r\n\r\n"),
              IsOk());
  EXPECT_FALSE(session_->WantsClose());
  Ex(0).SendHeaders(200, {{"content-length", "0"}}, true);
  EXPECT_EQ(
      Pump(),
      "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
  EXPECT_TRUE(session_->WantsClose());
  EXPECT_FALSE(session_->WantsRead());
}

TEST_F(Http1SessionTest, Http10ClosesAfterTheResponseAndIsNotChunked) {
  ASSERT_THAT(session_->Feed("GET /old HTTP/1.0\r\n\r\n"), IsOk());
  ASSERT_EQ(seen_.size(), 1u);
  EXPECT_EQ(Ex(0).authority(), "");
  Ex(0).SendHeaders(200, {}, false);
  Ex(0).SendData("raw", false);
  EXPECT_FALSE(session_->WantsClose());
  Ex(0).SendData("", true);
  EXPECT_EQ(Pump(), "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nraw");
  EXPECT_TRUE(session_->WantsClose());
}

TEST_F(Http1SessionTest, MalformedRequestLineGets400AndClose) {
  EXPECT_THAT(session_->Feed("GARBAGE\r\n\r\n"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  std::string out = Pump();
  EXPECT_THAT(out, StartsWith("HTTP/1.1 400 Bad Request\r\n"));
  EXPECT_THAT(out, HasSubstr("\r\nconnection: close\r\n"));
  EXPECT_THAT(out, HasSubstr("content-type: text/plain\r\n"));
  EXPECT_TRUE(session_->WantsClose());
  EXPECT_TRUE(seen_.empty());
  // Bytes after the error are ignored.
  EXPECT_THAT(session_->Feed(kGet), IsOk());
  EXPECT_TRUE(seen_.empty());
}

TEST_F(Http1SessionTest, MissingHostGets400) {
  EXPECT_THAT(session_->Feed("GET / HTTP/1.1\r\n\r\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("Host")));
  EXPECT_THAT(Pump(), StartsWith("HTTP/1.1 400 Bad Request\r\n"));
  EXPECT_TRUE(seen_.empty());
}

TEST_F(Http1SessionTest, UnsupportedVersionGets505) {
  EXPECT_THAT(session_->Feed("GET / HTTP/1.2\r\nHost: h\r\n\r\n"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Pump(),
              StartsWith("HTTP/1.1 505 HTTP Version Not Supported\r\n"));
  EXPECT_TRUE(session_->WantsClose());
}

TEST_F(Http1SessionTest, HugeHeaderGets431) {
  SessionLimits limits;
  limits.max_header_bytes = 1024;
  Start(limits);
  std::string request = absl::StrCat("GET / HTTP/1.1\r\nHost: h\r\nX-Big: ",
                                     std::string(2000, 'v'), "\r\n\r\n");
  EXPECT_THAT(session_->Feed(request),
              StatusIs(absl::StatusCode::kResourceExhausted));
  std::string out = Pump();
  EXPECT_THAT(out,
              StartsWith("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
  EXPECT_THAT(out, HasSubstr("\r\nconnection: close\r\n"));
  EXPECT_TRUE(session_->WantsClose());
  EXPECT_TRUE(seen_.empty());
}

TEST_F(Http1SessionTest, EndlessHeaderFedSlowlyGets431) {
  SessionLimits limits;
  limits.max_header_bytes = 1024;
  Start(limits);
  ASSERT_THAT(session_->Feed("GET / HTTP/1.1\r\nHost: h\r\n"), IsOk());
  absl::Status status;
  for (int i = 0; i < 200 && status.ok(); ++i) {
    status = session_->Feed("X-Header: 0123456789\r\n");
  }
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(Pump(), StartsWith("HTTP/1.1 431 "));
}

TEST_F(Http1SessionTest, ResponseFromAnotherThread) {
  ASSERT_THAT(session_->Feed(kGet), IsOk());
  std::shared_ptr<Exchange> exchange = seen_[0]->exchange;
  std::thread worker([exchange] {
    exchange->SendHeaders(200, {{"content-length", "6"}}, false);
    exchange->SendData("worker", true);
  });
  worker.join();
  std::string nothing;
  session_->TakeOutput(&nothing);
  EXPECT_EQ(nothing, "") << "nothing is written outside the strand";
  EXPECT_EQ(poster_->Pending(), 2u);
  EXPECT_EQ(Pump(), "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nworker");
  EXPECT_TRUE(session_->Idle());
}

TEST_F(Http1SessionTest, AbortMidBodyCancels) {
  ASSERT_THAT(
      session_->Feed(absl::StrCat(
          "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n", "part")),
      IsOk());
  ASSERT_EQ(seen_.size(), 1u);
  EXPECT_EQ(seen_[0]->body, "part");
  EXPECT_TRUE(session_->WantsRead());
  session_->Abort();
  EXPECT_EQ(seen_[0]->cancels, 1);
  EXPECT_EQ(seen_[0]->ends, 0);
  Ex(0).SendHeaders(200, {}, true);  // does nothing now
  EXPECT_EQ(Pump(), "");
}

TEST_F(Http1SessionTest, AbortAfterTheResponseDoesNotCancel) {
  ASSERT_THAT(session_->Feed(kGet), IsOk());
  Ex(0).SendHeaders(200, {}, true);
  Pump();
  session_->Abort();
  EXPECT_EQ(seen_[0]->cancels, 0);
}

TEST_F(Http1SessionTest, ResetClosesWithoutCancel) {
  ASSERT_THAT(session_->Feed(kGet), IsOk());
  Ex(0).SendHeaders(200, {}, false);
  Ex(0).SendData("partial", false);
  Ex(0).Reset(false);
  Ex(0).SendData("more", true);  // after Reset: nothing
  std::string out = Pump();
  EXPECT_THAT(out, HasSubstr("7\r\npartial\r\n"));
  EXPECT_THAT(out, Not(HasSubstr("more")));
  EXPECT_THAT(out, Not(HasSubstr("0\r\n\r\n"))) << "the response is not ended";
  EXPECT_TRUE(session_->WantsClose());
  EXPECT_FALSE(session_->WantsRead());
  session_->Abort();
  EXPECT_EQ(seen_[0]->cancels, 0);
}

TEST_F(Http1SessionTest, EarlyResponseBeforeTheBodyCloses) {
  ASSERT_THAT(
      session_->Feed(
          "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nab"),
      IsOk());
  Ex(0).SendHeaders(413, {}, true);
  EXPECT_EQ(Pump(),
            "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n"
            "connection: close\r\n\r\n");
  EXPECT_TRUE(session_->WantsClose());
  session_->Abort();
  EXPECT_EQ(seen_[0]->cancels, 0) << "the response ended";
}

TEST_F(Http1SessionTest, ShutdownWhenIdleClosesAtOnce) {
  session_->Shutdown();
  EXPECT_TRUE(session_->WantsClose());
}

TEST_F(Http1SessionTest, ShutdownClosesAfterTheResponseInProgress) {
  ASSERT_THAT(session_->Feed(kGet), IsOk());
  session_->Shutdown();
  EXPECT_FALSE(session_->WantsClose());
  Ex(0).SendHeaders(200, {{"content-length", "0"}}, true);
  EXPECT_THAT(Pump(), HasSubstr("connection: close\r\n"));
  EXPECT_TRUE(session_->WantsClose());
  EXPECT_EQ(seen_[0]->cancels, 0);
}

TEST_F(Http1SessionTest, PendingOutputOverTheLimitStopsReading) {
  SessionLimits limits;
  limits.max_pending_output_bytes = 100;
  Start(limits);
  ASSERT_THAT(session_->Feed(
                  "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n"),
              IsOk());
  EXPECT_TRUE(session_->WantsRead());
  Ex(0).SendHeaders(200, {}, false);
  Ex(0).SendData(std::string(200, 'x'), false);
  poster_->RunAll();
  EXPECT_FALSE(session_->WantsRead());
  std::string out;
  session_->TakeOutput(&out);
  EXPECT_TRUE(session_->WantsRead());
}

TEST_F(Http1SessionTest, UnsafeResponseHeadersAreDropped) {
  ASSERT_THAT(session_->Feed(kGet), IsOk());
  Ex(0).SendHeaders(200,
                    {{"x-ok", "1"},
                     {"x-evil", "a\r\nset-cookie: b"},
                     {"bad name", "v"},
                     {"transfer-encoding", "gzip"}},
                    true);
  EXPECT_EQ(Pump(), "HTTP/1.1 200 OK\r\nx-ok: 1\r\ncontent-length: 0\r\n\r\n");
}

TEST_F(Http1SessionTest, HeadResponseHasNoBody) {
  ASSERT_THAT(session_->Feed("HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"), IsOk());
  Ex(0).SendHeaders(200, {{"content-length", "5"}}, false);
  Ex(0).SendData("hello", true);
  EXPECT_EQ(Pump(), "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n");
  EXPECT_TRUE(session_->WantsRead());
}

}  // namespace
}  // namespace fleetd::server::rpc::http
