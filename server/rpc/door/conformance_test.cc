// The server-side cases of the public Connect conformance suite
// (github.com/connectrpc/conformance, testsuites/data/*.yaml) that apply to
// fleetd.v1.SyncService, ported onto our service: the real front door
// (http::HttpServer with NewSyncServiceHandler and a FakeSyncHandler) over
// loopback, plaintext HTTP/1.1 (libcurl) and h2c with prior knowledge
// (nghttp2's client API), clients independent of the server's code.
// CONFORMANCE.md beside this file lists every case of the suite, which apply
// and how each is adapted.
//
// Names: the fixture is the suite (e.g. ErrorsUnaryCode for errors.yaml's
// unary/<code> cases), the test is the case, the parameter is the variant the
// suite's runner would have expanded it to (protocol, codec, HTTP version,
// compression). The suite's ConformanceService methods map onto ours: its
// Unary onto SyncMetrics, its IdempotentUnary onto GetSyncConfig, its bidi
// streams onto StreamSync. Our handler is not scripted by the request, so
// what the suite's requests ask the reference server to answer is set on the
// FakeSyncHandler instead.
#include <curl/curl.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "common/codec/codec.h"
#include "common/concurrency/timer_queue.h"
#include "common/concurrency/worker_pool.h"
#include "common/status/retry_after.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "fleetd/v1/sync.pb.h"
#include "gmock/gmock.h"
#include "google/protobuf/message.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "server/rpc/door/sync_service_handler.h"
#include "server/rpc/http/server.h"
#include "server/rpc/net/net.h"
#include "server/rpc/testing/fake_sync_handler.h"
#include "server/rpc/testing/test_tls.h"

