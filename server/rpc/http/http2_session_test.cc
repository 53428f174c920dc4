// The HTTP/2 session driven by a real nghttp2 client session in memory: the
// bytes go through HPACK and framing both ways, with no socket.
#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/rpc/http/exchange.h"
#include "server/rpc/http/session.h"

namespace fleetd::server::rpc::http {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::fleetd::testing::WaitFor;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// A strand for tests: closures queue up and run when the test says so, on the
// test's thread. Post may be called from any thread.
class TestPoster final : public StrandPoster {
 public:
  void Post(absl::AnyInvocable<void() &&> fn) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!closed_) queue_.push_back(std::move(fn));
  }
  // Runs queued closures (and those they queue) until none is left; returns
  // how many ran.
  int RunAll() {
    int ran = 0;
    for (;;) {
      absl::AnyInvocable<void() &&> fn;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (queue_.empty()) return ran;
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      std::move(fn)();
      ++ran;
    }
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    queue_.clear();
  }

 private:
  std::mutex mu_;
  bool closed_ = false;                              // guarded by mu_
  std::deque<absl::AnyInvocable<void() &&>> queue_;  // guarded by mu_
};

// What the client saw of one stream.
struct ClientStream {
  int status = 0;
  Headers headers;
  std::string data;
  Headers trailers;
  bool closed = false;
  uint32_t close_code = 0;
};

struct Goaway {
  int32_t last_stream_id;
  uint32_t error_code;
};

