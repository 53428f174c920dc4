#include "server/rpc/door/sync_service_handler.h"

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/codec/codec.h"
#include "common/status/retry_after.h"
#include "common/status/status_macros.h"
#include "glog/logging.h"
#include "google/protobuf/message.h"
#include "server/rpc/connect/connect_protocol.h"
#include "server/rpc/connect/procedures.h"
#include "server/rpc/door/stream_call.h"
#include "server/rpc/door/wire.h"

namespace fleetd::server::rpc {
namespace {

using connect::Codec;
using connect::WireProtocol;
using door::ClassifyRequest;
using door::kGrpcAcceptEncoding;
using door::Label;
using door::Protocol;
using door::SendWhole;
using door::Wire;
using door::WireBodyLimit;
using google::protobuf::Message;
using http::Exchange;
using http::FindHeader;
using http::Headers;

constexpr absl::string_view kServicePrefix = "/fleetd.v1.SyncService/";
constexpr char kFrontEnd[] = "front door";

// Decodes %XX escapes and '+' (a space) of a query component; a malformed
// escape stays as it is.
std::string QueryUnescape(absl::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '+') {
      out.push_back(' ');
    } else if (in[i] == '%' && i + 2 < in.size() &&
               absl::ascii_isxdigit(in[i + 1]) &&
               absl::ascii_isxdigit(in[i + 2])) {
      std::string byte = absl::HexStringToBytes(in.substr(i + 1, 2));
      out.append(byte);
      i += 2;
    } else {
      out.push_back(in[i]);
    }
  }
  return out;
}

// The query parameters of a request target (the first value of each name).
std::map<std::string, std::string> ParseQuery(absl::string_view query) {
  std::map<std::string, std::string> params;
  for (absl::string_view pair : absl::StrSplit(query, '&', absl::SkipEmpty())) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(pair, absl::MaxSplits('=', 1));
    params.emplace(QueryUnescape(kv.first), QueryUnescape(kv.second));
  }
  return params;
}

std::optional<std::string> Param(
    const std::map<std::string, std::string>& params, const std::string& name) {
  auto it = params.find(name);
  if (it == params.end()) return std::nullopt;
  return it->second;
}

// One call, shared by the strand (its observer) and the worker running it.
struct Call {
  std::shared_ptr<Exchange> exchange;
  const Procedure* procedure = nullptr;  // null: not a method of the service
  Protocol protocol;
  CallContext context;
  Compression request_coding = Compression::kNone;
  Compression response_coding = Compression::kNone;
  // Connect's GET form: the answer is cacheable by HTTP's rules.
  bool get = false;
  // Set on the strand by OnCancel; read by the worker before the handler.
  std::atomic<bool> cancelled{false};
};

// A gRPC-Web response: `frames` (the data envelopes), then the trailers
// envelope with `status`; all of it base64 for grpc-web-text.
void SendGrpcWeb(const Call& call, std::string frames,
                 const absl::Status& status) {
  frames += door::GrpcWebTrailersFrame(status);
  if (call.protocol.wire == Wire::kGrpcWebText) {
    frames = absl::Base64Escape(frames);
  }
  Headers headers = {{"content-type", call.protocol.response_type},
                     {"grpc-accept-encoding", kGrpcAcceptEncoding}};
  if (call.response_coding != Compression::kNone) {
    headers.push_back(
        {"grpc-encoding", std::string(CompressionName(call.response_coding))});
  }
  SendWhole(*call.exchange, 200, std::move(headers), std::move(frames));
}

// A GET answer (Connect's GET form, which HTTP caches may store) is one
// device's: it depends on the API key and on the coding the client accepts,
// and a device's config may change at any time. Shared caches (a CDN, a
// proxy) must not hand it to another device, and no cache may reuse it
// unchecked.
void AddGetCaching(const Call& call, Headers& headers) {
  if (!call.get) return;
  headers.push_back({"cache-control", "private, no-cache"});
  headers.push_back({"vary", "Accept-Encoding, X-Api-Key"});
}