namespace fleetd::server::rpc {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::WaitFor;
using ::testing::AnyOf;
using ::testing::Eq;
using ::testing::IsEmpty;
using ::testing::Le;
using ::testing::Not;
using ::testing::SizeIs;

constexpr absl::Duration kWait = absl::Seconds(10);
// The door's message limit, small so that the message-size cases stay small.
constexpr size_t kMaxMessage = 32 << 10;
constexpr char kApiKey[] = "conformance-key";
constexpr char kService[] = "/fleetd.v1.SyncService/";
// A path outside the service, as the suite's unexpected-uri cases use.
constexpr char kUnknownPath[] = "/fleetd.v1.UnknownService/UnknownMethod";

// ---------------------------------------------------------------------------
// Variants: what the suite's runner multiplies every case by.

enum class Proto { kConnect, kGrpc, kGrpcWeb };
enum class Codec { kProto, kJson };
enum class Http { k11, k2 };

struct Variant {
  Proto proto = Proto::kConnect;
  Codec codec = Codec::kProto;
  Http http = Http::k2;
  Compression compression = Compression::kNone;
};

std::string HttpName(Http http) { return http == Http::k11 ? "H1" : "H2"; }

std::string VariantName(const Variant& v) {
  std::string name;
  switch (v.proto) {
    case Proto::kConnect:
      name = "Connect";
      break;
    case Proto::kGrpc:
      name = "Grpc";
      break;
    case Proto::kGrpcWeb:
      name = "GrpcWeb";
      break;
  }
  absl::StrAppend(&name, v.codec == Codec::kProto ? "Proto" : "Json",
                  HttpName(v.http));
  if (v.compression != Compression::kNone) {
    absl::StrAppend(&name, "_", CompressionName(v.compression));
  }
  return name;
}

void PrintTo(const Variant& v, std::ostream* os) { *os << VariantName(v); }

// Every unary form the door serves: Connect and gRPC-Web on both HTTP
// versions and both codecs, gRPC (proto) on HTTP/2.
std::vector<Variant> UnaryVariants(bool with_json = true) {
  std::vector<Variant> out;
  for (Http http : {Http::k11, Http::k2}) {
    for (Proto proto : {Proto::kConnect, Proto::kGrpcWeb}) {
      out.push_back({proto, Codec::kProto, http});
      if (with_json) out.push_back({proto, Codec::kJson, http});
    }
  }
  out.push_back({Proto::kGrpc, Codec::kProto, Http::k2});
  return out;
}

// Every StreamSync form: the three protocols on HTTP/2 (HTTP/1.1 is refused
// with 505 for bidirectional calls, as connect-go does).
std::vector<Variant> StreamVariants(bool with_json = true) {
  std::vector<Variant> out;
  for (Proto proto : {Proto::kConnect, Proto::kGrpcWeb}) {
    out.push_back({proto, Codec::kProto, Http::k2});
    if (with_json) out.push_back({proto, Codec::kJson, Http::k2});
  }
  out.push_back({Proto::kGrpc, Codec::kProto, Http::k2});
  return out;
}

std::vector<Variant> ConnectUnaryVariants() {
  std::vector<Variant> out;
  for (Http http : {Http::k11, Http::k2}) {
    for (Codec codec : {Codec::kProto, Codec::kJson}) {
      out.push_back({Proto::kConnect, codec, http});
    }
  }
  return out;
}

std::vector<Variant> WithCompressions(const std::vector<Variant>& variants) {
  std::vector<Variant> out;
  for (Compression c :
       {Compression::kNone, Compression::kGzip, Compression::kZstd}) {
    for (Variant v : variants) {
      v.compression = c;
      out.push_back(v);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Status codes as a client reads them.

struct CodeCase {
  const char* name;  // the Connect code string, also the suite's case name
  absl::StatusCode code;
  int http_status;  // what the Connect protocol maps the code to
};

constexpr CodeCase kCodeCases[] = {
    {"canceled", absl::StatusCode::kCancelled, 499},
    {"unknown", absl::StatusCode::kUnknown, 500},
    {"invalid_argument", absl::StatusCode::kInvalidArgument, 400},
    {"deadline_exceeded", absl::StatusCode::kDeadlineExceeded, 504},
    {"not_found", absl::StatusCode::kNotFound, 404},
    {"already_exists", absl::StatusCode::kAlreadyExists, 409},
    {"permission_denied", absl::StatusCode::kPermissionDenied, 403},
    {"resource_exhausted", absl::StatusCode::kResourceExhausted, 429},
    {"failed_precondition", absl::StatusCode::kFailedPrecondition, 400},
    {"aborted", absl::StatusCode::kAborted, 409},
    {"out_of_range", absl::StatusCode::kOutOfRange, 400},
    {"unimplemented", absl::StatusCode::kUnimplemented, 501},
    {"internal", absl::StatusCode::kInternal, 500},
    {"unavailable", absl::StatusCode::kUnavailable, 503},
    {"data_loss", absl::StatusCode::kDataLoss, 500},
    {"unauthenticated", absl::StatusCode::kUnauthenticated, 401},
};

void PrintTo(const CodeCase& c, std::ostream* os) { *os << c.name; }

// The error message the suite's errors.yaml scripts for a code: its name in
// words.
std::string CodeMessage(const CodeCase& c) {
  return absl::StrReplaceAll(c.name, {{"_", " "}});
}

std::optional<absl::StatusCode> CodeFromConnectName(absl::string_view name) {
  for (const CodeCase& c : kCodeCases) {
    if (name == c.name) return c.code;
  }
  return std::nullopt;
}

// The code a Connect, gRPC or gRPC-Web client derives from an HTTP status
// that is not 200 (the gRPC project's HTTP-to-gRPC table, which the Connect
// spec adopts).
absl::StatusCode CodeFromHttpStatus(int status) {
  switch (status) {
    case 400:
      return absl::StatusCode::kInternal;
    case 401:
      return absl::StatusCode::kUnauthenticated;
    case 403:
      return absl::StatusCode::kPermissionDenied;
    case 404:
      return absl::StatusCode::kUnimplemented;
    case 429:
    case 502:
    case 503:
    case 504:
      return absl::StatusCode::kUnavailable;
    default:
      return absl::StatusCode::kUnknown;
  }
}

// ---------------------------------------------------------------------------
// The clients: one exchange each, on its own connection, driven on the test's
// thread. HTTP/1.1 through libcurl; HTTP/2 (h2c, prior knowledge) through
// nghttp2's client API, because libcurl 7.88 drops a response that the server
// completed before the request ended when RST_STREAM(NO_ERROR) follows it,
// which RFC 9113 8.1 allows a server to send and forbids a client to treat
// as a failure (the door does it whenever a call ends before the client
// half-closed). A request body may stay open (StreamSync): Send() adds
// bytes, CloseSend() ends it.

using Headers = std::vector<std::pair<std::string, std::string>>;

std::optional<std::string> Find(const Headers& headers,
                                absl::string_view name) {
  for (const auto& [key, value] : headers) {
    if (key == name) return value;
  }
  return std::nullopt;
}

struct ClientRequest {
  Http http = Http::k2;
  std::string method = "POST";
  std::string target;  // path and query
  Headers headers;     // lower-case names
  std::string body;
  // The body goes on with Send() until CloseSend() (HTTP/2 only: HTTP/1.1
  // would send it chunked).
  bool open_body = false;
};

class ClientCall {
 public:
  virtual ~ClientCall() = default;

  virtual void Send(absl::string_view bytes) = 0;
  virtual void CloseSend() = 0;
  bool send_closed() const { return send_closed_; }

  // Drives the exchange until `done` holds; false when `timeout` (real time)
  // passed first, or the exchange finished without `done`.
  bool RunUntil(const std::function<bool()>& done,
                absl::Duration timeout = kWait) {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      if (done()) return true;
      if (finished_ || absl::Now() >= deadline) return false;
      // Waits for the connection (at most 10 ms, for conditions that are
      // not on the wire).
      Step(absl::Milliseconds(10));
    }
  }
  bool Finish(absl::Duration timeout = kWait) {
    return RunUntil([this] { return finished_; }, timeout);
  }

  // The exchange is over: response complete, or failed (error()).
  bool finished() const { return finished_; }
  // Why the exchange failed below HTTP; empty when it did not.
  const std::string& error() const { return error_; }
  int status() const { return status_; }
  const Headers& headers() const { return headers_; }
  const Headers& trailers() const { return trailers_; }
  const std::string& body() const { return body_; }

 protected:
  // Moves the exchange on, waiting at most `wait` for the connection.
  virtual void Step(absl::Duration wait) = 0;

  std::string pending_;  // request bytes not handed to the library yet
  bool send_closed_ = false;
  bool finished_ = false;
  std::string error_;
  int status_ = 0;
  Headers headers_;
  Headers trailers_;
  std::string body_;
};

class CurlCall final : public ClientCall {
 public:
  CurlCall(int port, ClientRequest request)
      : easy_(curl_easy_init()), multi_(curl_multi_init()) {
    pending_ = std::move(request.body);
    send_closed_ = !request.open_body;
    std::string url = absl::StrCat("http://127.0.0.1:", port, request.target);
    curl_easy_setopt(easy_, CURLOPT_URL, url.c_str());
    curl_easy_setopt(easy_, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(easy_, CURLOPT_NOSIGNAL, 1L);
    if (request.method == "GET") {
      curl_easy_setopt(easy_, CURLOPT_HTTPGET, 1L);
    } else {
      curl_easy_setopt(easy_, CURLOPT_POST, 1L);
      if (request.method != "POST") {
        curl_easy_setopt(easy_, CURLOPT_CUSTOMREQUEST, request.method.c_str());
      }
      curl_easy_setopt(easy_, CURLOPT_READFUNCTION, &CurlCall::OnRead);
      curl_easy_setopt(easy_, CURLOPT_READDATA, this);
      curl_easy_setopt(easy_, CURLOPT_POSTFIELDSIZE_LARGE,
                       request.open_body
                           ? curl_off_t{-1}
                           : static_cast<curl_off_t>(pending_.size()));
    }
    bool has_type = false;
    for (const auto& [name, value] : request.headers) {
      has_type = has_type || name == "content-type";
      header_list_ = curl_slist_append(header_list_,
                                       absl::StrCat(name, ": ", value).c_str());
    }
    // No 100-continue round trip, and no form content-type made up by curl.
    header_list_ = curl_slist_append(header_list_, "Expect:");
    if (!has_type) {
      header_list_ = curl_slist_append(header_list_, "Content-Type:");
    }
    curl_easy_setopt(easy_, CURLOPT_HTTPHEADER, header_list_);
    curl_easy_setopt(easy_, CURLOPT_WRITEFUNCTION, &CurlCall::OnWrite);
    curl_easy_setopt(easy_, CURLOPT_WRITEDATA, this);
    curl_easy_setopt(easy_, CURLOPT_HEADERFUNCTION, &CurlCall::OnHeader);
    curl_easy_setopt(easy_, CURLOPT_HEADERDATA, this);
    curl_multi_add_handle(multi_, easy_);
  }

  ~CurlCall() override {
    curl_multi_remove_handle(multi_, easy_);
    curl_easy_cleanup(easy_);
    curl_multi_cleanup(multi_);
    curl_slist_free_all(header_list_);
  }

  CurlCall(const CurlCall&) = delete;
  CurlCall& operator=(const CurlCall&) = delete;

  void Send(absl::string_view bytes) override {
    pending_.append(bytes.data(), bytes.size());
    Resume();
  }
  void CloseSend() override {
    send_closed_ = true;
    Resume();
  }

 private:
  void Step(absl::Duration wait) override {
    int running = 0;
    curl_multi_perform(multi_, &running);
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
      if (msg->msg != CURLMSG_DONE) continue;
      finished_ = true;
      if (msg->data.result != CURLE_OK) {
        error_ = curl_easy_strerror(msg->data.result);
      }
    }
    if (finished_) return;
    // Returns as soon as the socket has something (or curl a timer).
    curl_multi_poll(multi_, nullptr, 0,
                    static_cast<int>(absl::ToInt64Milliseconds(wait)), nullptr);
  }

  void Resume() {
    if (!paused_) return;
    paused_ = false;
    curl_easy_pause(easy_, CURLPAUSE_CONT);
  }

  static size_t OnRead(char* buffer, size_t size, size_t n, void* self_ptr) {
    auto* self = static_cast<CurlCall*>(self_ptr);
    if (self->pending_.empty()) {
      if (self->send_closed_) return 0;
      self->paused_ = true;
      return CURL_READFUNC_PAUSE;
    }
    size_t take = std::min(size * n, self->pending_.size());
    self->pending_.copy(buffer, take);
    self->pending_.erase(0, take);
    return take;
  }

  static size_t OnWrite(char* data, size_t size, size_t n, void* self_ptr) {
    static_cast<CurlCall*>(self_ptr)->body_.append(data, size * n);
    return size * n;
  }

  // Status lines, header fields and, after the header block ended, chunked
  // trailer fields.
  static size_t OnHeader(char* data, size_t size, size_t n, void* self_ptr) {
    auto* self = static_cast<CurlCall*>(self_ptr);
    absl::string_view line(data, size * n);
    absl::string_view trimmed = absl::StripAsciiWhitespace(line);
    if (absl::StartsWith(line, "HTTP/")) {
      std::vector<absl::string_view> parts =
          absl::StrSplit(trimmed, ' ', absl::SkipEmpty());
      int status = 0;
      if (parts.size() >= 2 && absl::SimpleAtoi(parts[1], &status)) {
        self->status_ = status;
        self->headers_.clear();
        self->header_block_ended_ = false;
      }
    } else if (trimmed.empty()) {
      if (self->status_ >= 200) self->header_block_ended_ = true;
    } else {
      size_t colon = trimmed.find(':');
      if (colon != absl::string_view::npos) {
        std::string name = absl::AsciiStrToLower(
            absl::StripAsciiWhitespace(trimmed.substr(0, colon)));
        std::string value(
            absl::StripAsciiWhitespace(trimmed.substr(colon + 1)));
        (self->header_block_ended_ ? self->trailers_ : self->headers_)
            .emplace_back(std::move(name), std::move(value));
      }
    }
    return size * n;
  }

  CURL* const easy_;
  CURLM* const multi_;
  curl_slist* header_list_ = nullptr;
  bool paused_ = false;
  bool header_block_ended_ = false;
};

class H2Call final : public ClientCall {
 public:
  H2Call(int port, ClientRequest request)
      : fd_(testing::ConnectLoopback(port)) {
    pending_ = std::move(request.body);
    send_closed_ = !request.open_body;
    if (!fd_.valid()) {
      Fail("cannot connect");
      return;
    }
    nghttp2_session_callbacks* callbacks = nullptr;
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, &OnHeader);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks,
                                                              &OnData);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, &OnFrame);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks,
                                                           &OnStreamClose);
    nghttp2_session_client_new(&session_, callbacks, this);
    nghttp2_session_callbacks_del(callbacks);
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, nullptr, 0);

    const std::string authority = absl::StrCat("127.0.0.1:", port);
    Headers fields = {{":method", request.method},
                      {":scheme", "http"},
                      {":authority", authority},
                      {":path", request.target}};
    for (auto& field : request.headers) fields.push_back(std::move(field));
    std::vector<nghttp2_nv> nva;
    for (const auto& [name, value] : fields) {
      nva.push_back(
          {reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
           reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())),
           name.size(), value.size(), NGHTTP2_NV_FLAG_NONE});
    }
    nghttp2_data_provider body;
    body.source.ptr = this;
    body.read_callback = &ReadBody;
    // nghttp2 copies the fields.
    stream_id_ =
        nghttp2_submit_request(session_, nullptr, nva.data(), nva.size(),
                               request.method == "GET" ? nullptr : &body, this);
    if (stream_id_ < 0) Fail("cannot submit the request");
    Flush();
  }

  ~H2Call() override {
    if (session_ != nullptr) nghttp2_session_del(session_);
  }

  H2Call(const H2Call&) = delete;
  H2Call& operator=(const H2Call&) = delete;

  void Send(absl::string_view bytes) override {
    pending_.append(bytes.data(), bytes.size());
    Resume();
  }
  void CloseSend() override {
    send_closed_ = true;
    Resume();
  }

 private:
  void Fail(std::string why) {
    if (finished_) return;
    finished_ = true;
    error_ = std::move(why);
  }

  void Resume() {
    if (finished_ || !deferred_) return;
    deferred_ = false;
    nghttp2_session_resume_data(session_, stream_id_);
    Flush();
  }

  // Writes whatever the session has to send (blocking: flow control keeps
  // it within the socket's buffer).
  void Flush() {
    while (!finished_ && nghttp2_session_want_write(session_)) {
      const uint8_t* data = nullptr;
      ssize_t n = nghttp2_session_mem_send(session_, &data);
      if (n < 0) return Fail(nghttp2_strerror(static_cast<int>(n)));
      if (n == 0) return;
      for (ssize_t sent = 0; sent < n;) {
        ssize_t w = ::send(fd_.get(), data + sent,
                           static_cast<size_t>(n - sent), MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return Fail(absl::StrCat("send: ", std::strerror(errno)));
        sent += w;
      }
    }
  }

  void Step(absl::Duration wait) override {
    Flush();
    if (finished_) return;
    pollfd pfd{fd_.get(), POLLIN, 0};
    int ready =
        ::poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(wait)));
    if (ready <= 0) return;
    char buf[16384];
    ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) return;
    if (n <= 0) {
      return Fail(n == 0 ? "connection closed before the stream ended"
                         : absl::StrCat("recv: ", std::strerror(errno)));
    }
    ssize_t used = nghttp2_session_mem_recv(
        session_, reinterpret_cast<const uint8_t*>(buf),
        static_cast<size_t>(n));
    if (used < 0) return Fail(nghttp2_strerror(static_cast<int>(used)));
    Flush();
  }

  static H2Call* Self(void* user_data) {
    return static_cast<H2Call*>(user_data);
  }

  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buf,
                          size_t length, uint32_t* data_flags,
                          nghttp2_data_source*, void* user_data) {
    H2Call* self = Self(user_data);
    if (self->pending_.empty()) {
      if (self->send_closed_) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        return 0;
      }
      self->deferred_ = true;
      return NGHTTP2_ERR_DEFERRED;
    }
    size_t take = std::min(length, self->pending_.size());
    self->pending_.copy(reinterpret_cast<char*>(buf), take);
    self->pending_.erase(0, take);
    if (self->pending_.empty() && self->send_closed_) {
      *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    }
    return static_cast<ssize_t>(take);
  }

  // Response header fields; a header block after the response's is the
  // trailers.
  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame,
                      const uint8_t* name, size_t namelen, const uint8_t* value,
                      size_t valuelen, uint8_t, void* user_data) {
    H2Call* self = Self(user_data);
    if (frame->hd.stream_id != self->stream_id_) return 0;
    std::string key(reinterpret_cast<const char*>(name), namelen);
    std::string val(reinterpret_cast<const char*>(value), valuelen);
    if (frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
      if (key == ":status") {
        absl::SimpleAtoi(val, &self->status_);
      } else {
        self->headers_.emplace_back(std::move(key), std::move(val));
      }
    } else {
      self->trailers_.emplace_back(std::move(key), std::move(val));
    }
    return 0;
  }

  static int OnData(nghttp2_session*, uint8_t, int32_t stream_id,
                    const uint8_t* data, size_t len, void* user_data) {
    H2Call* self = Self(user_data);
    if (stream_id == self->stream_id_) {
      self->body_.append(reinterpret_cast<const char*>(data), len);
    }
    return 0;
  }

  static int OnFrame(nghttp2_session*, const nghttp2_frame* frame,
                     void* user_data) {
    H2Call* self = Self(user_data);
    if (frame->hd.stream_id == self->stream_id_ &&
        (frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0) {
      self->response_ended_ = true;
    }
    return 0;
  }

  // RFC 9113 8.1: RST_STREAM(NO_ERROR) after the response ended only stops
  // the request; the response stands.
  static int OnStreamClose(nghttp2_session*, int32_t stream_id,
                           uint32_t error_code, void* user_data) {
    H2Call* self = Self(user_data);
    if (stream_id != self->stream_id_) return 0;
    if (error_code != NGHTTP2_NO_ERROR) {
      self->Fail(
          absl::StrCat("stream reset: ", nghttp2_http2_strerror(error_code)));
    } else if (!self->response_ended_) {
      self->Fail("stream closed before the response ended");
    }
    self->finished_ = true;
    return 0;
  }

  rpc::UniqueFd fd_;
  nghttp2_session* session_ = nullptr;
  int32_t stream_id_ = -1;
  bool deferred_ = false;  // the body waits for Send() or CloseSend()
  bool response_ended_ = false;
};