// An nghttp2 client session in memory.
class TestClient {
 public:
  TestClient() {
    nghttp2_session_callbacks* cb;
    EXPECT_EQ(nghttp2_session_callbacks_new(&cb), 0);
    nghttp2_session_callbacks_set_on_header_callback(cb, &OnHeader);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, &OnFrameRecv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, &OnData);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, &OnClose);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, &OnFrameSend);
    EXPECT_EQ(nghttp2_session_client_new(&session_, cb, this), 0);
    nghttp2_session_callbacks_del(cb);
    EXPECT_EQ(nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, nullptr, 0),
              0);
  }
  ~TestClient() { nghttp2_session_del(session_); }

  nghttp2_session* session() { return session_; }

  // Everything the client would write.
  std::string Send() {
    std::string out;
    for (;;) {
      const uint8_t* data;
      ssize_t n = nghttp2_session_mem_send(session_, &data);
      EXPECT_GE(n, 0) << nghttp2_strerror(int(n));
      if (n <= 0) return out;
      out.append(reinterpret_cast<const char*>(data), size_t(n));
    }
  }
  void Receive(absl::string_view bytes) {
    ssize_t n = nghttp2_session_mem_recv(
        session_, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    EXPECT_EQ(n, ssize_t(bytes.size())) << nghttp2_strerror(int(n));
  }

  // Opens a request stream: HEADERS, with END_STREAM when `end_stream`.
  int32_t StartRequest(const std::string& path, Headers extra = {},
                       bool end_stream = false) {
    Headers all = {{":method", "POST"},
                   {":scheme", "http"},
                   {":authority", "example.com"},
                   {":path", path}};
    for (Header& h : extra) all.push_back(std::move(h));
    return SubmitHeaders(-1, all, end_stream);
  }
  // HEADERS exactly as given: a new stream when `id` is -1, else trailers.
  int32_t SubmitHeaders(int32_t id, const Headers& all, bool end_stream) {
    std::vector<nghttp2_nv> nva;
    for (const Header& h : all) {
      nva.push_back(
          {reinterpret_cast<uint8_t*>(const_cast<char*>(h.name.data())),
           reinterpret_cast<uint8_t*>(const_cast<char*>(h.value.data())),
           h.name.size(), h.value.size(), NGHTTP2_NV_FLAG_NONE});
    }
    int32_t rv = nghttp2_submit_headers(
        session_, end_stream ? NGHTTP2_FLAG_END_STREAM : NGHTTP2_FLAG_NONE, id,
        nullptr, nva.data(), nva.size(), nullptr);
    EXPECT_GE(rv, 0) << nghttp2_strerror(rv);
    if (id == -1) id = rv;
    streams_[id];
    return id;
  }
  // Sends `data` as DATA frames of its own (more than one past the frame
  // size), after what was sent before; `end_stream` ends the request.
  void SendBody(int32_t id, std::string data, bool end_stream) {
    RequestBody& body = bodies_[id];
    body.chunks.push_back(std::move(data));
    body.end = end_stream;
    if (body.submitted) {
      nghttp2_session_resume_data(session_, id);
    } else if (nghttp2_session_find_stream(session_, id) != nullptr) {
      SubmitBody(id);
    }  // else OnFrameSend submits it once the stream's HEADERS went out
  }

  ClientStream& stream(int32_t id) { return streams_[id]; }
  const std::optional<Goaway>& goaway() const { return goaway_; }
  const std::vector<std::string>& ping_acks() const { return ping_acks_; }
  uint32_t remote_setting(nghttp2_settings_id id) {
    return nghttp2_session_get_remote_settings(session_, id);
  }

 private:
  static TestClient* Self(void* p) { return static_cast<TestClient*>(p); }

  struct RequestBody {
    std::deque<std::string> chunks;
    size_t offset = 0;
    bool end = false;
    bool submitted = false;
  };

  // One data provider per stream, for the whole request: it stops at chunk
  // boundaries (one frame each), waits (DEFERRED) for more, and ends the
  // stream when told.
  void SubmitBody(int32_t id) {
    bodies_[id].submitted = true;
    nghttp2_data_provider provider;
    provider.source.ptr = &bodies_[id];
    provider.read_callback = &ReadBody;
    EXPECT_EQ(
        nghttp2_submit_data(session_, NGHTTP2_FLAG_END_STREAM, id, &provider),
        0);
  }

  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buf,
                          size_t length, uint32_t* flags,
                          nghttp2_data_source* source, void*) {
    auto* body = static_cast<RequestBody*>(source->ptr);
    if (body->chunks.empty()) {
      if (!body->end) return NGHTTP2_ERR_DEFERRED;
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      return 0;
    }
    const std::string& chunk = body->chunks.front();
    size_t n = std::min(length, chunk.size() - body->offset);
    std::memcpy(buf, chunk.data() + body->offset, n);
    body->offset += n;
    if (body->offset == chunk.size()) {
      body->chunks.pop_front();
      body->offset = 0;
      if (body->chunks.empty() && body->end) *flags |= NGHTTP2_DATA_FLAG_EOF;
    }
    return ssize_t(n);
  }

  static int OnFrameSend(nghttp2_session*, const nghttp2_frame* frame,
                         void* p) {
    TestClient* self = Self(p);
    auto it = self->bodies_.find(frame->hd.stream_id);
    if (frame->hd.type == NGHTTP2_HEADERS && it != self->bodies_.end() &&
        !it->second.submitted) {
      self->SubmitBody(it->first);
    }
    return 0;
  }

  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame,
                      const uint8_t* name, size_t namelen, const uint8_t* value,
                      size_t valuelen, uint8_t, void* p) {
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    ClientStream& s = Self(p)->streams_[frame->hd.stream_id];
    std::string n(reinterpret_cast<const char*>(name), namelen);
    std::string v(reinterpret_cast<const char*>(value), valuelen);
    if (frame->headers.cat == NGHTTP2_HCAT_HEADERS) {
      s.trailers.push_back({n, v});
    } else if (n == ":status") {
      s.status = std::stoi(v);
    } else {
      s.headers.push_back({n, v});
    }
    return 0;
  }
  static int OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame,
                         void* p) {
    TestClient* self = Self(p);
    if (frame->hd.type == NGHTTP2_GOAWAY) {
      self->goaway_ =
          Goaway{frame->goaway.last_stream_id, frame->goaway.error_code};
    } else if (frame->hd.type == NGHTTP2_PING &&
               (frame->hd.flags & NGHTTP2_FLAG_ACK) != 0) {
      self->ping_acks_.emplace_back(
          reinterpret_cast<const char*>(frame->ping.opaque_data), 8);
    }
    return 0;
  }
  static int OnData(nghttp2_session*, uint8_t, int32_t id, const uint8_t* data,
                    size_t len, void* p) {
    Self(p)->streams_[id].data.append(reinterpret_cast<const char*>(data), len);
    return 0;
  }
  static int OnClose(nghttp2_session*, int32_t id, uint32_t code, void* p) {
    ClientStream& s = Self(p)->streams_[id];
    s.closed = true;
    s.close_code = code;
    return 0;
  }

  nghttp2_session* session_ = nullptr;
  std::map<int32_t, ClientStream> streams_;
  std::map<int32_t, RequestBody> bodies_;  // nodes stay put
  std::optional<Goaway> goaway_;
  std::vector<std::string> ping_acks_;
};