// The SyncService's protocols over Exchange. Immutable once built; shared by
// the handler function and every call's task.
class Door : public std::enable_shared_from_this<Door> {
 public:
  Door(SyncHandler* handler, DoorOptions options, ProcedureTable procedures)
      : handler_(handler),
        options_(options),
        clock_(options.clock != nullptr ? options.clock : Clock::Real()),
        procedures_(std::move(procedures)),
        calls_(FrontEndRequests(options.metrics)),
        stream_options_{handler,
                        options.workers,
                        clock_,
                        options.max_message_bytes,
                        options.overload_retry_after,
                        calls_,
                        options.timers} {}

  // On the strand: routes the request and returns the observer of its body.
  std::unique_ptr<http::RequestObserver> Accept(
      std::shared_ptr<Exchange> exchange) const;

  // On the strand: the body is complete; runs the call on a worker.
  void Dispatch(std::shared_ptr<Call> call, std::string body) const;

  // Any thread: answers `call` with `status` in its protocol's form and
  // counts it (calls of a known procedure only).
  void Fail(const Call& call, const absl::Status& status) const;

  size_t body_limit(Wire wire) const {
    return WireBodyLimit(wire, options_.max_message_bytes);
  }

 private:
  void ServeGet(const std::shared_ptr<Exchange>& exchange,
                const Procedure* procedure, absl::string_view query) const;
  // Reads the protocol's request headers (timeout, coding, version) into
  // `call`.
  absl::Status ReadCallHeaders(Call& call) const;
  absl::Status ApplyTimeout(absl::StatusOr<absl::Duration> timeout,
                            CallContext& context) const {
    if (!timeout.ok()) return timeout.status();
    context.deadline = clock_->Now() + *timeout;
    return absl::OkStatus();
  }
  std::shared_ptr<Call> NewCall(std::shared_ptr<Exchange> exchange,
                                const Procedure* procedure,
                                Protocol protocol) const;
  // On a worker: decode and call the handler; the answer is sent from
  // whichever thread the handler gives it on (a batch method's from the
  // flusher that finished it: the worker does not wait for backends).
  void Run(std::shared_ptr<Call> call, std::string body) const;
  // Encodes the handler's answer and sends it (any thread).
  void Answer(const Call& call,
              absl::StatusOr<std::unique_ptr<Message>> response) const;
  absl::StatusOr<std::string> RequestMessage(const Call& call,
                                             std::string body) const;
  void Succeed(const Call& call, std::string message) const;
  void Count(const Call& call, absl::StatusCode code) const {
    if (calls_ == nullptr || call.procedure == nullptr) return;
    calls_
        ->WithLabels({Label(call.protocol.wire), call.procedure->name,
                      absl::StatusCodeToString(code)})
        .Increment();
  }

  SyncHandler* const handler_;
  const DoorOptions options_;
  Clock* const clock_;
  const ProcedureTable procedures_;
  metrics::Family<metrics::Counter>* const calls_;
  const door::StreamCallOptions stream_options_;
};

// Accumulates a request body up to the protocol's limit, then dispatches.
class BodyObserver final : public http::RequestObserver {
 public:
  BodyObserver(std::shared_ptr<const Door> door, std::shared_ptr<Call> call)
      : door_(std::move(door)),
        call_(std::move(call)),
        limit_(door_->body_limit(call_->protocol.wire)) {}

  void OnData(absl::string_view chunk) override {
    if (done_) return;
    if (chunk.size() > limit_ - body_.size()) {
      done_ = true;
      std::string().swap(body_);
      door_->Fail(*call_, absl::ResourceExhaustedError(absl::StrCat(
                              "request body is larger than the limit of ",
                              limit_, " bytes")));
      return;
    }
    body_.append(chunk.data(), chunk.size());
  }