std::unique_ptr<ClientCall> StartCall(int port, ClientRequest request) {
  if (request.http == Http::k2) {
    return std::make_unique<H2Call>(port, std::move(request));
  }
  return std::make_unique<CurlCall>(port, std::move(request));
}

// ---------------------------------------------------------------------------
// Wire pieces, written from the protocol specifications (not from the
// server's code).

std::string Frame(uint8_t flags, absl::string_view payload) {
  std::string out(5, '\0');
  out[0] = static_cast<char>(flags);
  const uint32_t n = static_cast<uint32_t>(payload.size());
  out[1] = static_cast<char>(n >> 24);
  out[2] = static_cast<char>(n >> 16);
  out[3] = static_cast<char>(n >> 8);
  out[4] = static_cast<char>(n);
  out.append(payload.data(), payload.size());
  return out;
}

struct Envelope {
  uint8_t flags = 0;
  std::string payload;
};

// Splits `body` into envelopes; false when it ends inside one.
bool SplitEnvelopes(absl::string_view body, std::vector<Envelope>* out) {
  while (!body.empty()) {
    if (body.size() < 5) return false;
    const auto* p = reinterpret_cast<const unsigned char*>(body.data());
    const size_t n = (size_t{p[1]} << 24) | (size_t{p[2]} << 16) |
                     (size_t{p[3]} << 8) | size_t{p[4]};
    if (body.size() - 5 < n) return false;
    out->push_back({p[0], std::string(body.substr(5, n))});
    body.remove_prefix(5 + n);
  }
  return true;
}

std::string Encode(const google::protobuf::Message& message, Codec codec) {
  if (codec == Codec::kProto) return message.SerializeAsString();
  std::string json;
  EXPECT_TRUE(google::protobuf::util::MessageToJsonString(message, &json).ok());
  return json;
}

bool Decode(absl::string_view bytes, Codec codec,
            google::protobuf::Message* message) {
  if (codec == Codec::kProto) {
    return message->ParseFromArray(bytes.data(),
                                   static_cast<int>(bytes.size()));
  }
  return google::protobuf::util::JsonStringToMessage(std::string(bytes),
                                                     message)
      .ok();
}

std::string Compressed(Compression c, absl::string_view bytes) {
  absl::StatusOr<std::string> out = Compress(c, bytes);
  EXPECT_THAT(out, IsOk());
  return out.ok() ? *out : std::string();
}

// grpc-message is percent-encoded (gRPC over HTTP/2, "Responses").
std::string PercentDecode(absl::string_view in) {
  std::string out;
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%' && i + 2 < in.size() && absl::ascii_isxdigit(in[i + 1]) &&
        absl::ascii_isxdigit(in[i + 2])) {
      out += absl::HexStringToBytes(in.substr(i + 1, 2));
      i += 2;
    } else {
      out.push_back(in[i]);
    }
  }
  return out;
}

// For a GET's query: everything but the unreserved characters escaped.
std::string QueryEscape(absl::string_view in) {
  std::string out;
  for (char ch : in) {
    if (absl::ascii_isalnum(ch) || ch == '-' || ch == '_' || ch == '.' ||
        ch == '~') {
      out.push_back(ch);
    } else {
      absl::StrAppend(&out, "%",
                      absl::BytesToHexString(absl::string_view(&ch, 1)));
    }
  }
  return out;
}

// The request headers of a call in `v`; `stream` for StreamSync.
Headers ProtocolHeaders(const Variant& v, bool stream) {
  const bool proto = v.codec == Codec::kProto;
  Headers headers;
  switch (v.proto) {
    case Proto::kConnect:
      if (stream) {
        headers.emplace_back("content-type", proto
                                                 ? "application/connect+proto"
                                                 : "application/connect+json");
      } else {
        headers.emplace_back("content-type",
                             proto ? "application/proto" : "application/json");
      }
      headers.emplace_back("connect-protocol-version", "1");
      if (v.compression != Compression::kNone) {
        headers.emplace_back(
            stream ? "connect-content-encoding" : "content-encoding",
            std::string(CompressionName(v.compression)));
      }
      break;
    case Proto::kGrpc:
      headers.emplace_back("content-type", "application/grpc");
      headers.emplace_back("te", "trailers");
      break;
    case Proto::kGrpcWeb:
      headers.emplace_back("content-type", proto ? "application/grpc-web+proto"
                                                 : "application/grpc-web+json");
      headers.emplace_back("x-grpc-web", "1");
      break;
  }
  if (v.proto != Proto::kConnect && v.compression != Compression::kNone) {
    headers.emplace_back("grpc-encoding",
                         std::string(CompressionName(v.compression)));
  }
  headers.emplace_back("x-api-key", kApiKey);
  return headers;
}

// One message of a call in `v`, as it goes on the wire: Connect unary bare
// (compressed whole), every other form in an envelope (compressed with the
// flag).
std::string WireMessage(const Variant& v, bool stream,
                        const google::protobuf::Message& message) {
  std::string bytes = Encode(message, v.codec);
  const bool compress = v.compression != Compression::kNone;
  if (compress) bytes = Compressed(v.compression, bytes);
  if (v.proto == Proto::kConnect && !stream) return bytes;
  return Frame(compress ? 1 : 0, bytes);
}

// The timeout header of `v` for `ms` milliseconds.
std::pair<std::string, std::string> TimeoutHeader(const Variant& v, int ms) {
  if (v.proto == Proto::kConnect) {
    return {"connect-timeout-ms", absl::StrCat(ms)};
  }
  return {"grpc-timeout", absl::StrCat(ms, "m")};
}

// ---------------------------------------------------------------------------
// Reading a response as a client of its protocol would.

struct Outcome {
  int http_status = 0;
  absl::StatusCode code = absl::StatusCode::kUnknown;
  std::string message;
  std::vector<std::string> messages;  // response message payloads, in order
  // Response headers, trailers and error metadata (the first value of each
  // name); Connect unary "trailer-" headers under their name without it.
  std::map<std::string, std::string> metadata;
  // Why the response could not be read, if it could not.
  std::string problem;
  std::string transport_error;  // the client's, when the exchange failed
};

std::ostream& operator<<(std::ostream& os, const Outcome& o) {
  os << "HTTP " << o.http_status << ", " << absl::StatusCodeToString(o.code)
     << " \"" << o.message << "\", " << o.messages.size() << " messages";
  if (!o.problem.empty()) os << ", problem: " << o.problem;
  if (!o.transport_error.empty()) os << ", transport: " << o.transport_error;
  return os;
}

void ReadConnectError(const google::protobuf::Struct& error, Outcome* out) {
  auto field = [&](const char* name) -> std::string {
    auto it = error.fields().find(name);
    return it == error.fields().end() ? "" : it->second.string_value();
  };
  std::string code = field("code");
  out->message = field("message");
  if (code.empty()) {
    out->code = CodeFromHttpStatus(out->http_status);
  } else if (std::optional<absl::StatusCode> c = CodeFromConnectName(code)) {
    out->code = *c;
  } else {
    out->problem = absl::StrCat("unknown Connect code \"", code, "\"");
  }
}

void ReadConnectUnary(const ClientCall& call, const std::string& content_type,
                      Outcome* out) {
  for (const auto& [name, value] : call.headers()) {
    if (absl::StartsWith(name, "trailer-")) {
      out->metadata.emplace(name.substr(8), value);
    }
  }
  if (call.status() == 200) {
    out->code = absl::StatusCode::kOk;
    out->messages.push_back(call.body());
    return;
  }
  // Errors are JSON; a response that is not is read from its HTTP status.
  if (!absl::StartsWith(content_type, "application/json")) {
    out->code = CodeFromHttpStatus(call.status());
    return;
  }
  google::protobuf::Struct error;
  if (!google::protobuf::util::JsonStringToMessage(call.body(), &error).ok()) {
    out->problem = absl::StrCat("error body is not JSON: ", call.body());
    out->code = CodeFromHttpStatus(call.status());
    return;
  }
  ReadConnectError(error, out);
}

void ReadConnectStream(const ClientCall& call, Outcome* out) {
  if (call.status() != 200) {
    out->code = CodeFromHttpStatus(call.status());
    return;
  }
  std::vector<Envelope> envelopes;
  if (!SplitEnvelopes(call.body(), &envelopes)) {
    out->problem = "body ends inside a message";
  }
  bool ended = false;
  for (const Envelope& e : envelopes) {
    if (ended) {
      out->problem = "a message after the end-of-stream message";
    } else if (e.flags == 0) {
      out->messages.push_back(e.payload);
    } else if (e.flags == 2) {
      ended = true;
      google::protobuf::Struct end;
      if (!google::protobuf::util::JsonStringToMessage(e.payload, &end).ok()) {
        out->problem = absl::StrCat("end-of-stream is not JSON: ", e.payload);
        continue;
      }
      auto metadata = end.fields().find("metadata");
      if (metadata != end.fields().end()) {
        for (const auto& [name, values] :
             metadata->second.struct_value().fields()) {
          if (values.list_value().values_size() > 0) {
            out->metadata.emplace(absl::AsciiStrToLower(name),
                                  values.list_value().values(0).string_value());
          }
        }
      }
      auto error = end.fields().find("error");
      if (error == end.fields().end()) {
        out->code = absl::StatusCode::kOk;
      } else {
        ReadConnectError(error->second.struct_value(), out);
      }
    } else {
      out->problem = absl::StrCat("unexpected envelope flags ", e.flags);
    }
  }
  if (!ended && out->problem.empty()) {
    out->problem = "no end-of-stream message";
  }
}

