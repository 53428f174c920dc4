#include "server/rpc/connect/connect_front_end.h"

#include <algorithm>
#include <functional>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/codec/codec.h"
#include "glog/logging.h"
#include "server/rpc/connect/connect_protocol.h"
#include "server/rpc/connect/http_server.h"
#include "server/rpc/connect/procedures.h"
#include "server/rpc/net/net.h"
#include "server/rpc/net/tls_context.h"

namespace fleetd::server::rpc {
namespace {

using connect::Codec;
using connect::ContentType;
using connect::HttpServer;
using connect::WireProtocol;
using google::protobuf::Message;

bool BodyPresent(const httplib::Request& req) {
  if (req.has_header("Transfer-Encoding")) return true;
  if (!req.has_header("Content-Length")) return false;
  return req.get_header_value("Content-Length") != "0";
}

HttpServer::RequestInfo& Info() {
  static thread_local HttpServer::RequestInfo fallback;
  HttpServer::RequestInfo* info = HttpServer::Current();
  return info != nullptr ? *info : fallback;
}

// Ends the connection after this response (the body may be unread).
void CloseAfter(httplib::Response& res) {
  Info().close_after_response = true;
  res.set_header("Connection", "close");
}

// Buffers a half-duplex stream's responses until the request body is done.
class BufferingSink final : public StreamSink {
 public:
  BufferingSink(size_t max_responses, metrics::Counter* dropped)
      : max_responses_(max_responses), dropped_(dropped) {}

  bool Send(const v1::StreamSyncResponse& response) override {
    absl::MutexLock lock(&mu_);
    if (!closed_ && responses_.size() < max_responses_) {
      responses_.push_back(response);
      return true;
    }
    if (dropped_ != nullptr) dropped_->Increment();
    LOG_EVERY_N(WARNING, 100)
        << "Connect StreamSync: dropping a response ("
        << (closed_ ? "stream closed" : "too many buffered responses") << ")";
    return false;
  }

  std::vector<v1::StreamSyncResponse> Close() {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    return std::move(responses_);
  }

 private:
  const size_t max_responses_;
  metrics::Counter* const dropped_;
  absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<v1::StreamSyncResponse> responses_ ABSL_GUARDED_BY(mu_);
};

class ConnectFrontEndImpl final : public ConnectFrontEnd {
 public:
  ConnectFrontEndImpl(const ConnectFrontEndOptions& options,
                      SyncHandler* handler)
      : options_(options),
        clock_(options.clock != nullptr ? options.clock : Clock::Real()),
        handler_(handler) {
    calls_ = FrontEndRequests(options.metrics);
    if (options.metrics != nullptr) {
      dropped_ = &options.metrics
                      ->CounterFamily(
                          "fleetd_rpc_stream_responses_dropped_total",
                          "Stream responses the handler sent after the stream "
                          "had closed.",
                          {"protocol"})
                      .WithLabels({"connect"});
    }
  }

  ~ConnectFrontEndImpl() override { Shutdown(); }

  absl::Status Init();
  int port() const override { return port_; }
  void Shutdown() override;

 private:
  const Procedure* Find(const std::string& path) const {
    return FindProcedure(procedures_, path);
  }

  httplib::Server::HandlerResponse PreRoute(const httplib::Request& req,
                                            httplib::Response& res);
  void HandleGet(const httplib::Request& req, httplib::Response& res);
  void HandlePost(const httplib::Request& req, httplib::Response& res,
                  const httplib::ContentReader& reader);

  absl::StatusOr<std::string> ReadBody(const httplib::Request& req,
                                       httplib::Response& res,
                                       const httplib::ContentReader& reader,
                                       size_t limit);
  CallContext MakeContext(const httplib::Request& req,
                          const char* protocol) const;
  absl::Status CheckConnectVersion(const httplib::Request& req) const;
  absl::Status ApplyTimeout(absl::StatusOr<absl::Duration> timeout,
                            CallContext* call) const;
  absl::StatusOr<std::string> Decompress(Compression coding,
                                         std::string body) const;