// One exchange as the handler and its observer saw it.
struct Call {
  std::shared_ptr<Exchange> exchange;
  std::string body;
  std::vector<std::string> events;  // "data", "end", "cancel", in order
  int ends = 0;
  int cancels = 0;
};

class RecordingObserver final : public RequestObserver {
 public:
  explicit RecordingObserver(std::shared_ptr<Call> call)
      : call_(std::move(call)) {}
  void OnData(absl::string_view chunk) override {
    call_->body.append(chunk.data(), chunk.size());
    call_->events.push_back("data");
  }
  void OnEnd() override {
    ++call_->ends;
    call_->events.push_back("end");
  }
  void OnCancel() override {
    ++call_->cancels;
    call_->events.push_back("cancel");
  }
  // Requests to /held/... pace their body with ConsumeRequest.
  bool ControlsRequestWindow() const override {
    return absl::StartsWith(call_->exchange->path(), "/held");
  }

 private:
  std::shared_ptr<Call> call_;
};

class Http2SessionTest : public ::testing::Test {
 protected:
  ~Http2SessionTest() override {
    if (poster_ != nullptr) poster_->Close();  // as the driver does
    session_.reset();
  }

  void Start(SessionLimits limits = SessionLimits()) {
    poster_ = std::make_shared<TestPoster>();
    SessionOptions options;
    options.handler = [this](std::shared_ptr<Exchange> exchange) {
      auto call = std::make_shared<Call>();
      call->exchange = std::move(exchange);
      calls_.push_back(call);
      return std::make_unique<RecordingObserver>(call);
    };
    options.poster = poster_;
    options.output_ready = [this] { ++output_ready_; };
    options.peer = "127.0.0.1:4242";
    options.secure = true;
    options.limits = limits;
    session_ = NewHttp2Session(std::move(options));
  }

  // Runs posted closures and moves bytes both ways until nothing moves. The
  // client's bytes reach the server in pieces of `piece` bytes.
  void Pump(size_t piece = std::string::npos) {
    for (int round = 0; round < 1000; ++round) {
      bool moved = poster_->RunAll() > 0;
      std::string to_client;
      session_->TakeOutput(&to_client);
      if (!to_client.empty()) {
        moved = true;
        client_.Receive(to_client);
      }
      std::string to_server = client_.Send();
      for (size_t at = 0; at < to_server.size(); at += piece) {
        moved = true;
        ASSERT_THAT(
            session_->Feed(absl::string_view(to_server).substr(at, piece)),
            IsOk());
      }
      if (!moved) return;
    }
    FAIL() << "the session and the client never went quiet";
  }

  Call& call(size_t i) { return *calls_.at(i); }

  std::shared_ptr<TestPoster> poster_;
  std::unique_ptr<ConnectionSession> session_;
  std::vector<std::shared_ptr<Call>> calls_;
  int output_ready_ = 0;
  TestClient client_;
};

MATCHER_P2(HeaderIs, name, value, "") {
  return arg.name == name && arg.value == value;
}

TEST_F(Http2SessionTest, UnaryRequestAndResponseWithBodyAndTrailers) {
  Start();
  int32_t id = client_.StartRequest("/fleetd.v1.SyncService/Sync?x=1",
                                    {{"content-type", "application/grpc"}});
  client_.SendBody(id, "hello", /*end_stream=*/true);
  Pump();

  ASSERT_EQ(calls_.size(), 1u);
  const Exchange& ex = *call(0).exchange;
  EXPECT_EQ(ex.method(), "POST");
  EXPECT_EQ(ex.path(), "/fleetd.v1.SyncService/Sync?x=1");
  EXPECT_EQ(ex.authority(), "example.com");
  EXPECT_THAT(ex.headers(),
              ElementsAre(HeaderIs("content-type", "application/grpc")));
  EXPECT_EQ(ex.version(), HttpVersion::kHttp2);
  EXPECT_EQ(ex.peer(), "127.0.0.1:4242");
  EXPECT_TRUE(ex.secure());
  EXPECT_EQ(call(0).body, "hello");
  EXPECT_EQ(call(0).ends, 1);
  EXPECT_FALSE(session_->Idle());

  call(0).exchange->SendHeaders(200, {{"content-type", "application/grpc"}},
                                false);
  call(0).exchange->SendData("world", false);
  call(0).exchange->SendTrailers({{"grpc-status", "0"}, {"grpc-message", ""}});
  Pump();

  const ClientStream& s = client_.stream(id);
  EXPECT_EQ(s.status, 200);
  EXPECT_THAT(s.headers,
              ElementsAre(HeaderIs("content-type", "application/grpc")));
  EXPECT_EQ(s.data, "world");
  EXPECT_THAT(s.trailers, ElementsAre(HeaderIs("grpc-status", "0"),
                                      HeaderIs("grpc-message", "")));
  EXPECT_TRUE(s.closed);
  EXPECT_EQ(s.close_code, NGHTTP2_NO_ERROR);
  EXPECT_EQ(call(0).cancels, 0);
  EXPECT_TRUE(session_->Idle());
  EXPECT_TRUE(session_->WantsRead());
  EXPECT_FALSE(session_->WantsClose());
}