void ReadGrpc(const ClientCall& call, const std::string& content_type, bool web,
              Outcome* out) {
  if (call.status() != 200) {
    out->code = CodeFromHttpStatus(call.status());
    return;
  }
  if (!absl::StartsWith(content_type,
                        web ? "application/grpc-web" : "application/grpc")) {
    out->code = absl::StatusCode::kUnknown;
    out->problem = absl::StrCat("content-type \"", content_type, "\"");
    return;
  }
  Headers trailers = call.trailers();
  std::vector<Envelope> envelopes;
  if (!SplitEnvelopes(call.body(), &envelopes)) {
    out->problem = "body ends inside a message";
  }
  for (const Envelope& e : envelopes) {
    if (e.flags == 0) {
      out->messages.push_back(e.payload);
    } else if (web && e.flags == 0x80) {
      for (absl::string_view line : absl::StrSplit(e.payload, "\r\n")) {
        size_t colon = line.find(':');
        if (colon == absl::string_view::npos) continue;
        trailers.emplace_back(
            absl::AsciiStrToLower(
                absl::StripAsciiWhitespace(line.substr(0, colon))),
            std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
      }
    } else {
      out->problem = absl::StrCat("unexpected envelope flags ", e.flags);
    }
  }
  for (const auto& [name, value] : trailers) out->metadata.emplace(name, value);
  // Trailers, or for a trailers-only response the headers.
  std::optional<std::string> status = Find(trailers, "grpc-status");
  std::optional<std::string> message = Find(trailers, "grpc-message");
  if (!status.has_value()) {
    status = Find(call.headers(), "grpc-status");
    message = Find(call.headers(), "grpc-message");
  }
  int code = 0;
  if (!status.has_value() || !absl::SimpleAtoi(*status, &code) || code < 0 ||
      code > 16) {
    out->code = absl::StatusCode::kInternal;
    out->problem = "no grpc-status";
    return;
  }
  out->code = static_cast<absl::StatusCode>(code);
  out->message = PercentDecode(message.value_or(""));
}

Outcome Read(const Variant& v, bool stream, const ClientCall& call) {
  Outcome out;
  out.http_status = call.status();
  out.transport_error = call.error();
  for (const auto& [name, value] : call.headers()) {
    out.metadata.emplace(name, value);
  }
  if (call.status() == 0) {
    out.code = absl::StatusCode::kUnavailable;
    out.problem = "no response";
    return out;
  }
  std::string content_type = Find(call.headers(), "content-type").value_or("");
  switch (v.proto) {
    case Proto::kConnect:
      if (stream) {
        ReadConnectStream(call, &out);
      } else {
        ReadConnectUnary(call, content_type, &out);
      }
      break;
    case Proto::kGrpc:
      ReadGrpc(call, content_type, false, &out);
      break;
    case Proto::kGrpcWeb:
      ReadGrpc(call, content_type, true, &out);
      break;
  }
  return out;
}

// Whether the response of a call in `v` has ended, as its protocol marks the
// end, before curl may have finished (the request side may still be open).
bool ResponseEnded(const Variant& v, const ClientCall& call) {
  if (call.finished()) return true;
  if (call.status() == 0) return false;
  if (call.status() != 200) return false;  // ends with the body
  std::vector<Envelope> envelopes;
  SplitEnvelopes(call.body(), &envelopes);
  switch (v.proto) {
    case Proto::kGrpc:
      return Find(call.trailers(), "grpc-status").has_value() ||
             Find(call.headers(), "grpc-status").has_value();
    case Proto::kGrpcWeb:
      for (const Envelope& e : envelopes) {
        if (e.flags == 0x80) return true;
      }
      return Find(call.headers(), "grpc-status").has_value();
    case Proto::kConnect:
      for (const Envelope& e : envelopes) {
        if (e.flags == 2) return true;
      }
      return false;
  }
  return false;
}

size_t MessagesSoFar(const ClientCall& call) {
  std::vector<Envelope> envelopes;
  SplitEnvelopes(call.body(), &envelopes);
  size_t n = 0;
  for (const Envelope& e : envelopes) n += e.flags == 0 ? 1 : 0;
  return n;
}

// A StreamSync call in one variant.
class StreamClient {
 public:
  StreamClient(int port, const Variant& v, Headers extra = {}) : v_(v) {
    ClientRequest request;
    request.http = v.http;
    request.target = absl::StrCat(kService, "StreamSync");
    request.headers = ProtocolHeaders(v, true);
    for (auto& h : extra) request.headers.push_back(std::move(h));
    request.open_body = true;
    call_ = StartCall(port, std::move(request));
  }

  void Send(const v1::StreamSyncRequest& request) {
    call_->Send(WireMessage(v_, true, request));
  }
  void SendRaw(absl::string_view bytes) { call_->Send(bytes); }
  void CloseSend() { call_->CloseSend(); }

  // Runs until `n` response messages arrived; false when the response ended
  // or the wait timed out first.
  bool AwaitMessages(size_t n) {
    return call_->RunUntil([&] { return MessagesSoFar(*call_) >= n; });
  }
  // Runs until the request reached the server as far as `condition` tells.
  bool RunUntil(const std::function<bool()>& condition) {
    return call_->RunUntil(condition);
  }

  // Runs until the response ended (half-closing the request then, as a
  // client does once it has the status), and reads it.
  Outcome Finish() {
    EXPECT_TRUE(call_->RunUntil([&] { return ResponseEnded(v_, *call_); }))
        << "the response did not end";
    if (!call_->send_closed()) call_->CloseSend();
    call_->Finish(absl::Seconds(2));
    return Read(v_, true, *call_);
  }

  const ClientCall& call() const { return *call_; }

 private:
  const Variant v_;
  std::unique_ptr<ClientCall> call_;
};

v1::StreamSyncRequest Batch(int64_t sequence) {
  v1::StreamSyncRequest request;
  request.mutable_metadata()->set_sequence_number(sequence);
  v1::Metric* metric = request.mutable_metrics()->add_metrics();
  metric->set_name("cpu");
  metric->set_value(0.5);
  return request;
}

v1::StreamSyncRequest Heartbeat() {
  v1::StreamSyncRequest request;
  request.mutable_heartbeat()->set_unsynced_metrics(3);
  return request;
}

// The acks among a stream's response messages, by sequence number.
std::vector<int64_t> Acks(const Variant& v, const Outcome& outcome) {
  std::vector<int64_t> acks;
  for (const std::string& payload : outcome.messages) {
    v1::StreamSyncResponse response;
    EXPECT_TRUE(Decode(payload, v.codec, &response)) << payload;
    if (response.has_ack()) acks.push_back(response.ack().sequence_number());
  }
  return acks;
}

v1::SyncMetricsRequest MetricsRequest(int64_t sequence) {
  v1::SyncMetricsRequest request;
  request.mutable_metadata()->set_device_id("device-1");
  request.mutable_metadata()->set_sequence_number(sequence);
  v1::Metric* metric = request.mutable_batch()->add_metrics();
  metric->set_name("cpu");
  metric->set_value(0.25);
  return request;
}

// Fills metadata.device_id of `message` (whose metadata is field
// `metadata`) so that it serializes to exactly `size` bytes.
template <typename M>
M Sized(M message, size_t size) {
  std::string* id = message.mutable_metadata()->mutable_device_id();
  for (int i = 0; i < 8 && message.ByteSizeLong() != size; ++i) {
    const int64_t delta = static_cast<int64_t>(size) -
                          static_cast<int64_t>(message.ByteSizeLong());
    id->resize(static_cast<size_t>(static_cast<int64_t>(id->size()) + delta),
               'd');
  }
  EXPECT_EQ(message.ByteSizeLong(), size);
  return message;
}

// ---------------------------------------------------------------------------
// The server under test.

// FakeSyncHandler whose SyncLogs waits until released: the timeout cases
// hold the door's only worker with it.
class ConformanceHandler final : public testing::FakeSyncHandler {
 public:
  absl::StatusOr<v1::SyncLogsResponse> SyncLogs(
      const CallContext& context, const v1::SyncLogsRequest& request) override {
    logs_entered_.Notify();
    logs_release_.WaitForNotificationWithTimeout(kWait);
    return FakeSyncHandler::SyncLogs(context, request);
  }
  bool LogsEntered() const { return logs_entered_.HasBeenNotified(); }
  void ReleaseLogs() {
    if (!logs_release_.HasBeenNotified()) logs_release_.Notify();
  }

 private:
  absl::Notification logs_entered_;
  absl::Notification logs_release_;
};

class DoorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WorkerPool::Options pool;
    pool.name = "conformance";
    pool.threads = 1;  // the timeout cases hold it to queue a call
    pool.max_queued = 16;
    absl::StatusOr<std::unique_ptr<WorkerPool>> workers =
        WorkerPool::Start(pool);
    ASSERT_THAT(workers, IsOk());
    workers_ = *std::move(workers);
    DoorOptions door;
    door.max_message_bytes = kMaxMessage;
    door.workers = workers_.get();
    door.clock = &clock_;
    door.timers = &timers_;
    http::ServerOptions options;
    options.io_threads = 1;
    options.handler = NewSyncServiceHandler(&handler_, door);
    absl::StatusOr<std::unique_ptr<http::HttpServer>> server =
        http::HttpServer::Start(std::move(options));
    ASSERT_THAT(server, IsOk());
    server_ = *std::move(server);
  }

  void TearDown() override {
    handler_.ReleaseLogs();
    if (server_ != nullptr) server_->Shutdown(absl::ZeroDuration());
    if (workers_ != nullptr) {
      workers_->Shutdown(WorkerPool::ShutdownMode::kRejectQueued);
    }
  }

  int port() const { return server_->port(); }

  std::unique_ptr<ClientCall> StartUnary(
      const Variant& v, absl::string_view method,
      const google::protobuf::Message& request, Headers extra = {}) {
    ClientRequest r;
    r.http = v.http;
    r.target = absl::StrCat(kService, method);
    r.headers = ProtocolHeaders(v, false);
    for (auto& h : extra) r.headers.push_back(std::move(h));
    r.body = WireMessage(v, false, request);
    return StartCall(port(), std::move(r));
  }

  Outcome Unary(const Variant& v, absl::string_view method,
                const google::protobuf::Message& request, Headers extra = {}) {
    std::unique_ptr<ClientCall> call =
        StartUnary(v, method, request, std::move(extra));
    EXPECT_TRUE(call->Finish()) << "no response in time";
    return Read(v, false, *call);
  }

  // A SyncMetrics call in `v` whose handler fails with `status`.
  Outcome FailedUnary(const Variant& v, absl::Status status) {
    handler_.SetStatus("SyncMetrics", std::move(status));
    return Unary(v, "SyncMetrics", MetricsRequest(1));
  }

  // A half-duplex StreamSync call: every message, the half-close, then the
  // whole response.
  Outcome HalfDuplex(const Variant& v,
                     const std::vector<v1::StreamSyncRequest>& messages,
                     Headers extra = {}) {
    StreamClient stream(port(), v, std::move(extra));
    for (const v1::StreamSyncRequest& message : messages) stream.Send(message);
    stream.CloseSend();
    return stream.Finish();
  }

  // A request as the suite's raw requests give it: exact headers and body.
  Outcome Raw(const Variant& reader, bool stream, ClientRequest request) {
    request.headers.emplace_back("x-api-key", kApiKey);
    std::unique_ptr<ClientCall> call = StartCall(port(), std::move(request));
    EXPECT_TRUE(call->Finish()) << "no response in time";
    return Read(reader, stream, *call);
  }

  // The last call the handler saw.
  testing::RecordedCall LastCall() const {
    std::vector<testing::RecordedCall> calls = handler_.calls();
    EXPECT_THAT(calls, Not(IsEmpty()));
    return calls.empty() ? testing::RecordedCall() : calls.back();
  }

  SimulatedClock clock_;
  // Ends streams at their deadline; outlives the server's calls.
  TimerQueue timers_{&clock_};
  ConformanceHandler handler_;
  std::unique_ptr<WorkerPool> workers_;
  std::unique_ptr<http::HttpServer> server_;
};