  void OnEnd() override {
    if (done_) return;
    done_ = true;
    door_->Dispatch(call_, std::move(body_));
  }

  void OnCancel() override {
    call_->cancelled.store(true);
    done_ = true;
  }

 private:
  const std::shared_ptr<const Door> door_;
  const std::shared_ptr<Call> call_;
  const size_t limit_;
  std::string body_;
  bool done_ = false;  // answered, dispatched or cancelled
};

std::shared_ptr<Call> Door::NewCall(std::shared_ptr<Exchange> exchange,
                                    const Procedure* procedure,
                                    Protocol protocol) const {
  auto call = std::make_shared<Call>();
  call->context.protocol = Label(protocol.wire);
  if (std::optional<absl::string_view> key =
          FindHeader(exchange->headers(), "x-api-key")) {
    call->context.api_key = std::string(*key);
  }
  call->context.peer = exchange->peer();
  call->exchange = std::move(exchange);
  call->procedure = procedure;
  call->protocol = std::move(protocol);
  return call;
}

std::unique_ptr<http::RequestObserver> Door::Accept(
    std::shared_ptr<Exchange> exchange) const {
  absl::string_view target = exchange->path();
  size_t question = target.find('?');
  absl::string_view path = target.substr(0, question);
  absl::string_view query = question == absl::string_view::npos
                                ? absl::string_view()
                                : target.substr(question + 1);
  if (!absl::StartsWith(path, kServicePrefix)) {
    exchange->SendHeaders(404, {}, true);
    return http::IgnoreBody();
  }
  const Procedure* procedure = FindProcedure(procedures_, path);
  const std::string& method = exchange->method();
  if (method == "GET") {
    ServeGet(exchange, procedure, query);
    return http::IgnoreBody();
  }
  if (method != "POST") {
    if (procedure == nullptr) {
      exchange->SendHeaders(404, {}, true);
    } else {
      bool get = procedure->no_side_effects && !procedure->bidi;
      exchange->SendHeaders(405, {{"allow", get ? "GET, POST" : "POST"}}, true);
    }
    return http::IgnoreBody();
  }
  std::optional<Protocol> protocol = ClassifyRequest(
      FindHeader(exchange->headers(), "content-type").value_or(""));
  if (!protocol.has_value()) {
    if (procedure == nullptr) {
      exchange->SendHeaders(404, {}, true);
    } else {
      exchange->SendHeaders(
          415,
          {{"accept-post",
            absl::StrCat("application/grpc, application/grpc+proto, ",
                         connect::SupportedContentTypes())}},
          true);
    }
    return http::IgnoreBody();
  }
  if (protocol->wire == Wire::kGrpc &&
      exchange->version() != http::HttpVersion::kHttp2) {
    SendWhole(*exchange, 505, {{"content-type", "text/plain"}},
              "gRPC needs HTTP/2\n");
    return http::IgnoreBody();
  }
  bool stream_type = protocol->wire == Wire::kConnectStream;
  bool unary_type = protocol->wire == Wire::kConnectUnary;
  if (procedure != nullptr &&
      ((procedure->bidi && unary_type) || (!procedure->bidi && stream_type))) {
    exchange->SendHeaders(
        415, {{"accept-post", std::string(connect::SupportedContentTypes())}},
        true);
    return http::IgnoreBody();
  }
  std::shared_ptr<Call> call =
      NewCall(std::move(exchange), procedure, *std::move(protocol));
  if (procedure == nullptr) {
    Fail(*call,
         absl::UnimplementedError(absl::StrCat(
             path.substr(1), " is not a method of fleetd.v1.SyncService")));
    return http::IgnoreBody();
  }
  if (procedure->bidi &&
      call->exchange->version() != http::HttpVersion::kHttp2) {
    // As connect-go: a bidirectional call needs HTTP/2 (HTTP/1.1 cannot send
    // the response while the request is still coming).
    SendWhole(*call->exchange, 505, {{"content-type", "text/plain"}},
              "fleetd.v1.SyncService/StreamSync is bidirectional: it needs "
              "HTTP/2\n");
    return http::IgnoreBody();
  }
  if (absl::Status status = ReadCallHeaders(*call); !status.ok()) {
    Fail(*call, status);
    return http::IgnoreBody();
  }
  if (procedure->bidi) {
    return door::StartStreamCall(call->exchange, call->protocol, call->context,
                                 call->request_coding, call->response_coding,
                                 stream_options_);
  }
  return std::make_unique<BodyObserver>(shared_from_this(), std::move(call));
}