// SendResponse is SendHeaders, SendData and SendTrailers in one closure on
// the strand, which tells the driver about output once.
TEST_F(Http2SessionTest, WholeResponseIsQueuedOnceAndToldOnce) {
  Start();
  int32_t trailed = client_.StartRequest("/a", {}, /*end_stream=*/true);
  int32_t plain = client_.StartRequest("/b", {}, /*end_stream=*/true);
  Pump();
  ASSERT_EQ(calls_.size(), 2u);
  const int told = output_ready_;
  call(0).exchange->SendResponse(200, {{"content-type", "application/grpc"}},
                                 "world", {{"grpc-status", "0"}});
  EXPECT_EQ(poster_->RunAll(), 1);
  EXPECT_EQ(output_ready_, told + 1);
  call(1).exchange->SendResponse(404, {{"content-length", "4"}}, "gone", {});
  EXPECT_EQ(poster_->RunAll(), 1);
  EXPECT_EQ(output_ready_, told + 2);
  Pump();

  const ClientStream& a = client_.stream(trailed);
  EXPECT_EQ(a.status, 200);
  EXPECT_THAT(a.headers,
              ElementsAre(HeaderIs("content-type", "application/grpc")));
  EXPECT_EQ(a.data, "world");
  EXPECT_THAT(a.trailers, ElementsAre(HeaderIs("grpc-status", "0")));
  EXPECT_TRUE(a.closed);
  const ClientStream& b = client_.stream(plain);
  EXPECT_EQ(b.status, 404);
  EXPECT_EQ(b.data, "gone");
  EXPECT_TRUE(b.trailers.empty());
  EXPECT_TRUE(b.closed);
  EXPECT_EQ(b.close_code, NGHTTP2_NO_ERROR);
  EXPECT_TRUE(session_->Idle());
}

TEST_F(Http2SessionTest, AdvertisesLimitsInSettings) {
  SessionLimits limits;
  limits.max_concurrent_streams = 7;
  limits.max_header_bytes = 3000;
  Start(limits);
  Pump();
  EXPECT_EQ(client_.remote_setting(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS),
            7u);
  EXPECT_EQ(client_.remote_setting(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE),
            3000u);
  EXPECT_EQ(client_.remote_setting(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE),
            1u << 20);
  EXPECT_EQ(nghttp2_session_get_remote_window_size(client_.session()), 1 << 20);
}

TEST_F(Http2SessionTest,
       RequestBodyOverSeveralFramesArrivesInOrderAndEndsOnce) {
  Start();
  int32_t id = client_.StartRequest("/upload");
  std::string a(20000, 'a'), b(20000, 'b'), c(20000, 'c');
  client_.SendBody(id, a, false);
  client_.SendBody(id, b, false);
  client_.SendBody(id, c, true);
  Pump(/*piece=*/7);  // the parser must cope with any split

  ASSERT_EQ(calls_.size(), 1u);
  EXPECT_TRUE(call(0).body == a + b + c);
  EXPECT_EQ(call(0).ends, 1);
  EXPECT_GE(call(0).events.size(), 4u);
  EXPECT_EQ(call(0).events.back(), "end");
  call(0).events.pop_back();
  EXPECT_THAT(call(0).events, ::testing::Each("data"));
}