template <typename P>
class DoorTestWithParam : public DoorTest,
                          public ::testing::WithParamInterface<P> {};

std::string VariantParamName(const ::testing::TestParamInfo<Variant>& info) {
  return VariantName(info.param);
}

using CodeParam = std::tuple<CodeCase, Variant>;
std::string CodeParamName(const ::testing::TestParamInfo<CodeParam>& info) {
  return absl::StrCat(std::get<0>(info.param).name, "_",
                      VariantName(std::get<1>(info.param)));
}

std::string HttpParamName(const ::testing::TestParamInfo<Http>& info) {
  return HttpName(info.param);
}

// The response content-type a client of `v` accepts for a unary success.
void ExpectResponseType(const Variant& v, const Outcome& o) {
  auto type = o.metadata.find("content-type");
  ASSERT_NE(type, o.metadata.end());
  const bool proto = v.codec == Codec::kProto;
  switch (v.proto) {
    case Proto::kConnect:
      EXPECT_EQ(type->second, proto ? "application/proto" : "application/json");
      break;
    case Proto::kGrpc:
      EXPECT_THAT(type->second,
                  AnyOf(Eq("application/grpc"), Eq("application/grpc+proto")));
      break;
    case Proto::kGrpcWeb:
      if (proto) {
        EXPECT_THAT(type->second, AnyOf(Eq("application/grpc-web"),
                                        Eq("application/grpc-web+proto")));
      } else {
        EXPECT_EQ(type->second, "application/grpc-web+json");
      }
      break;
  }
}

// The one SyncMetricsResponse of a successful call.
v1::SyncMetricsResponse MetricsResponse(const Variant& v, const Outcome& o) {
  v1::SyncMetricsResponse response;
  EXPECT_THAT(o.messages, SizeIs(1)) << o;
  if (!o.messages.empty()) {
    EXPECT_TRUE(Decode(o.messages[0], v.codec, &response)) << o.messages[0];
  }
  return response;
}

// ===========================================================================
// basic.yaml

class BasicUnary : public DoorTestWithParam<Variant> {};

// unary/success. The suite's handler echoes the request headers and sends
// scripted headers and trailers; ours reads one request header (x-api-key)
// and answers from the request: the key must reach the handler, and the
// suite's multi-valued request header must not disturb the call. Also with a
// gzip and a zstd request (the runner's compression dimension).
TEST_P(BasicUnary, Success) {
  const Variant& v = GetParam();
  Outcome o = Unary(
      v, "SyncMetrics", MetricsRequest(42),
      {{"x-conformance-test", "Value1"}, {"x-conformance-test", "Value2"}});
  ASSERT_EQ(o.code, absl::StatusCode::kOk) << o;
  EXPECT_THAT(o.problem, IsEmpty());
  ExpectResponseType(v, o);
  v1::SyncMetricsResponse response = MetricsResponse(v, o);
  EXPECT_TRUE(response.success());
  EXPECT_EQ(response.last_sequence_ack(), 42);
  testing::RecordedCall call = LastCall();
  EXPECT_EQ(call.method, "SyncMetrics");
  EXPECT_EQ(call.context.api_key, kApiKey);
}

// unimplemented: a method the service does not have.
TEST_P(BasicUnary, Unimplemented) {
  const Variant& v = GetParam();
  Outcome o = Unary(v, "Unimplemented", MetricsRequest(1));
  EXPECT_EQ(o.code, absl::StatusCode::kUnimplemented) << o;
  EXPECT_THAT(o.problem, IsEmpty());
  EXPECT_EQ(handler_.call_count(), 0);
}

INSTANTIATE_TEST_SUITE_P(Conformance, BasicUnary,
                         ::testing::ValuesIn(WithCompressions(UnaryVariants())),
                         VariantParamName);

class BasicStream : public DoorTestWithParam<Variant> {};

// bidi-stream/full-duplex/success: the first response arrives before the
// client sends its second message or half-closes.
TEST_P(BasicStream, FullDuplexSuccess) {
  const Variant& v = GetParam();
  StreamClient stream(port(), v);
  stream.Send(Batch(1));
  ASSERT_TRUE(stream.AwaitMessages(1)) << "no ack before the half-close";
  stream.Send(Batch(2));
  ASSERT_TRUE(stream.AwaitMessages(2));
  stream.CloseSend();
  Outcome o = stream.Finish();
  EXPECT_EQ(o.code, absl::StatusCode::kOk) << o;
  EXPECT_THAT(o.problem, IsEmpty());
  EXPECT_THAT(Acks(v, o), ::testing::ElementsAre(1, 2));
  EXPECT_EQ(LastCall().context.api_key, kApiKey);
  EXPECT_EQ(handler_.stream_finishes(), 1);
}

// bidi-stream/half-duplex/success: every message, then the half-close, then
// the responses are read.
TEST_P(BasicStream, HalfDuplexSuccess) {
  const Variant& v = GetParam();
  Outcome o = HalfDuplex(v, {Batch(1), Batch(2)});
  EXPECT_EQ(o.code, absl::StatusCode::kOk) << o;
  EXPECT_THAT(o.problem, IsEmpty());
  EXPECT_THAT(Acks(v, o), ::testing::ElementsAre(1, 2));
}

// bidi-stream/half-duplex/no-responses: messages that get no answer (a
// heartbeat) still end in OK.
TEST_P(BasicStream, HalfDuplexNoResponses) {
  Outcome o = HalfDuplex(GetParam(), {Heartbeat()});
  EXPECT_EQ(o.code, absl::StatusCode::kOk) << o;
  EXPECT_THAT(o.problem, IsEmpty());
  EXPECT_THAT(o.messages, IsEmpty());
  EXPECT_THAT(handler_.stream_messages(), SizeIs(1));
}

INSTANTIATE_TEST_SUITE_P(Conformance, BasicStream,
                         ::testing::ValuesIn(StreamVariants()),
                         VariantParamName);

// ===========================================================================
// connect_with_get.yaml

class ConnectWithGet : public DoorTestWithParam<Variant> {};

// success: the side-effect-free method (ours: GetSyncConfig) called with GET,
// the message in the query.
TEST_P(ConnectWithGet, Success) {
  const Variant& v = GetParam();
  v1::GetSyncConfigRequest request;
  request.set_device_id("device-7");
  request.mutable_capability()->set_tier(2);
  std::string query = "connect=v1&";
  if (v.codec == Codec::kProto) {
    absl::StrAppend(&query, "encoding=proto&base64=1&message=",
                    absl::WebSafeBase64Escape(request.SerializeAsString()));
  } else {
    absl::StrAppend(&query, "encoding=json&message=",
                    QueryEscape(Encode(request, Codec::kJson)));
  }
  ClientRequest r;
  r.http = v.http;
  r.method = "GET";
  r.target = absl::StrCat(kService, "GetSyncConfig?", query);
  r.headers = {{"x-conformance-test", "Value1"},
               {"x-conformance-test", "Value2"}};
  Outcome o = Raw(v, false, std::move(r));
  ASSERT_EQ(o.code, absl::StatusCode::kOk) << o;
  ExpectResponseType(v, o);
  ASSERT_THAT(o.messages, SizeIs(1));
  v1::GetSyncConfigResponse response;
  ASSERT_TRUE(Decode(o.messages[0], v.codec, &response)) << o.messages[0];
  EXPECT_EQ(response.config().batch_size(), 102);
  EXPECT_EQ(response.metrics_endpoint(), "metrics/device-7");
  testing::RecordedCall call = LastCall();
  EXPECT_EQ(call.method, "GetSyncConfig");
  EXPECT_EQ(call.context.api_key, kApiKey);
}

INSTANTIATE_TEST_SUITE_P(Conformance, ConnectWithGet,
                         ::testing::ValuesIn(ConnectUnaryVariants()),
                         VariantParamName);

// ===========================================================================
// connect_client_code_to_http_code.yaml

class ConnectCodeToHttpCode : public DoorTestWithParam<CodeParam> {};

// unary/<code>: each code as the HTTP status the Connect spec maps it to,
// with the code in the JSON error body. (The suite's error details echo the
// request; our errors carry none.)
TEST_P(ConnectCodeToHttpCode, Unary) {
  const auto& [c, v] = GetParam();
  Outcome o = FailedUnary(v, absl::Status(c.code, CodeMessage(c)));
  EXPECT_EQ(o.http_status, c.http_status) << o;
  EXPECT_EQ(o.code, c.code) << o;
  EXPECT_THAT(o.problem, IsEmpty());
}

INSTANTIATE_TEST_SUITE_P(
    Conformance, ConnectCodeToHttpCode,
    ::testing::Combine(::testing::ValuesIn(kCodeCases),
                       ::testing::ValuesIn(ConnectUnaryVariants())),
    CodeParamName);

class ConnectCodeToHttpCodeStream : public DoorTestWithParam<Variant> {};

// bidi-stream/full-duplex/stream-error-returns-success-http-code: a stream's
// error is in its end-of-stream message, under HTTP 200.
TEST_P(ConnectCodeToHttpCodeStream,
       FullDuplexStreamErrorReturnsSuccessHttpCode) {
  const Variant& v = GetParam();
  handler_.SetStatus("StreamSync",
                     absl::FailedPreconditionError("failed precondition"));
  StreamClient stream(port(), v);
  stream.Send(Batch(1));
  Outcome o = stream.Finish();
  EXPECT_EQ(o.http_status, 200);
  EXPECT_EQ(o.code, absl::StatusCode::kFailedPrecondition) << o;
  EXPECT_THAT(o.problem, IsEmpty());
}