absl::Status Door::ReadCallHeaders(Call& call) const {
  const Headers& headers = call.exchange->headers();
  absl::string_view coding_header = "grpc-encoding";
  const Wire wire = call.protocol.wire;
  if (wire == Wire::kConnectUnary || wire == Wire::kConnectStream) {
    if (wire == Wire::kConnectUnary) {
      coding_header = "content-encoding";
      RETURN_IF_ERROR(CheckConnectProtocolVersion(
          FindHeader(headers, "connect-protocol-version"),
          options_.require_connect_protocol_version));
    } else {
      // Streaming: each message says whether it is compressed, with this
      // coding.
      coding_header = "connect-content-encoding";
    }
    if (std::optional<absl::string_view> timeout =
            FindHeader(headers, "connect-timeout-ms")) {
      RETURN_IF_ERROR(
          ApplyTimeout(connect::ParseConnectTimeout(*timeout), call.context));
    }
  } else if (std::optional<absl::string_view> timeout =
                 FindHeader(headers, "grpc-timeout")) {
    RETURN_IF_ERROR(
        ApplyTimeout(connect::ParseGrpcTimeout(*timeout), call.context));
  }
  absl::StatusOr<Compression> coding = connect::ParseContentCoding(
      FindHeader(headers, coding_header).value_or(""));
  if (!coding.ok()) return coding.status();
  call.request_coding = *coding;
  call.response_coding =
      door::ResponseCoding(call.protocol.wire, headers, *coding);
  return absl::OkStatus();
}

void Door::ServeGet(const std::shared_ptr<Exchange>& exchange,
                    const Procedure* procedure, absl::string_view query) const {
  std::map<std::string, std::string> params = ParseQuery(query);
  std::optional<std::string> encoding = Param(params, "encoding");
  Protocol protocol;
  if (encoding == "json") {
    protocol.codec = Codec::kJson;
    protocol.response_type = "application/json";
  } else {
    protocol.response_type = "application/proto";
  }
  std::shared_ptr<Call> call = NewCall(exchange, procedure, protocol);
  call->get = true;
  if (procedure == nullptr) {
    Fail(*call, absl::UnimplementedError("not a method of SyncService"));
    return;
  }
  if (!procedure->no_side_effects || procedure->bidi) {
    exchange->SendHeaders(405, {{"allow", "POST"}}, true);
    return;
  }
  if (encoding != "proto" && encoding != "json") {
    exchange->SendHeaders(415, {}, true);
    return;
  }
  absl::Status status = CheckConnectGetVersion(
      Param(params, "connect"), options_.require_connect_protocol_version);
  if (std::optional<absl::string_view> timeout =
          FindHeader(exchange->headers(), "connect-timeout-ms");
      status.ok() && timeout.has_value()) {
    status =
        ApplyTimeout(connect::ParseConnectTimeout(*timeout), call->context);
  }
  absl::StatusOr<Compression> coding =
      connect::ParseContentCoding(Param(params, "compression").value_or(""));
  if (status.ok()) status = coding.status();
  std::string message = Param(params, "message").value_or("");
  if (status.ok() &&
      message.size() >
          WireBodyLimit(Wire::kGrpcWebText, options_.max_message_bytes)) {
    status = absl::ResourceExhaustedError("message query parameter too large");
  }
  absl::StatusOr<std::string> bytes;
  if (status.ok()) {
    bytes = connect::DecodeGetMessage(message, Param(params, "base64") == "1");
    status = bytes.status();
  }
  if (!status.ok()) {
    Fail(*call, status);
    return;
  }
  call->request_coding = *coding;
  call->response_coding = connect::NegotiateCompression(
      FindHeader(exchange->headers(), "accept-encoding"), *coding);
  Dispatch(std::move(call), *std::move(bytes));
}