  // Connect unary (POST and GET share this once the message bytes are
  // known).
  void ServeUnary(const Procedure& procedure, const CallContext& call,
                  Codec codec, const std::string& content_type,
                  absl::string_view bytes, Compression response_coding,
                  httplib::Response& res);
  void ConnectError(httplib::Response& res, const absl::Status& status);
  void ServeConnectStream(const Procedure& procedure,
                          const httplib::Request& req, const ContentType& type,
                          absl::StatusOr<std::string> body,
                          httplib::Response& res);
  void ServeGrpcWeb(const Procedure& procedure, const httplib::Request& req,
                    const ContentType& type, absl::StatusOr<std::string> body,
                    httplib::Response& res);

  // Runs a StreamSync session over already received messages; appends the
  // encoded responses to `out` (each via `frame`) and returns the status the
  // stream ends with.
  absl::Status RunHalfDuplex(
      const CallContext& call, Codec codec,
      const std::vector<connect::Envelope>& envelopes,
      Compression request_coding, uint8_t trailer_flag,
      const std::function<void(absl::string_view)>& frame);

  void Count(const char* protocol, const std::string& method,
             absl::StatusCode code) {
    if (calls_ == nullptr) return;
    calls_->WithLabels({protocol, method, absl::StatusCodeToString(code)})
        .Increment();
  }

  // Appends `payload` as a data envelope, compressed when worthwhile.
  void AppendMessage(Compression coding, absl::string_view payload,
                     std::string* out) const;