TEST_F(Http2SessionTest, StreamWindowOpensOnlyAsTheHandlerConsumes) {
  Start();
  const size_t window = 1 << 20;  // the initial stream window we advertise
  int32_t held = client_.StartRequest("/held/stream");
  client_.SendBody(held, std::string(window + window / 2, 'h'), true);
  Pump();
  ASSERT_EQ(calls_.size(), 1u);
  // The client may send one window, and no more until the handler consumes.
  EXPECT_EQ(call(0).body.size(), window);
  EXPECT_EQ(call(0).ends, 0);

  // The connection's window is not held by the paced stream: another stream
  // on the connection sends its whole body.
  int32_t other = client_.StartRequest("/upload");
  client_.SendBody(other, std::string(window / 2, 'o'), true);
  Pump();
  ASSERT_EQ(calls_.size(), 2u);
  EXPECT_EQ(call(1).body.size(), window / 2);
  EXPECT_EQ(call(1).ends, 1);

  // nghttp2 sends WINDOW_UPDATE once half the window was consumed.
  call(0).exchange->ConsumeRequest(window / 4);
  Pump();
  EXPECT_EQ(call(0).body.size(), window);
  call(0).exchange->ConsumeRequest(window / 4);
  Pump();
  EXPECT_EQ(call(0).body.size(), window + window / 2);
  EXPECT_EQ(call(0).ends, 1);
}

TEST_F(Http2SessionTest, UnpacedStreamReceivesBodiesLargerThanItsWindow) {
  Start();
  const size_t size = (size_t{5} << 20) / 2;
  int32_t id = client_.StartRequest("/upload");
  client_.SendBody(id, std::string(size, 'u'), true);
  Pump();
  ASSERT_EQ(calls_.size(), 1u);
  EXPECT_EQ(call(0).body.size(), size);
  EXPECT_EQ(call(0).ends, 1);
}

TEST_F(Http2SessionTest, BidirectionalStreaming) {
  Start();
  int32_t id = client_.StartRequest("/chat");
  client_.SendBody(id, "ping1", false);
  Pump();
  ASSERT_EQ(calls_.size(), 1u);
  EXPECT_EQ(call(0).body, "ping1");

  call(0).exchange->SendHeaders(200, {}, false);
  call(0).exchange->SendData("pong1", false);
  Pump();
  EXPECT_EQ(client_.stream(id).status, 200);
  EXPECT_EQ(client_.stream(id).data, "pong1");
  EXPECT_FALSE(client_.stream(id).closed);

  client_.SendBody(id, "ping2", true);
  Pump();
  EXPECT_EQ(call(0).body, "ping1ping2");
  EXPECT_EQ(call(0).ends, 1);

  call(0).exchange->SendData("pong2", false);
  call(0).exchange->SendTrailers({{"grpc-status", "0"}});
  Pump();
  EXPECT_EQ(client_.stream(id).data, "pong1pong2");
  EXPECT_THAT(client_.stream(id).trailers,
              ElementsAre(HeaderIs("grpc-status", "0")));
  EXPECT_TRUE(client_.stream(id).closed);
  EXPECT_EQ(client_.stream(id).close_code, NGHTTP2_NO_ERROR);
  EXPECT_EQ(call(0).cancels, 0);
  EXPECT_TRUE(session_->Idle());
}

TEST_F(Http2SessionTest, ResponseFromAnotherThreadGoesThroughThePoster) {
  Start();
  int32_t id = client_.StartRequest("/work", {}, /*end_stream=*/true);
  Pump();
  ASSERT_EQ(calls_.size(), 1u);
  std::shared_ptr<Exchange> exchange = call(0).exchange;
  std::thread worker([exchange] {
    exchange->SendHeaders(200, {{"x-worker", "1"}}, false);
    exchange->SendData(std::string(100000, 'w'), false);
    exchange->SendData("", true);
  });
  // The strand keeps running while the worker posts.
  EXPECT_TRUE(WaitFor([&] {
    Pump();
    return client_.stream(id).closed;
  }));
  worker.join();
  Pump();
  EXPECT_EQ(client_.stream(id).status, 200);
  EXPECT_THAT(client_.stream(id).headers,
              ElementsAre(HeaderIs("x-worker", "1")));
  EXPECT_TRUE(client_.stream(id).data == std::string(100000, 'w'));
  EXPECT_GT(output_ready_, 0);
  EXPECT_TRUE(session_->Idle());
}

TEST_F(Http2SessionTest, RequestTrailersEndTheRequest) {
  Start();
  int32_t id = client_.StartRequest("/t");
  client_.SendBody(id, "body", false);
  Pump();
  client_.SubmitHeaders(id, {{"x-checksum", "1"}}, /*end_stream=*/true);
  Pump();
  ASSERT_EQ(calls_.size(), 1u);
  EXPECT_EQ(call(0).body, "body");
  EXPECT_THAT(call(0).events, ElementsAre("data", "end"));
  EXPECT_THAT(call(0).exchange->headers(), IsEmpty());
}