void Door::Dispatch(std::shared_ptr<Call> call, std::string body) const {
  absl::Status submitted = options_.workers->Submit(
      [door = shared_from_this(), call,
       body = std::move(body)](absl::Status run) mutable {
        if (!run.ok()) {
          door->Fail(*call, absl::UnavailableError("server shutting down"));
          return;
        }
        door->Run(std::move(call), std::move(body));
      });
  if (absl::IsResourceExhausted(submitted)) {
    LOG_EVERY_T(WARNING, 1) << "front door " << call->procedure->name
                            << ": refusing a call, " << submitted.message();
    Fail(*call,
         WithRetryAfter(absl::ResourceExhaustedError(
                            "server overloaded: every worker is busy and the "
                            "call queue is full"),
                        options_.overload_retry_after));
  } else if (!submitted.ok()) {
    Fail(*call, absl::UnavailableError("server shutting down"));
  }
}

absl::StatusOr<std::string> Door::RequestMessage(const Call& call,
                                                 std::string body) const {
  const int64_t max = options_.max_message_bytes;
  switch (call.protocol.wire) {
    case Wire::kConnectUnary:
      return DecompressMessage(call.request_coding, std::move(body), max,
                               kFrontEnd);
    case Wire::kGrpcWebText: {
      absl::StatusOr<std::string> decoded = connect::DecodeGrpcWebText(body);
      if (!decoded.ok()) return decoded.status();
      body = *std::move(decoded);
      break;
    }
    case Wire::kGrpc:
    case Wire::kGrpcWeb:
      break;
    case Wire::kConnectStream:
      return absl::InternalError("Connect streaming reached a unary call");
  }
  absl::StatusOr<std::vector<connect::Envelope>> envelopes =
      connect::ParseEnvelopes(body, static_cast<size_t>(max));
  if (!envelopes.ok()) return envelopes.status();
  return UnaryEnvelopeMessage(*envelopes, connect::kFlagGrpcTrailers,
                              call.request_coding, max, kFrontEnd);
}

void Door::Run(std::shared_ptr<Call> call, std::string body) const {
  if (call->cancelled.load()) {
    // The client is gone: its answer could not arrive anyway.
    Fail(*call, absl::CancelledError("call cancelled before it ran"));
    return;
  }
  if (clock_->Now() >= call->context.deadline) {
    Fail(*call, absl::DeadlineExceededError(
                    "deadline passed while the call waited for a worker"));
    return;
  }
  absl::StatusOr<std::string> message = RequestMessage(*call, std::move(body));
  if (!message.ok()) {
    Fail(*call, message.status());
    return;
  }
  const Call& ref = *call;
  InvokeProcedureAsync(*ref.procedure, handler_, ref.context,
                       ref.protocol.codec, *message,
                       [door = shared_from_this(), call = std::move(call)](
                           absl::StatusOr<std::unique_ptr<Message>> response) {
                         door->Answer(*call, std::move(response));
                       });
}

void Door::Answer(const Call& call,
                  absl::StatusOr<std::unique_ptr<Message>> response) const {
  absl::StatusOr<std::string> encoded =
      response.ok() ? connect::EncodeMessage(call.protocol.codec, **response)
                    : absl::StatusOr<std::string>(response.status());
  if (!encoded.ok()) {
    Fail(call, encoded.status());
    return;
  }
  Succeed(call, *std::move(encoded));
}