// bidi-stream/half-duplex/stream-error-returns-success-http-code.
TEST_P(ConnectCodeToHttpCodeStream,
       HalfDuplexStreamErrorReturnsSuccessHttpCode) {
  const Variant& v = GetParam();
  handler_.FailStreamAtMessage(1, absl::AbortedError("aborted"));
  Outcome o = HalfDuplex(v, {Batch(1)});
  EXPECT_EQ(o.http_status, 200);
  EXPECT_EQ(o.code, absl::StatusCode::kAborted) << o;
  EXPECT_THAT(o.problem, IsEmpty());
}

INSTANTIATE_TEST_SUITE_P(
    Conformance, ConnectCodeToHttpCodeStream,
    ::testing::Values(Variant{Proto::kConnect, Codec::kProto, Http::k2},
                      Variant{Proto::kConnect, Codec::kJson, Http::k2}),
    VariantParamName);

// ===========================================================================
// connect_server_unexpected.yaml (Connect, proto, identity)

class ConnectUnexpectedRequests : public DoorTestWithParam<Http> {
 protected:
  ClientRequest Request(std::string method, std::string path,
                        std::string content_type) {
    ClientRequest r;
    r.http = GetParam();
    r.method = std::move(method);
    r.target = std::move(path);
    r.headers = {{"content-type", std::move(content_type)},
                 {"connect-protocol-version", "1"}};
    r.body = MetricsRequest(1).SerializeAsString();
    return r;
  }
  Variant reader() const {
    return {Proto::kConnect, Codec::kProto, GetParam()};
  }
};

// unexpected-verb: DELETE is 405, which a client reads as unknown.
TEST_P(ConnectUnexpectedRequests, UnexpectedVerb) {
  Outcome o = Raw(reader(), false,
                  Request("DELETE", absl::StrCat(kService, "SyncMetrics"),
                          "application/proto"));
  EXPECT_EQ(o.http_status, 405) << o;
  EXPECT_EQ(o.code, absl::StatusCode::kUnknown) << o;
  EXPECT_EQ(handler_.call_count(), 0);
}

// unexpected-uri: 404, read as unimplemented.
TEST_P(ConnectUnexpectedRequests, UnexpectedUri) {
  Outcome o =
      Raw(reader(), false, Request("POST", kUnknownPath, "application/proto"));
  EXPECT_EQ(o.http_status, 404) << o;
  EXPECT_EQ(o.code, absl::StatusCode::kUnimplemented) << o;
}

// unexpected-codec: a content-type of no codec is 415, read as unknown.
TEST_P(ConnectUnexpectedRequests, UnexpectedCodec) {
  Outcome o = Raw(reader(), false,
                  Request("POST", absl::StrCat(kService, "SyncMetrics"),
                          "application/foo"));
  EXPECT_EQ(o.http_status, 415) << o;
  EXPECT_EQ(o.code, absl::StatusCode::kUnknown) << o;
  EXPECT_EQ(handler_.call_count(), 0);
}

// unexpected-compression: a Content-Encoding the server does not support is
// unimplemented.
TEST_P(ConnectUnexpectedRequests, UnexpectedCompression) {
  ClientRequest r = Request("POST", absl::StrCat(kService, "SyncMetrics"),
                            "application/proto");
  r.headers.emplace_back("content-encoding", "foo");
  r.body = Compressed(Compression::kZstd, r.body);
  Outcome o = Raw(reader(), false, std::move(r));
  EXPECT_EQ(o.code, absl::StatusCode::kUnimplemented) << o;
  EXPECT_THAT(o.problem, IsEmpty());
  EXPECT_EQ(handler_.call_count(), 0);
}

INSTANTIATE_TEST_SUITE_P(Conformance, ConnectUnexpectedRequests,
                         ::testing::Values(Http::k11, Http::k2), HttpParamName);

class ConnectUnexpectedStream : public DoorTest {};

// unexpected-compressed-message (the suite's on a server stream; ours on
// StreamSync): a message flagged compressed on a call whose
// connect-content-encoding is identity ends the call with internal.
TEST_F(ConnectUnexpectedStream, UnexpectedCompressedMessage) {
  const Variant v{Proto::kConnect, Codec::kProto, Http::k2};
  StreamClient stream(port(), v, {{"connect-content-encoding", "identity"}});
  stream.SendRaw(Frame(1, Batch(1).SerializeAsString()));
  stream.CloseSend();
  Outcome o = stream.Finish();
  EXPECT_EQ(o.code, absl::StatusCode::kInternal) << o;
  EXPECT_THAT(o.problem, IsEmpty());
  EXPECT_THAT(handler_.stream_messages(), IsEmpty());
}

// ===========================================================================
// grpc_server_unexpected.yaml and grpc_web_server_unexpected.yaml (proto,
// identity). One fixture for both: the cases are the same.

class GrpcUnexpectedRequests : public DoorTestWithParam<Variant> {
 protected:
  ClientRequest Request(std::string method, std::string path,
                        std::string content_type, std::string body) {
    const Variant& v = GetParam();
    ClientRequest r;
    r.http = v.http;
    r.method = std::move(method);
    r.target = std::move(path);
    r.headers = {{"content-type", std::move(content_type)}};
    if (v.proto == Proto::kGrpc) r.headers.emplace_back("te", "trailers");
    r.body = std::move(body);
    return r;
  }
  std::string Type(absl::string_view suffix = "") const {
    return absl::StrCat(GetParam().proto == Proto::kGrpc
                            ? "application/grpc"
                            : "application/grpc-web",
                        suffix);
  }
  std::string OneMessage() const {
    return Frame(0, MetricsRequest(1).SerializeAsString());
  }
  std::string Path() const { return absl::StrCat(kService, "SyncMetrics"); }
};

// unary/no-request: a unary call with no message is a cardinality violation,
// unimplemented.
TEST_P(GrpcUnexpectedRequests, UnaryNoRequest) {
  Outcome o =
      Raw(GetParam(), false, Request("POST", Path(), Type("+proto"), ""));
  EXPECT_EQ(o.code, absl::StatusCode::kUnimplemented) << o;
  EXPECT_THAT(o.problem, IsEmpty());
  EXPECT_EQ(handler_.call_count(), 0);
}

// unary/multiple-requests: two messages on a unary call, unimplemented.
TEST_P(GrpcUnexpectedRequests, UnaryMultipleRequests) {
  std::string body = Frame(0, "") + Frame(0, "");
  Outcome o = Raw(GetParam(), false,
                  Request("POST", Path(), Type("+proto"), std::move(body)));
  EXPECT_EQ(o.code, absl::StatusCode::kUnimplemented) << o;
  EXPECT_THAT(o.problem, IsEmpty());
  EXPECT_EQ(handler_.call_count(), 0);
}

// unexpected-verb: unknown, internal or unimplemented (the suite allows all
// three; the gRPC spec names none).
TEST_P(GrpcUnexpectedRequests, UnexpectedVerb) {
  Outcome o =
      Raw(GetParam(), false, Request("DELETE", Path(), Type(), OneMessage()));
  EXPECT_THAT(o.code, AnyOf(Eq(absl::StatusCode::kUnknown),
                            Eq(absl::StatusCode::kInternal),
                            Eq(absl::StatusCode::kUnimplemented)))
      << o;
  EXPECT_EQ(handler_.call_count(), 0);
}

// unexpected-uri: unimplemented.
TEST_P(GrpcUnexpectedRequests, UnexpectedUri) {
  Outcome o = Raw(GetParam(), false,
                  Request("POST", kUnknownPath, Type(), OneMessage()));
  EXPECT_EQ(o.code, absl::StatusCode::kUnimplemented) << o;
}

// unexpected-codec: a sub-format the server does not speak; unknown,
// internal or unimplemented.
TEST_P(GrpcUnexpectedRequests, UnexpectedCodec) {
  Outcome o = Raw(GetParam(), false,
                  Request("POST", Path(), Type("+foo"), OneMessage()));
  EXPECT_THAT(o.code, AnyOf(Eq(absl::StatusCode::kUnknown),
                            Eq(absl::StatusCode::kInternal),
                            Eq(absl::StatusCode::kUnimplemented)))
      << o;
  EXPECT_EQ(handler_.call_count(), 0);
}

// unexpected-compression: a grpc-encoding the server does not support is
// unimplemented (and, per gRPC's compression doc, says what it accepts).
TEST_P(GrpcUnexpectedRequests, UnexpectedCompression) {
  ClientRequest r =
      Request("POST", Path(), Type(),
              Frame(1, Compressed(Compression::kZstd,
                                  MetricsRequest(1).SerializeAsString())));
  r.headers.emplace_back("grpc-encoding", "foo");
  Outcome o = Raw(GetParam(), false, std::move(r));
  EXPECT_EQ(o.code, absl::StatusCode::kUnimplemented) << o;
  EXPECT_THAT(o.problem, IsEmpty());
  EXPECT_TRUE(o.metadata.count("grpc-accept-encoding"));
  EXPECT_EQ(handler_.call_count(), 0);
}