TEST_F(Http2SessionTest, InvalidRequestIsResetWithoutCallingTheHandler) {
  Start();
  // No :path: nghttp2 validates the request and resets the stream.
  int32_t id = client_.SubmitHeaders(
      -1, {{":method", "GET"}, {":scheme", "http"}, {":authority", "a"}}, true);
  Pump();
  EXPECT_TRUE(calls_.empty());
  EXPECT_TRUE(client_.stream(id).closed);
  EXPECT_EQ(client_.stream(id).close_code, NGHTTP2_PROTOCOL_ERROR);
  EXPECT_TRUE(session_->Idle());
  EXPECT_FALSE(session_->WantsClose());
}

TEST_F(Http2SessionTest, ResponseEndedBeforeTheRequestStopsTheRequest) {
  Start();
  int32_t id = client_.StartRequest("/early");
  client_.SendBody(id, "part", false);
  Pump();
  ASSERT_EQ(calls_.size(), 1u);
  call(0).exchange->SendHeaders(413, {}, /*end_stream=*/true);
  Pump();
  // RFC 9113 8.1: the response is complete, RST_STREAM(NO_ERROR) stops the
  // upload; the observer hears nothing more, and no cancel.
  EXPECT_EQ(client_.stream(id).status, 413);
  EXPECT_TRUE(client_.stream(id).closed);
  EXPECT_EQ(client_.stream(id).close_code, NGHTTP2_NO_ERROR);
  EXPECT_THAT(call(0).events, ElementsAre("data"));
  EXPECT_TRUE(session_->Idle());
}

TEST_F(Http2SessionTest, ClientResetCancelsOnceAndLaterResponsesDoNothing) {
  Start();
  int32_t id = client_.StartRequest("/stream");
  client_.SendBody(id, "x", false);
  Pump();
  ASSERT_EQ(calls_.size(), 1u);

  ASSERT_EQ(nghttp2_submit_rst_stream(client_.session(), NGHTTP2_FLAG_NONE, id,
                                      NGHTTP2_CANCEL),
            0);
  Pump();
  EXPECT_EQ(call(0).cancels, 1);
  EXPECT_TRUE(session_->Idle());

  call(0).exchange->SendHeaders(200, {}, false);
  call(0).exchange->SendData("late", false);
  call(0).exchange->SendTrailers({{"grpc-status", "1"}});
  call(0).exchange->Reset(true);
  Pump();
  EXPECT_EQ(call(0).cancels, 1);
  EXPECT_THAT(call(0).events, ElementsAre("data", "cancel"));
  EXPECT_EQ(client_.stream(id).status, 0);
  EXPECT_THAT(client_.stream(id).data, IsEmpty());
  EXPECT_FALSE(client_.goaway().has_value());
  session_->Abort();
  EXPECT_EQ(call(0).cancels, 1);
}

TEST_F(Http2SessionTest, ServerResetSendsRstStreamAndDoesNotCancel) {
  Start();
  int32_t id = client_.StartRequest("/stream");
  Pump();
  ASSERT_EQ(calls_.size(), 1u);
  call(0).exchange->SendHeaders(200, {}, false);
  call(0).exchange->Reset(/*internal_error=*/true);
  call(0).exchange->Reset(false);  // does nothing
  Pump();
  EXPECT_TRUE(client_.stream(id).closed);
  EXPECT_EQ(client_.stream(id).close_code, NGHTTP2_INTERNAL_ERROR);
  EXPECT_EQ(call(0).cancels, 0);
  EXPECT_TRUE(session_->Idle());
}

TEST_F(Http2SessionTest, StreamsBeyondMaxConcurrentStreamsAreRefused) {
  SessionLimits limits;
  limits.max_concurrent_streams = 2;
  Start(limits);
  // All three go out before the client has seen our SETTINGS, so only the
  // server can hold the line.
  int32_t first = client_.StartRequest("/1");
  int32_t second = client_.StartRequest("/2");
  int32_t third = client_.StartRequest("/3");
  ASSERT_THAT(session_->Feed(client_.Send()), IsOk());
  Pump();

  ASSERT_EQ(calls_.size(), 2u);
  EXPECT_EQ(call(0).exchange->path(), "/1");
  EXPECT_EQ(call(1).exchange->path(), "/2");
  EXPECT_TRUE(client_.stream(third).closed);
  EXPECT_EQ(client_.stream(third).close_code, NGHTTP2_REFUSED_STREAM);
  EXPECT_FALSE(client_.stream(first).closed);
  EXPECT_FALSE(client_.stream(second).closed);

  // Once one finishes, a new stream is served.
  call(0).exchange->SendHeaders(204, {}, true);
  client_.SendBody(first, "", true);
  Pump();
  EXPECT_TRUE(client_.stream(first).closed);
  int32_t fourth = client_.StartRequest("/4", {}, true);
  Pump();
  ASSERT_EQ(calls_.size(), 3u);
  EXPECT_EQ(call(2).exchange->path(), "/4");
  call(2).exchange->SendHeaders(204, {}, true);
  Pump();
  EXPECT_EQ(client_.stream(fourth).status, 204);
  EXPECT_FALSE(session_->WantsClose());
}