  const ConnectFrontEndOptions options_;
  Clock* const clock_;
  SyncHandler* const handler_;
  metrics::Family<metrics::Counter>* calls_ = nullptr;
  metrics::Counter* dropped_ = nullptr;
  ProcedureTable procedures_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
  int port_ = 0;
  absl::Mutex shutdown_mu_;
};

absl::Status ConnectFrontEndImpl::Init() {
  absl::StatusOr<ProcedureTable> procedures =
      SyncServiceProcedures("Connect front end");
  if (!procedures.ok()) return procedures.status();
  procedures_ = *std::move(procedures);

  absl::StatusOr<HostPort> address = ParseHostPort(options_.address);
  if (!address.ok()) return address.status();
  HttpServer::Options http;
  if (!options_.insecure) {
    absl::StatusOr<SslCtxPtr> tls = NewTls13ServerContext(
        options_.tls_cert_file, options_.tls_key_file, AlpnPolicy::kHttp11);
    if (!tls.ok()) return tls.status();
    http.tls = *std::move(tls);
  }
  http.threads = options_.threads;
  http.read_timeout = options_.read_timeout;
  http.write_timeout = options_.write_timeout;
  http.idle_timeout = options_.idle_timeout;
  http.handshake_timeout = options_.tls_handshake_timeout;
  http.metrics = options_.metrics;
  server_ = std::make_unique<HttpServer>(std::move(http));
  // Bodies are read through ContentReader with our own bound; this only
  // backs it up.
  server_->set_payload_max_length(
      BodyLimit(WireProtocol::kGrpcWebText, options_.max_message_bytes) + 1);
  server_->set_pre_routing_handler(
      [this](const httplib::Request& req, httplib::Response& res) {
        return PreRoute(req, res);
      });
  server_->Get(".*", [this](const httplib::Request& req,
                            httplib::Response& res) { HandleGet(req, res); });
  server_->Post(".*",
                [this](const httplib::Request& req, httplib::Response& res,
                       const httplib::ContentReader& reader) {
                  HandlePost(req, res, reader);
                });
  absl::StatusOr<int> port = server_->Bind(*address);
  if (!port.ok()) {
    server_.reset();
    return port.status();
  }
  port_ = *port;
  {
    // Run() starts the worker threads, which write through OpenSSL.
    ScopedSigpipeBlock no_sigpipe;
    thread_ = std::thread([server = server_.get()] { server->Run(); });
  }
  server_->WaitUntilRunning();
  if (options_.insecure) {
    LOG(WARNING) << "Connect front end serving PLAINTEXT HTTP/1.1 on port "
                 << port_ << " (insecure mode)";
  } else {
    LOG(INFO) << "Connect front end serving HTTPS (TLS 1.3) on port " << port_;
  }
  return absl::OkStatus();
}

void ConnectFrontEndImpl::Shutdown() {
  absl::MutexLock lock(&shutdown_mu_);
  if (server_ == nullptr) return;
  server_->Stop();
  if (thread_.joinable()) thread_.join();
  server_.reset();
}

httplib::Server::HandlerResponse ConnectFrontEndImpl::PreRoute(
    const httplib::Request& req, httplib::Response& res) {
  if (req.method == "POST" || req.method == "GET") {
    return httplib::Server::HandlerResponse::Unhandled;
  }
  CloseAfter(res);
  const Procedure* procedure = Find(req.path);
  if (procedure == nullptr) {
    res.status = 404;
  } else {
    res.status = 405;
    res.set_header("Allow", procedure->no_side_effects ? "GET, POST" : "POST");
  }
  return httplib::Server::HandlerResponse::Handled;
}

CallContext ConnectFrontEndImpl::MakeContext(const httplib::Request& req,
                                             const char* protocol) const {
  CallContext call;
  call.protocol = protocol;
  call.api_key = req.get_header_value("X-API-Key");
  call.peer = Info().peer;
  return call;
}

absl::Status ConnectFrontEndImpl::CheckConnectVersion(
    const httplib::Request& req) const {
  std::optional<std::string> version;
  if (req.has_header("Connect-Protocol-Version")) {
    version = req.get_header_value("Connect-Protocol-Version");
  }
  return CheckConnectProtocolVersion(version,
                                     options_.require_connect_protocol_version);
}

absl::Status ConnectFrontEndImpl::ApplyTimeout(
    absl::StatusOr<absl::Duration> timeout, CallContext* call) const {
  if (!timeout.ok()) return timeout.status();
  call->deadline = clock_->Now() + *timeout;
  return absl::OkStatus();
}

absl::StatusOr<std::string> ConnectFrontEndImpl::Decompress(
    Compression coding, std::string body) const {
  return DecompressMessage(coding, std::move(body), options_.max_message_bytes,
                           "Connect front end");
}

absl::StatusOr<std::string> ConnectFrontEndImpl::ReadBody(
    const httplib::Request& req, httplib::Response& res,
    const httplib::ContentReader& reader, size_t limit) {
  bool chunked = absl::StrContains(
      absl::AsciiStrToLower(req.get_header_value("Transfer-Encoding")),
      "chunked");
  if (!chunked && !req.has_header("Content-Length")) return std::string();
  uint64_t declared = 0;
  if (!chunked &&
      absl::SimpleAtoi(req.get_header_value("Content-Length"), &declared) &&
      declared > limit) {
    CloseAfter(res);
    return absl::ResourceExhaustedError(
        absl::StrCat("request body of ", declared,
                     " bytes is larger than the limit of ", limit, " bytes"));
  }
  std::string body;
  bool over = false;
  bool ok = reader([&](const char* data, size_t n) {
    if (body.size() + n > limit) {
      over = true;
      return false;
    }
    body.append(data, n);
    return true;
  });
  if (over) {
    CloseAfter(res);
    return absl::ResourceExhaustedError(absl::StrCat(
        "request body is larger than the limit of ", limit, " bytes"));
  }
  if (!ok) {
    CloseAfter(res);
    return absl::InvalidArgumentError("incomplete request body");
  }
  return body;
}

void ConnectFrontEndImpl::HandleGet(const httplib::Request& req,
                                    httplib::Response& res) {
  if (BodyPresent(req)) CloseAfter(res);  // never read for GET
  const Procedure* procedure = Find(req.path);
  if (procedure == nullptr) {
    res.status = 404;
    return;
  }
  if (!procedure->no_side_effects || procedure->bidi) {
    res.status = 405;
    res.set_header("Allow", "POST");
    return;
  }
  std::string encoding = req.get_param_value("encoding");
  Codec codec;
  if (encoding == "proto") {
    codec = Codec::kProto;
  } else if (encoding == "json") {
    codec = Codec::kJson;
  } else {
    res.status = 415;
    return;
  }
  CallContext call = MakeContext(req, "connect");
  std::optional<std::string> version;
  if (req.has_param("connect")) version = req.get_param_value("connect");
  absl::Status status = CheckConnectGetVersion(
      version, options_.require_connect_protocol_version);
  if (status.ok() && req.has_header("Connect-Timeout-Ms")) {
    status = ApplyTimeout(connect::ParseConnectTimeout(
                              req.get_header_value("Connect-Timeout-Ms")),
                          &call);
  }
  absl::StatusOr<Compression> coding =
      connect::ParseContentCoding(req.get_param_value("compression"));
  if (status.ok()) status = coding.status();
  std::string message = req.get_param_value("message");
  if (status.ok() && message.size() > BodyLimit(WireProtocol::kGrpcWebText,
                                                options_.max_message_bytes)) {
    status = absl::ResourceExhaustedError("message query parameter too large");
  }
  absl::StatusOr<std::string> bytes;
  if (status.ok()) {
    bytes = connect::DecodeGetMessage(message,
                                      req.get_param_value("base64") == "1");
    if (bytes.ok()) bytes = Decompress(*coding, *std::move(bytes));
    status = bytes.status();
  }
  if (!status.ok()) {
    Count("connect", procedure->name, status.code());
    ConnectError(res, status);
    return;
  }
  Compression response_coding =
      connect::NegotiateCompression(Info().accept_encoding, *coding);
  ServeUnary(*procedure, call, codec,
             codec == Codec::kProto ? "application/proto" : "application/json",
             *bytes, response_coding, res);
}

void ConnectFrontEndImpl::HandlePost(const httplib::Request& req,
                                     httplib::Response& res,
                                     const httplib::ContentReader& reader) {
  const Procedure* procedure = Find(req.path);
  if (procedure == nullptr) {
    if (BodyPresent(req)) CloseAfter(res);
    res.status = 404;
    return;
  }
  std::optional<ContentType> type =
      connect::ClassifyContentType(req.get_header_value("Content-Type"));
  bool stream_type =
      type.has_value() && type->protocol == WireProtocol::kConnectStream;
  bool unary_type =
      type.has_value() && type->protocol == WireProtocol::kConnectUnary;
  if (!type.has_value() || (procedure->bidi && unary_type) ||
      (!procedure->bidi && stream_type)) {
    if (BodyPresent(req)) CloseAfter(res);
    res.status = 415;
    res.set_header("Accept-Post",
                   std::string(connect::SupportedContentTypes()));
    return;
  }
  if (procedure->bidi && !options_.http1_bidi_half_duplex) {
    // Bidirectional streaming needs HTTP/2; a client expecting full duplex
    // would otherwise wait forever, so answer at once and hang up.
    CloseAfter(res);
    res.status = 505;
    return;
  }
  absl::StatusOr<std::string> body = ReadBody(
      req, res, reader, BodyLimit(type->protocol, options_.max_message_bytes));
  switch (type->protocol) {
    case WireProtocol::kConnectUnary: {
      CallContext call = MakeContext(req, "connect");
      absl::Status status = CheckConnectVersion(req);
      if (status.ok() && req.has_header("Connect-Timeout-Ms")) {
        status = ApplyTimeout(connect::ParseConnectTimeout(
                                  req.get_header_value("Connect-Timeout-Ms")),
                              &call);
      }
      absl::StatusOr<Compression> coding =
          connect::ParseContentCoding(Info().content_encoding.value_or(""));
      if (status.ok()) status = coding.status();
      if (status.ok()) status = body.status();
      if (status.ok()) {
        body = Decompress(*coding, *std::move(body));
        status = body.status();
      }
      if (!status.ok()) {
        Count("connect", procedure->name, status.code());
        ConnectError(res, status);
        return;
      }
      ServeUnary(*procedure, call, type->codec, type->response_type, *body,
                 connect::NegotiateCompression(Info().accept_encoding, *coding),
                 res);
      return;
    }
    case WireProtocol::kConnectStream:
      ServeConnectStream(*procedure, req, *type, std::move(body), res);
      return;
    case WireProtocol::kGrpcWeb:
    case WireProtocol::kGrpcWebText:
      ServeGrpcWeb(*procedure, req, *type, std::move(body), res);
      return;
  }
}

void ConnectFrontEndImpl::ServeUnary(const Procedure& procedure,
                                     const CallContext& call, Codec codec,
                                     const std::string& content_type,
                                     absl::string_view bytes,
                                     Compression response_coding,
                                     httplib::Response& res) {
  absl::StatusOr<std::unique_ptr<Message>> response =
      InvokeProcedure(procedure, handler_, call, codec, bytes);
  absl::StatusOr<std::string> encoded =
      response.ok() ? connect::EncodeMessage(codec, **response)
                    : absl::StatusOr<std::string>(response.status());
  Count("connect", procedure.name, encoded.status().code());
  if (!encoded.ok()) {
    ConnectError(res, encoded.status());
    return;
  }
  res.status = 200;
  res.set_header("Accept-Encoding", connect::kAcceptedCodings);
  if (response_coding != Compression::kNone &&
      encoded->size() >= static_cast<size_t>(options_.compress_min_bytes)) {
    absl::StatusOr<std::string> compressed =
        fleetd::Compress(response_coding, *encoded);
    if (compressed.ok()) {
      res.set_header("Content-Encoding",
                     std::string(CompressionName(response_coding)));
      encoded = std::move(compressed);
    }
  }
  res.set_content(*encoded, content_type.c_str());
}

void ConnectFrontEndImpl::ConnectError(httplib::Response& res,
                                       const absl::Status& status) {
  res.status = connect::HttpStatusFor(status.code());
  for (const auto& [name, value] : ConnectErrorHeaders(status)) {
    res.set_header(name, value);
  }
  res.set_content(connect::ErrorJson(status), "application/json");
}

void ConnectFrontEndImpl::AppendMessage(Compression coding,
                                        absl::string_view payload,
                                        std::string* out) const {
  if (coding != Compression::kNone &&
      payload.size() >= static_cast<size_t>(options_.compress_min_bytes)) {
    absl::StatusOr<std::string> compressed = fleetd::Compress(coding, payload);
    if (compressed.ok()) {
      connect::AppendEnvelope(connect::kFlagCompressed, *compressed, out);
      return;
    }
  }
  connect::AppendEnvelope(0, payload, out);
}

absl::Status ConnectFrontEndImpl::RunHalfDuplex(
    const CallContext& call, Codec codec,
    const std::vector<connect::Envelope>& envelopes, Compression request_coding,
    uint8_t trailer_flag, const std::function<void(absl::string_view)>& frame) {
  BufferingSink sink(static_cast<size_t>(options_.max_stream_responses),
                     dropped_);
  absl::StatusOr<std::unique_ptr<StreamSession>> session =
      handler_->OpenStream(call, &sink);
  if (!session.ok()) {
    sink.Close();
    return session.status();
  }
  absl::Status status;
  for (const connect::Envelope& envelope : envelopes) {
    if ((envelope.flags & trailer_flag) != 0) {
      status = absl::InvalidArgumentError(
          "protocol error: end-of-stream flag set on a request message");
      break;
    }
    absl::StatusOr<std::string> payload =
        EnvelopeMessage(envelope, request_coding, "an encoding",
                        options_.max_message_bytes, "Connect front end");
    v1::StreamSyncRequest request;
    status = payload.status();
    if (status.ok()) status = connect::DecodeMessage(codec, *payload, &request);
    if (status.ok()) status = (*session)->OnRequest(request);
    if (!status.ok()) break;
  }
  absl::Status finished = (*session)->Finish();
  for (const v1::StreamSyncResponse& response : sink.Close()) {
    absl::StatusOr<std::string> encoded =
        connect::EncodeMessage(codec, response);
    if (!encoded.ok()) {
      if (status.ok()) status = encoded.status();
      break;
    }
    frame(*encoded);
  }
  return status.ok() ? finished : status;
}

void ConnectFrontEndImpl::ServeConnectStream(const Procedure& procedure,
                                             const httplib::Request& req,
                                             const ContentType& type,
                                             absl::StatusOr<std::string> body,
                                             httplib::Response& res) {
  CallContext call = MakeContext(req, "connect");
  absl::Status status = CheckConnectVersion(req);
  if (status.ok() && req.has_header("Connect-Timeout-Ms")) {
    status = ApplyTimeout(connect::ParseConnectTimeout(
                              req.get_header_value("Connect-Timeout-Ms")),
                          &call);
  }
  absl::StatusOr<Compression> coding = connect::ParseContentCoding(
      req.get_header_value("Connect-Content-Encoding"));
  if (status.ok()) status = coding.status();
  Compression request_coding = coding.ok() ? *coding : Compression::kNone;
  std::optional<std::string> accept;
  if (req.has_header("Connect-Accept-Encoding")) {
    accept = req.get_header_value("Connect-Accept-Encoding");
  }
  Compression response_coding =
      connect::NegotiateCompression(accept, request_coding);
  // A whole-body HTTP Content-Encoding is legal HTTP even if unusual here.
  absl::StatusOr<Compression> body_coding =
      connect::ParseContentCoding(Info().content_encoding.value_or(""));
  if (status.ok()) status = body_coding.status();
  if (status.ok()) status = body.status();
  if (status.ok()) {
    body = Decompress(*body_coding, *std::move(body));
    status = body.status();
  }
  absl::StatusOr<std::vector<connect::Envelope>> envelopes;
  if (status.ok()) {
    envelopes = connect::ParseEnvelopes(
        *body, static_cast<size_t>(options_.max_message_bytes));
    status = envelopes.status();
  }
  std::string out;
  if (status.ok()) {
    status =
        RunHalfDuplex(call, type.codec, *envelopes, request_coding,
                      connect::kFlagEndStream, [&](absl::string_view payload) {
                        AppendMessage(response_coding, payload, &out);
                      });
  }
  Count("connect", procedure.name, status.code());
  connect::AppendEnvelope(connect::kFlagEndStream,
                          connect::EndStreamJson(status, RetryMetadata(status)),
                          &out);
  res.status = 200;
  if (response_coding != Compression::kNone) {
    res.set_header("Connect-Content-Encoding",
                   std::string(CompressionName(response_coding)));
  }
  res.set_header("Connect-Accept-Encoding", connect::kAcceptedCodings);
  res.set_content(out, type.response_type.c_str());
}

void ConnectFrontEndImpl::ServeGrpcWeb(const Procedure& procedure,
                                       const httplib::Request& req,
                                       const ContentType& type,
                                       absl::StatusOr<std::string> body,
                                       httplib::Response& res) {
  CallContext call = MakeContext(req, "grpc-web");
  absl::Status status;
  if (req.has_header("grpc-timeout")) {
    status = ApplyTimeout(
        connect::ParseGrpcTimeout(req.get_header_value("grpc-timeout")), &call);
  }
  absl::StatusOr<Compression> coding =
      connect::ParseContentCoding(req.get_header_value("grpc-encoding"));
  if (status.ok()) status = coding.status();
  Compression request_coding = coding.ok() ? *coding : Compression::kNone;
  // gRPC compresses responses only with a coding the client listed.
  Compression response_coding = Compression::kNone;
  if (req.has_header("grpc-accept-encoding")) {
    response_coding = connect::NegotiateCompression(
        req.get_header_value("grpc-accept-encoding"), Compression::kNone);
  }
  if (status.ok()) status = body.status();
  if (status.ok() && type.protocol == WireProtocol::kGrpcWebText) {
    body = connect::DecodeGrpcWebText(*body);
    status = body.status();
  }
  absl::StatusOr<std::vector<connect::Envelope>> envelopes;
  if (status.ok()) {
    envelopes = connect::ParseEnvelopes(
        *body, static_cast<size_t>(options_.max_message_bytes));
    status = envelopes.status();
  }
  std::string out;
  auto frame = [&](absl::string_view payload) {
    AppendMessage(response_coding, payload, &out);
  };
  if (status.ok() && procedure.bidi) {
    status = RunHalfDuplex(call, type.codec, *envelopes, request_coding,
                           connect::kFlagGrpcTrailers, frame);
  } else if (status.ok()) {
    absl::StatusOr<std::string> payload = UnaryEnvelopeMessage(
        *envelopes, connect::kFlagGrpcTrailers, request_coding,
        options_.max_message_bytes, "Connect front end");
    absl::StatusOr<std::unique_ptr<Message>> response =
        payload.ok()
            ? InvokeProcedure(procedure, handler_, call, type.codec, *payload)
            : absl::StatusOr<std::unique_ptr<Message>>(payload.status());
    absl::StatusOr<std::string> encoded =
        response.ok() ? connect::EncodeMessage(type.codec, **response)
                      : absl::StatusOr<std::string>(response.status());
    status = encoded.status();
    if (encoded.ok()) frame(*encoded);
  }
  Count("grpc-web", procedure.name, status.code());
  connect::AppendEnvelope(
      connect::kFlagGrpcTrailers,
      connect::GrpcWebTrailers(status, RetryMetadata(status)), &out);
  res.status = 200;
  if (response_coding != Compression::kNone) {
    res.set_header("grpc-encoding",
                   std::string(CompressionName(response_coding)));
  }
  res.set_header("grpc-accept-encoding", "gzip,zstd");
  if (type.protocol == WireProtocol::kGrpcWebText)
    out = absl::Base64Escape(out);
  res.set_content(out, type.response_type.c_str());
}

}  // namespace

absl::StatusOr<std::unique_ptr<ConnectFrontEnd>> ConnectFrontEnd::Start(
    const ConnectFrontEndOptions& options, SyncHandler* handler) {
  if (handler == nullptr) {
    return absl::InvalidArgumentError("Connect front end needs a SyncHandler");
  }
  bool has_cert = !options.tls_cert_file.empty();
  bool has_key = !options.tls_key_file.empty();
  if (options.insecure && (has_cert || has_key)) {
    return absl::InvalidArgumentError(
        "Connect front end: insecure (plaintext) mode and a TLS certificate "
        "were both configured; choose one");
  }
  if (!options.insecure && !(has_cert && has_key)) {
    return absl::InvalidArgumentError(
        "Connect front end: TLS needs both a certificate chain and a private "
        "key (plaintext only with the explicit insecure setting)");
  }
  if (options.threads <= 0 || options.max_message_bytes <= 0 ||
      options.compress_min_bytes < 0 || options.max_stream_responses <= 0) {
    return absl::InvalidArgumentError(
        "Connect front end: threads, max_message_bytes and "
        "max_stream_responses must be positive, compress_min_bytes >= 0");
  }
  auto front_end = std::make_unique<ConnectFrontEndImpl>(options, handler);
  absl::Status status = front_end->Init();
  if (!status.ok()) return status;
  return std::unique_ptr<ConnectFrontEnd>(std::move(front_end));
}

void AddConnectFrontEndSettings(Settings& settings,
                                ConnectFrontEndOptions* options) {
  settings
      .String("FLEET_CONNECT_ADDR", "connect-addr",
              "Address the Connect/gRPC-Web front end listens on (host:port).",
              &options->address)
      .String("FLEET_CONNECT_TLS_CERT", "connect-tls-cert",
              "PEM certificate chain for the Connect front end (TLS 1.3 only).",
              &options->tls_cert_file)
      .String("FLEET_CONNECT_TLS_KEY", "connect-tls-key",
              "PEM private key for the Connect front end.",
              &options->tls_key_file)
      .Bool("FLEET_CONNECT_INSECURE", "connect-insecure",
            "Serve Connect in plaintext HTTP/1.1 (development only).",
            &options->insecure)
      .Int32("FLEET_CONNECT_THREADS", "connect-threads",
             "Worker threads of the Connect front end.", &options->threads, 1,
             4096)
      .Bytes("FLEET_CONNECT_MAX_MESSAGE_BYTES", "connect-max-message-bytes",
             "Largest Connect request body or decompressed message.",
             &options->max_message_bytes)
      .Bool("FLEET_CONNECT_REQUIRE_PROTOCOL_VERSION",
            "connect-require-protocol-version",
            "Refuse Connect requests without Connect-Protocol-Version: 1.",
            &options->require_connect_protocol_version)
      .Bool("FLEET_CONNECT_HTTP1_BIDI_HALF_DUPLEX",
            "connect-http1-bidi-half-duplex",
            "Serve StreamSync half-duplex over HTTP/1.1 instead of 505.",
            &options->http1_bidi_half_duplex);
}

}  // namespace fleetd::server::rpc