// unexpected-compressed-message: the compressed flag with grpc-encoding
// identity is internal.
TEST_P(GrpcUnexpectedRequests, UnexpectedCompressedMessage) {
  ClientRequest r = Request("POST", Path(), Type("+proto"),
                            Frame(1, MetricsRequest(1).SerializeAsString()));
  r.headers.emplace_back("grpc-encoding", "identity");
  Outcome o = Raw(GetParam(), false, std::move(r));
  EXPECT_EQ(o.code, absl::StatusCode::kInternal) << o;
  EXPECT_THAT(o.problem, IsEmpty());
  EXPECT_EQ(handler_.call_count(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Conformance, GrpcUnexpectedRequests,
    ::testing::Values(Variant{Proto::kGrpc, Codec::kProto, Http::k2},
                      Variant{Proto::kGrpcWeb, Codec::kProto, Http::k11},
                      Variant{Proto::kGrpcWeb, Codec::kProto, Http::k2}),
    VariantParamName);

// ===========================================================================
// grpc_server_proto_subformat.yaml and grpc_web_server_proto_subformat.yaml

class ProtoSubFormat : public DoorTestWithParam<Variant> {
 protected:
  void ExpectSuccess(absl::string_view content_type) {
    const Variant& v = GetParam();
    ClientRequest r;
    r.http = v.http;
    r.target = absl::StrCat(kService, "SyncMetrics");
    r.headers = {{"content-type", std::string(content_type)}};
    if (v.proto == Proto::kGrpc) r.headers.emplace_back("te", "trailers");
    r.body = Frame(0, MetricsRequest(9).SerializeAsString());
    Outcome o = Raw(v, false, std::move(r));
    ASSERT_EQ(o.code, absl::StatusCode::kOk) << o;
    EXPECT_THAT(o.problem, IsEmpty());
    ExpectResponseType(v, o);
    EXPECT_EQ(MetricsResponse(v, o).last_sequence_ack(), 9);
  }
  std::string Type() const {
    return GetParam().proto == Proto::kGrpc ? "application/grpc"
                                            : "application/grpc-web";
  }
};

// with-proto-sub-format: application/grpc+proto, application/grpc-web+proto.
TEST_P(ProtoSubFormat, WithProtoSubFormat) { ExpectSuccess(Type() + "+proto"); }

// without-proto-sub-format: application/grpc, application/grpc-web.
TEST_P(ProtoSubFormat, WithoutProtoSubFormat) { ExpectSuccess(Type()); }

INSTANTIATE_TEST_SUITE_P(
    Conformance, ProtoSubFormat,
    ::testing::Values(Variant{Proto::kGrpc, Codec::kProto, Http::k2},
                      Variant{Proto::kGrpcWeb, Codec::kProto, Http::k11},
                      Variant{Proto::kGrpcWeb, Codec::kProto, Http::k2}),
    VariantParamName);

// ===========================================================================
// server_unexpected.yaml

class UnexpectedRequests : public DoorTestWithParam<Http> {};

// unexpected-content-type: a content-type of no protocol is 415, which a
// client reads as unknown.
TEST_P(UnexpectedRequests, UnexpectedContentType) {
  ClientRequest r;
  r.http = GetParam();
  r.target = absl::StrCat(kService, "SyncMetrics");
  r.headers = {{"content-type", "image/jpeg"}};
  r.body = "\x12\x34\x56\x78";
  Outcome o =
      Raw({Proto::kConnect, Codec::kProto, GetParam()}, false, std::move(r));
  EXPECT_EQ(o.http_status, 415) << o;
  EXPECT_EQ(o.code, absl::StatusCode::kUnknown) << o;
  EXPECT_EQ(handler_.call_count(), 0);
}

INSTANTIATE_TEST_SUITE_P(Conformance, UnexpectedRequests,
                         ::testing::Values(Http::k11, Http::k2), HttpParamName);

// ===========================================================================
// server_empty.yaml (proto, identity)

class ServerEmptyUnary : public DoorTestWithParam<Variant> {};

// unary/empty-request: a zero-byte message is an empty request, not a
// missing one.
TEST_P(ServerEmptyUnary, EmptyRequest) {
  const Variant& v = GetParam();
  Outcome o = Unary(v, "SyncMetrics", v1::SyncMetricsRequest());
  ASSERT_EQ(o.code, absl::StatusCode::kOk) << o;
  EXPECT_TRUE(MetricsResponse(v, o).success());
  testing::RecordedCall call = LastCall();
  ASSERT_NE(call.request, nullptr);
  EXPECT_EQ(call.request->ByteSizeLong(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Conformance, ServerEmptyUnary,
                         ::testing::ValuesIn(UnaryVariants(false)),
                         VariantParamName);

class ServerEmptyStream : public DoorTestWithParam<Variant> {};

// bidi-stream/half-duplex/empty-request: one zero-byte message reaches the
// session as an empty request.
TEST_P(ServerEmptyStream, HalfDuplexEmptyRequest) {
  const Variant& v = GetParam();
  StreamClient stream(port(), v);
  stream.SendRaw(Frame(0, ""));
  stream.CloseSend();
  Outcome o = stream.Finish();
  EXPECT_EQ(o.code, absl::StatusCode::kOk) << o;
  EXPECT_THAT(o.problem, IsEmpty());
  std::vector<v1::StreamSyncRequest> received = handler_.stream_messages();
  ASSERT_THAT(received, SizeIs(1));
  EXPECT_EQ(received[0].ByteSizeLong(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Conformance, ServerEmptyStream,
                         ::testing::ValuesIn(StreamVariants(false)),
                         VariantParamName);

// ===========================================================================
// server_message_size.yaml (proto; the limit is the door's
// max_message_bytes)

class ServerMessageSizeUnary : public DoorTestWithParam<Variant> {};

// unary/request-equal-to-server-limit.
TEST_P(ServerMessageSizeUnary, RequestEqualToServerLimit) {
  const Variant& v = GetParam();
  Outcome o = Unary(v, "SyncMetrics", Sized(MetricsRequest(5), kMaxMessage));
  ASSERT_EQ(o.code, absl::StatusCode::kOk) << o;
  EXPECT_EQ(MetricsResponse(v, o).last_sequence_ack(), 5);
}

// unary/request-exceeds-server-limit: resource_exhausted.
TEST_P(ServerMessageSizeUnary, RequestExceedsServerLimit) {
  const Variant& v = GetParam();
  Outcome o =
      Unary(v, "SyncMetrics", Sized(MetricsRequest(5), kMaxMessage + 10));
  EXPECT_EQ(o.code, absl::StatusCode::kResourceExhausted) << o;
  EXPECT_THAT(o.problem, IsEmpty());
  EXPECT_EQ(handler_.call_count(), 0);
}

INSTANTIATE_TEST_SUITE_P(Conformance, ServerMessageSizeUnary,
                         ::testing::ValuesIn(UnaryVariants(false)),
                         VariantParamName);

class ServerMessageSizeStream : public DoorTestWithParam<Variant> {};

// bidi-stream/half-duplex/all-requests-equal-to-server-limit.
TEST_P(ServerMessageSizeStream, HalfDuplexAllRequestsEqualToServerLimit) {
  const Variant& v = GetParam();
  Outcome o = HalfDuplex(
      v, {Sized(Batch(1), kMaxMessage), Sized(Batch(2), kMaxMessage)});
  EXPECT_EQ(o.code, absl::StatusCode::kOk) << o;
  EXPECT_THAT(Acks(v, o), ::testing::ElementsAre(1, 2));
}

// bidi-stream/half-duplex/first-request-exceeds-server-limit.
TEST_P(ServerMessageSizeStream, HalfDuplexFirstRequestExceedsServerLimit) {
  const Variant& v = GetParam();
  Outcome o = HalfDuplex(
      v, {Sized(Batch(1), kMaxMessage + 10), Sized(Batch(2), kMaxMessage)});
  EXPECT_EQ(o.code, absl::StatusCode::kResourceExhausted) << o;
  EXPECT_THAT(o.messages, IsEmpty());
  EXPECT_THAT(handler_.stream_messages(), IsEmpty());
}

// bidi-stream/half-duplex/subsequent-request-exceeds-server-limit: the call
// ends resource_exhausted (our session acks each message as it is handled,
// so the first one's ack may come before).
TEST_P(ServerMessageSizeStream, HalfDuplexSubsequentRequestExceedsServerLimit) {
  const Variant& v = GetParam();
  Outcome o = HalfDuplex(
      v, {Sized(Batch(1), kMaxMessage), Sized(Batch(2), kMaxMessage + 10)});
  EXPECT_EQ(o.code, absl::StatusCode::kResourceExhausted) << o;
  EXPECT_THAT(Acks(v, o), SizeIs(Le(1u)));
  EXPECT_THAT(handler_.stream_messages(), SizeIs(Le(1u)));
}

// bidi-stream/full-duplex/all-requests-equal-to-server-limit.
TEST_P(ServerMessageSizeStream, FullDuplexAllRequestsEqualToServerLimit) {
  const Variant& v = GetParam();
  StreamClient stream(port(), v);
  stream.Send(Sized(Batch(1), kMaxMessage));
  ASSERT_TRUE(stream.AwaitMessages(1));
  stream.Send(Sized(Batch(2), kMaxMessage));
  ASSERT_TRUE(stream.AwaitMessages(2));
  stream.CloseSend();
  Outcome o = stream.Finish();
  EXPECT_EQ(o.code, absl::StatusCode::kOk) << o;
  EXPECT_THAT(Acks(v, o), ::testing::ElementsAre(1, 2));
}

// bidi-stream/full-duplex/first-request-exceeds-server-limit: the call ends
// at once, before the client half-closes.
TEST_P(ServerMessageSizeStream, FullDuplexFirstRequestExceedsServerLimit) {
  const Variant& v = GetParam();
  StreamClient stream(port(), v);
  stream.Send(Sized(Batch(1), kMaxMessage + 10));
  Outcome o = stream.Finish();
  EXPECT_EQ(o.code, absl::StatusCode::kResourceExhausted) << o;
  EXPECT_THAT(o.messages, IsEmpty());
  EXPECT_THAT(handler_.stream_messages(), IsEmpty());
}

INSTANTIATE_TEST_SUITE_P(Conformance, ServerMessageSizeStream,
                         ::testing::ValuesIn(StreamVariants(false)),
                         VariantParamName);

// ===========================================================================
// deadline_propagation.yaml: the client's timeout reaches the handler as its
// deadline (exactly: the door's clock is simulated and stands still).

class DeadlinePropagationUnary : public DoorTestWithParam<Variant> {};

// unary/success.
TEST_P(DeadlinePropagationUnary, Success) {
  const Variant& v = GetParam();
  const absl::Time now = clock_.Now();
  Outcome o =
      Unary(v, "SyncMetrics", MetricsRequest(3), {TimeoutHeader(v, 2000)});
  ASSERT_EQ(o.code, absl::StatusCode::kOk) << o;
  EXPECT_EQ(LastCall().context.deadline, now + absl::Seconds(2));
}

INSTANTIATE_TEST_SUITE_P(Conformance, DeadlinePropagationUnary,
                         ::testing::ValuesIn(UnaryVariants()),
                         VariantParamName);

class DeadlinePropagationStream : public DoorTestWithParam<Variant> {};

// bidi-stream/full-duplex/success.
TEST_P(DeadlinePropagationStream, FullDuplexSuccess) {
  const Variant& v = GetParam();
  const absl::Time now = clock_.Now();
  StreamClient stream(port(), v, {TimeoutHeader(v, 2000)});
  stream.Send(Batch(1));
  ASSERT_TRUE(stream.AwaitMessages(1));
  stream.CloseSend();
  Outcome o = stream.Finish();
  EXPECT_EQ(o.code, absl::StatusCode::kOk) << o;
  testing::RecordedCall call = LastCall();
  EXPECT_EQ(call.method, "StreamSync");
  EXPECT_EQ(call.context.deadline, now + absl::Seconds(2));
}

INSTANTIATE_TEST_SUITE_P(Conformance, DeadlinePropagationStream,
                         ::testing::ValuesIn(StreamVariants()),
                         VariantParamName);

// ===========================================================================
// errors.yaml

class ErrorsUnaryCode : public DoorTestWithParam<CodeParam> {};

// unary/<code>: every code and its message reach the client.
TEST_P(ErrorsUnaryCode, Unary) {
  const auto& [c, v] = GetParam();
  Outcome o = FailedUnary(v, absl::Status(c.code, CodeMessage(c)));
  EXPECT_EQ(o.code, c.code) << o;
  EXPECT_EQ(o.message, CodeMessage(c));
  EXPECT_THAT(o.problem, IsEmpty());
  EXPECT_THAT(o.messages, IsEmpty());
}

INSTANTIATE_TEST_SUITE_P(
    Conformance, ErrorsUnaryCode,
    ::testing::Combine(::testing::ValuesIn(kCodeCases),
                       ::testing::ValuesIn(UnaryVariants())),
    CodeParamName);

class ErrorsStreamCode : public DoorTestWithParam<CodeParam> {};

// server-stream/<code>, on StreamSync: every code and its message in the
// stream's end (trailers, trailers frame, end-of-stream message).
TEST_P(ErrorsStreamCode, Stream) {
  const auto& [c, v] = GetParam();
  handler_.SetStatus("StreamSync", absl::Status(c.code, CodeMessage(c)));
  Outcome o = HalfDuplex(v, {Heartbeat()});
  EXPECT_EQ(o.code, c.code) << o;
  EXPECT_EQ(o.message, CodeMessage(c));
  EXPECT_THAT(o.problem, IsEmpty());
  EXPECT_THAT(o.messages, IsEmpty());
}

INSTANTIATE_TEST_SUITE_P(
    Conformance, ErrorsStreamCode,
    ::testing::Combine(::testing::ValuesIn(kCodeCases),
                       ::testing::ValuesIn(StreamVariants())),
    CodeParamName);

// An error message with whitespace, CR LF and characters inside and outside
// the BMP, as errors.yaml's unicode-error-message case has one.
constexpr char kUnicodeMessage[] =
    "\ntest with whitespace\r\nand Unicode BMP \u263A and non-BMP "
    "\U0001F608\n";

class ErrorsUnary : public DoorTestWithParam<Variant> {};

// unary/error-with-metadata: the suite's handler sets custom headers and
// trailers on its error; the only metadata our errors carry is the retry
// hint, which must arrive with the error in the protocol's place.
TEST_P(ErrorsUnary, ErrorWithMetadata) {
  const Variant& v = GetParam();
  Outcome o =
      FailedUnary(v, WithRetryAfter(absl::UnavailableError("unavailable"),
                                    absl::Milliseconds(1500)));
  EXPECT_EQ(o.code, absl::StatusCode::kUnavailable) << o;
  EXPECT_EQ(o.message, "unavailable");
  EXPECT_EQ(o.metadata["retry-after-ms"], "1500");
  if (v.proto == Proto::kConnect) {
    EXPECT_EQ(o.metadata["retry-after"], "2");
  }
}

// unary/unicode-error-message.
TEST_P(ErrorsUnary, UnicodeErrorMessage) {
  const Variant& v = GetParam();
  Outcome o = FailedUnary(v, absl::InternalError(kUnicodeMessage));
  EXPECT_EQ(o.code, absl::StatusCode::kInternal) << o;
  EXPECT_EQ(o.message, kUnicodeMessage);
  EXPECT_THAT(o.problem, IsEmpty());
}

INSTANTIATE_TEST_SUITE_P(Conformance, ErrorsUnary,
                         ::testing::ValuesIn(UnaryVariants()),
                         VariantParamName);

class ErrorsStream : public DoorTestWithParam<Variant> {};

// bidi-stream/error-with-metadata: as for unary, the retry hint is the
// metadata.
TEST_P(ErrorsStream, BidiErrorWithMetadata) {
  const Variant& v = GetParam();
  handler_.SetStatus("StreamSync",
                     WithRetryAfter(absl::UnavailableError("unavailable"),
                                    absl::Milliseconds(1500)));
  Outcome o = HalfDuplex(v, {Heartbeat()});
  EXPECT_EQ(o.code, absl::StatusCode::kUnavailable) << o;
  EXPECT_EQ(o.message, "unavailable");
  EXPECT_EQ(o.metadata["retry-after-ms"], "1500");
}

// bidi-stream/full-duplex/error-with-responses: a response, then the error.
TEST_P(ErrorsStream, FullDuplexErrorWithResponses) {
  const Variant& v = GetParam();
  handler_.FailStreamAtMessage(
      2, absl::InternalError("bidi full duplex stream failed"));
  StreamClient stream(port(), v);
  stream.Send(Batch(1));
  ASSERT_TRUE(stream.AwaitMessages(1));
  stream.Send(Batch(2));
  Outcome o = stream.Finish();
  EXPECT_EQ(o.code, absl::StatusCode::kInternal) << o;
  EXPECT_EQ(o.message, "bidi full duplex stream failed");
  EXPECT_THAT(Acks(v, o), ::testing::ElementsAre(1));
}

// bidi-stream/full-duplex/error-no-responses.
TEST_P(ErrorsStream, FullDuplexErrorNoResponses) {
  const Variant& v = GetParam();
  handler_.FailStreamAtMessage(
      1, absl::InternalError("bidi full duplex stream failed"));
  StreamClient stream(port(), v);
  stream.Send(Batch(1));
  Outcome o = stream.Finish();
  EXPECT_EQ(o.code, absl::StatusCode::kInternal) << o;
  EXPECT_EQ(o.message, "bidi full duplex stream failed");
  EXPECT_THAT(o.messages, IsEmpty());
}

// bidi-stream/half-duplex/error-with-responses.
TEST_P(ErrorsStream, HalfDuplexErrorWithResponses) {
  const Variant& v = GetParam();
  handler_.FailStreamAtMessage(
      2, absl::InternalError("bidi half duplex stream failed"));
  Outcome o = HalfDuplex(v, {Batch(1), Batch(2)});
  EXPECT_EQ(o.code, absl::StatusCode::kInternal) << o;
  EXPECT_EQ(o.message, "bidi half duplex stream failed");
  EXPECT_THAT(Acks(v, o), ::testing::ElementsAre(1));
}

// bidi-stream/half-duplex/error-with-no-responses.
TEST_P(ErrorsStream, HalfDuplexErrorWithNoResponses) {
  const Variant& v = GetParam();
  handler_.FailStreamAtMessage(
      1, absl::InternalError("bidi half duplex stream failed"));
  Outcome o = HalfDuplex(v, {Batch(1), Batch(2)});
  EXPECT_EQ(o.code, absl::StatusCode::kInternal) << o;
  EXPECT_EQ(o.message, "bidi half duplex stream failed");
  EXPECT_THAT(o.messages, IsEmpty());
}

INSTANTIATE_TEST_SUITE_P(Conformance, ErrorsStream,
                         ::testing::ValuesIn(StreamVariants()),
                         VariantParamName);

// ===========================================================================
// timeouts.yaml: the suite's handler answers after the client's deadline.
// Our door checks the deadline before the handler runs and before each
// stream message, and ends a stream open at its deadline on a timer, so the
// ports make the deadline pass there: the simulated clock moves past it
// while the call waits (for the door's only worker, or with the stream
// open).

class TimeoutsUnary : public DoorTestWithParam<Variant> {
 protected:
  // Starts a SyncLogs call that holds the door's only worker until
  // ReleaseLogs().
  std::unique_ptr<ClientCall> HoldWorker(const Variant& v) {
    v1::SyncLogsRequest logs;
    logs.mutable_metadata()->set_sequence_number(1);
    std::unique_ptr<ClientCall> holder = StartUnary(v, "SyncLogs", logs);
    EXPECT_TRUE(holder->RunUntil([&] { return handler_.LogsEntered(); }));
    return holder;
  }
};

// unary: the deadline passes while the call waits; deadline_exceeded, and
// the handler never sees it.
TEST_P(TimeoutsUnary, Unary) {
  const Variant& v = GetParam();
  std::unique_ptr<ClientCall> holder = HoldWorker(v);
  std::unique_ptr<ClientCall> call =
      StartUnary(v, "SyncMetrics", MetricsRequest(1), {TimeoutHeader(v, 200)});
  ASSERT_TRUE(call->RunUntil([&] { return workers_->queued() == 1; }));
  clock_.Advance(absl::Milliseconds(1500));
  handler_.ReleaseLogs();
  ASSERT_TRUE(call->Finish());
  Outcome o = Read(v, false, *call);
  EXPECT_EQ(o.code, absl::StatusCode::kDeadlineExceeded) << o;
  EXPECT_THAT(o.problem, IsEmpty());
  ASSERT_TRUE(holder->Finish());
  EXPECT_EQ(Read(v, false, *holder).code, absl::StatusCode::kOk);
  for (const testing::RecordedCall& c : handler_.calls()) {
    EXPECT_NE(c.method, "SyncMetrics");
  }
}

INSTANTIATE_TEST_SUITE_P(Conformance, TimeoutsUnary,
                         ::testing::ValuesIn(UnaryVariants()),
                         VariantParamName);

class TimeoutsStream : public TimeoutsUnary {};

// bidi-stream/full-duplex: the first message is answered; the deadline
// passes with the stream open, which ends the call deadline_exceeded
// without another message from the client.
TEST_P(TimeoutsStream, FullDuplex) {
  const Variant& v = GetParam();
  StreamClient stream(port(), v, {TimeoutHeader(v, 200)});
  stream.Send(Batch(1));
  ASSERT_TRUE(stream.AwaitMessages(1));
  clock_.Advance(absl::Milliseconds(1500));
  Outcome o = stream.Finish();
  EXPECT_EQ(o.code, absl::StatusCode::kDeadlineExceeded) << o;
  EXPECT_THAT(Acks(v, o), ::testing::ElementsAre(1));
  EXPECT_THAT(handler_.stream_messages(), SizeIs(1));
}

// bidi-stream/half-duplex: every message sent and the request closed while
// the stream waits for a worker; the deadline passes meanwhile.
TEST_P(TimeoutsStream, HalfDuplex) {
  const Variant& v = GetParam();
  std::unique_ptr<ClientCall> holder = HoldWorker(v);
  StreamClient stream(port(), v, {TimeoutHeader(v, 200)});
  stream.Send(Batch(1));
  stream.Send(Batch(2));
  stream.CloseSend();
  ASSERT_TRUE(stream.RunUntil([&] { return workers_->queued() == 1; }));
  clock_.Advance(absl::Milliseconds(1500));
  handler_.ReleaseLogs();
  Outcome o = stream.Finish();
  EXPECT_EQ(o.code, absl::StatusCode::kDeadlineExceeded) << o;
  EXPECT_THAT(o.messages, IsEmpty());
  EXPECT_THAT(handler_.stream_messages(), IsEmpty());
  ASSERT_TRUE(holder->Finish());
}

INSTANTIATE_TEST_SUITE_P(Conformance, TimeoutsStream,
                         ::testing::ValuesIn(StreamVariants()),
                         VariantParamName);

// curl's global state, once for the binary.
class CurlEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { curl_global_init(CURL_GLOBAL_DEFAULT); }
  void TearDown() override { curl_global_cleanup(); }
};

[[maybe_unused]] const ::testing::Environment* const kCurl =
    ::testing::AddGlobalTestEnvironment(new CurlEnvironment);

}  // namespace
}  // namespace fleetd::server::rpc