TEST_F(Http2SessionTest, HeaderBlockOverTheLimitIsRefused) {
  SessionLimits limits;
  limits.max_header_bytes = 1024;
  Start(limits);
  int32_t big =
      client_.StartRequest("/big", {{"x-big", std::string(2000, 'b')}}, true);
  int32_t small = client_.StartRequest("/small", {{"x-small", "s"}}, true);
  ASSERT_THAT(session_->Feed(client_.Send()), IsOk());
  Pump();

  EXPECT_TRUE(client_.stream(big).closed);
  EXPECT_EQ(client_.stream(big).close_code, NGHTTP2_REFUSED_STREAM);
  // HPACK state survived: the next stream on the connection is served.
  ASSERT_EQ(calls_.size(), 1u);
  EXPECT_EQ(call(0).exchange->path(), "/small");
  EXPECT_THAT(call(0).exchange->headers(),
              ElementsAre(HeaderIs("x-small", "s")));
  call(0).exchange->SendHeaders(200, {}, true);
  Pump();
  EXPECT_EQ(client_.stream(small).status, 200);
  EXPECT_FALSE(client_.goaway().has_value());
  EXPECT_TRUE(session_->Idle());
}

TEST_F(Http2SessionTest, GarbageInsteadOfThePrefaceEndsTheConnection) {
  Start();
  EXPECT_THAT(
      session_->Feed("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr(nghttp2_strerror(NGHTTP2_ERR_BAD_CLIENT_MAGIC))));
  EXPECT_TRUE(session_->WantsClose());
  EXPECT_FALSE(session_->WantsRead());
  std::string out;
  session_->TakeOutput(&out);
  client_.Receive(out);  // our SETTINGS, then GOAWAY
  ASSERT_TRUE(client_.goaway().has_value());
  EXPECT_EQ(client_.goaway()->error_code, NGHTTP2_PROTOCOL_ERROR);
  EXPECT_THAT(session_->Feed("more"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(calls_.empty());
}

TEST_F(Http2SessionTest, ProtocolErrorAfterThePrefaceEndsTheConnection) {
  Start();
  std::string bytes(kHttp2Preface);
  bytes += std::string("\0\0\0\x04\0\0\0\0\0", 9);  // empty SETTINGS
  // WINDOW_UPDATE with a zero increment on stream 0: a connection error.
  bytes += std::string("\0\0\x04\x08\0\0\0\0\0\0\0\0\0", 13);
  EXPECT_THAT(session_->Feed(bytes),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("PROTOCOL_ERROR")));
  EXPECT_TRUE(session_->WantsClose());
  std::string out;
  session_->TakeOutput(&out);
  client_.Receive(out);
  ASSERT_TRUE(client_.goaway().has_value());
  EXPECT_EQ(client_.goaway()->error_code, NGHTTP2_PROTOCOL_ERROR);
}

TEST_F(Http2SessionTest, PingIsAnsweredByTheSession) {
  Start();
  const uint8_t opaque[8] = {'1', '2', '3', '4', '5', '6', '7', '8'};
  ASSERT_EQ(nghttp2_submit_ping(client_.session(), NGHTTP2_FLAG_NONE, opaque),
            0);
  Pump();
  EXPECT_THAT(client_.ping_acks(), ElementsAre("12345678"));
  EXPECT_TRUE(calls_.empty());
}

TEST_F(Http2SessionTest, ShutdownLetsTheOpenStreamFinishThenWantsClose) {
  Start();
  int32_t id = client_.StartRequest("/long");
  Pump();
  ASSERT_EQ(calls_.size(), 1u);

  session_->Shutdown();
  Pump();  // notice, PING, its ACK, the final GOAWAY
  ASSERT_TRUE(client_.goaway().has_value());
  EXPECT_EQ(client_.goaway()->last_stream_id, id);
  EXPECT_EQ(client_.goaway()->error_code, NGHTTP2_NO_ERROR);
  EXPECT_FALSE(session_->WantsClose());
  EXPECT_FALSE(session_->Idle());

  client_.SendBody(id, "", true);
  Pump();
  call(0).exchange->SendHeaders(200, {}, false);
  call(0).exchange->SendData("done", true);
  Pump();
  EXPECT_EQ(client_.stream(id).data, "done");
  EXPECT_TRUE(client_.stream(id).closed);
  EXPECT_EQ(client_.stream(id).close_code, NGHTTP2_NO_ERROR);
  EXPECT_EQ(call(0).ends, 1);
  EXPECT_EQ(call(0).cancels, 0);
  EXPECT_TRUE(session_->Idle());
  EXPECT_TRUE(session_->WantsClose());
}

TEST_F(Http2SessionTest, ShutdownWithoutStreamsWantsCloseAfterThePingAck) {
  Start();
  Pump();
  session_->Shutdown();
  std::string out;
  session_->TakeOutput(&out);
  client_.Receive(out);  // the notice and our PING
  ASSERT_TRUE(client_.goaway().has_value());
  EXPECT_EQ(client_.goaway()->last_stream_id, INT32_MAX);
  EXPECT_FALSE(session_->WantsClose());

  ASSERT_THAT(session_->Feed(client_.Send()), IsOk());  // the PING ACK
  EXPECT_TRUE(session_->WantsClose());
  out.clear();
  session_->TakeOutput(&out);
  // The final GOAWAY: last stream 0, NO_ERROR. (nghttp2's client ignores
  // frames once it has a GOAWAY and no stream, so check the bytes.)
  EXPECT_EQ(out, std::string("\0\0\x08\x07\0\0\0\0\0"
                             "\0\0\0\0\0\0\0\0",
                             17));
}

TEST_F(Http2SessionTest, AbortCancelsStreamsWhoseResponseHasNotEnded) {
  Start();
  int32_t silent = client_.StartRequest("/silent");
  int32_t started = client_.StartRequest("/started");
  int32_t ended = client_.StartRequest("/ended", {}, true);
  Pump();
  ASSERT_EQ(calls_.size(), 3u);
  call(1).exchange->SendHeaders(200, {}, false);
  // The client reads nothing more: the whole body cannot go out (flow
  // control), so the stream stays open although its response ended.
  call(2).exchange->SendHeaders(200, {}, false);
  call(2).exchange->SendData(std::string(200000, 'e'), true);
  poster_->RunAll();
  EXPECT_FALSE(session_->Idle());

  poster_->Close();
  session_->Abort();
  EXPECT_THAT(call(0).events, ElementsAre("cancel"));
  EXPECT_THAT(call(1).events, ElementsAre("cancel"));
  EXPECT_THAT(call(2).events, ElementsAre("end"));
  // Later responses do nothing (the poster is closed, the streams are gone).
  call(0).exchange->SendHeaders(200, {}, true);
  EXPECT_EQ(call(0).cancels, 1);
  (void)silent;
  (void)started;
  (void)ended;
}

TEST_F(Http2SessionTest,
       StopsReadingWhileAClientThatReadsNothingBacksUpOutput) {
  SessionLimits limits;
  limits.max_pending_output_bytes = 48 << 10;
  Start(limits);
  int32_t id = client_.StartRequest("/download", {}, true);
  Pump();
  ASSERT_EQ(calls_.size(), 1u);
  EXPECT_TRUE(session_->WantsRead());

  call(0).exchange->SendHeaders(200, {}, false);
  for (int i = 0; i < 4; ++i) {
    call(0).exchange->SendData(std::string(32 << 10, char('0' + i)), false);
  }
  poster_->RunAll();  // the driver takes nothing: the client is not reading
  EXPECT_FALSE(session_->WantsRead());

  // Taking the output is not enough: the client's window (64 KiB) holds the
  // rest of the body in the session.
  std::string out;
  session_->TakeOutput(&out);
  EXPECT_FALSE(session_->WantsRead());

  client_.Receive(out);
  Pump();  // the client reads and opens its window
  EXPECT_TRUE(session_->WantsRead());
  EXPECT_EQ(client_.stream(id).data.size(), 4u * (32 << 10));
  call(0).exchange->SendData("", true);
  Pump();
  EXPECT_TRUE(client_.stream(id).closed);
}

}  // namespace
}  // namespace fleetd::server::rpc::http