void Door::Succeed(const Call& call, std::string message) const {
  Exchange& exchange = *call.exchange;
  const Protocol& protocol = call.protocol;
  std::string out;
  switch (protocol.wire) {
    case Wire::kConnectUnary: {
      Count(call, absl::StatusCode::kOk);
      Headers headers = {{"content-type", protocol.response_type},
                         {"accept-encoding", connect::kAcceptedCodings}};
      AddGetCaching(call, headers);
      if (call.response_coding != Compression::kNone &&
          message.size() >= door::kCompressMinBytes) {
        absl::StatusOr<std::string> compressed =
            Compress(call.response_coding, message);
        if (compressed.ok()) {
          headers.push_back({"content-encoding", std::string(CompressionName(
                                                     call.response_coding))});
          message = *std::move(compressed);
        }
      }
      SendWhole(exchange, 200, std::move(headers), std::move(message));
      return;
    }
    case Wire::kGrpc: {
      Count(call, absl::StatusCode::kOk);
      door::AppendMessage(call.response_coding, message, &out);
      Headers headers = {{"content-type", protocol.response_type},
                         {"grpc-accept-encoding", kGrpcAcceptEncoding}};
      if (call.response_coding != Compression::kNone) {
        headers.push_back({"grpc-encoding",
                           std::string(CompressionName(call.response_coding))});
      }
      exchange.SendResponse(200, std::move(headers), std::move(out),
                            {{"grpc-status", "0"}});
      return;
    }
    case Wire::kGrpcWeb:
    case Wire::kGrpcWebText:
      Count(call, absl::StatusCode::kOk);
      door::AppendMessage(call.response_coding, message, &out);
      SendGrpcWeb(call, std::move(out), absl::OkStatus());
      return;
    case Wire::kConnectStream:
      Fail(call, absl::InternalError("Connect streaming reached a unary call"));
      return;
  }
}

void Door::Fail(const Call& call, const absl::Status& status) const {
  Count(call, status.code());
  Exchange& exchange = *call.exchange;
  const Protocol& protocol = call.protocol;
  switch (protocol.wire) {
    case Wire::kGrpc:
      door::SendGrpcTrailersOnly(exchange, protocol.response_type, status);
      return;
    case Wire::kGrpcWeb:
    case Wire::kGrpcWebText:
      SendGrpcWeb(call, std::string(), status);
      return;
    case Wire::kConnectStream:
      SendWhole(exchange, 200,
                {{"content-type", protocol.response_type},
                 {"connect-accept-encoding", connect::kAcceptedCodings}},
                door::ConnectEndStreamFrame(status));
      return;
    case Wire::kConnectUnary: {
      Headers headers = {{"content-type", "application/json"},
                         {"accept-encoding", connect::kAcceptedCodings}};
      AddGetCaching(call, headers);
      for (const auto& [name, value] : ConnectErrorHeaders(status)) {
        headers.push_back({absl::AsciiStrToLower(name), value});
      }
      // connect-go answers a procedure it does not know with 404.
      int http_status = call.procedure == nullptr
                            ? 404
                            : connect::HttpStatusFor(status.code());
      SendWhole(exchange, http_status, std::move(headers),
                connect::ErrorJson(status));
      return;
    }
  }
}

}  // namespace

http::ExchangeHandler NewSyncServiceHandler(SyncHandler* handler,
                                            DoorOptions options) {
  CHECK(handler != nullptr) << "the front door needs a SyncHandler";
  CHECK(options.workers != nullptr) << "the front door needs a WorkerPool";
  CHECK_GT(options.max_message_bytes, 0);
  absl::StatusOr<ProcedureTable> procedures = SyncServiceProcedures(kFrontEnd);
  CHECK(procedures.ok()) << procedures.status();
  auto door =
      std::make_shared<const Door>(handler, options, *std::move(procedures));
  return [door](std::shared_ptr<Exchange> exchange) {
    return door->Accept(std::move(exchange));
  };
}

}  // namespace fleetd::server::rpc
