#include "server/rpc/grpc/grpc_front_end.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <limits>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/status/error_class.h"
#include "common/status/grpc_status.h"
#include "common/status/retry_after.h"
#include "fleetd/v1/sync.grpc.pb.h"
#include "glog/logging.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/resource_quota.h"
#include "grpcpp/server_posix.h"
#include "server/rpc/grpc/tls_terminator.h"
#include "server/rpc/net/net.h"
#include "server/rpc/net/tls_context.h"

namespace fleetd::server::rpc {
namespace {

using v1::StreamSyncRequest;
using v1::StreamSyncResponse;

// Per-call counters, created once per front end.
class CallMetrics {
 public:
  explicit CallMetrics(metrics::Registry* registry) {
    if (registry == nullptr) return;
    calls_ = &registry->CounterFamily(
        "fleetd_rpc_frontend_requests_total",
        "Requests a front end finished, by protocol, method and status code, "
        "including those refused before reaching the handler.",
        {"protocol", "method", "code"});
    dropped_ = &registry
                    ->CounterFamily("fleetd_rpc_stream_responses_dropped_total",
                                    "Stream responses the handler sent after "
                                    "the stream had closed.",
                                    {"protocol"})
                    .WithLabels({"grpc"});
  }

  void Finished(absl::string_view method, absl::StatusCode code) {
    if (calls_ == nullptr) return;
    calls_
        ->WithLabels(
            {"grpc", std::string(method), absl::StatusCodeToString(code)})
        .Increment();
  }
  void Dropped() {
    if (dropped_ != nullptr) dropped_->Increment();
  }

 private:
  metrics::Family<metrics::Counter>* calls_ = nullptr;
  metrics::Counter* dropped_ = nullptr;
};

// Relays a session's responses to the gRPC stream. Writes are serialized; a
// Send blocks while the client's flow-control window is full, which pushes
// back on the session instead of queueing without bound.
class GrpcStreamSink final : public StreamSink {
 public:
  GrpcStreamSink(
      grpc::ServerReaderWriter<StreamSyncResponse, StreamSyncRequest>* stream,
      CallMetrics* metrics)
      : stream_(stream), metrics_(metrics) {}

  bool Send(const StreamSyncResponse& response) override {
    absl::MutexLock lock(&mu_);
    if (!closed_ && stream_->Write(response)) return true;
    if (!closed_) {
      LOG(WARNING) << "gRPC StreamSync: client stream broke; dropping "
                      "response and later ones";
    }
    closed_ = true;
    metrics_->Dropped();
    return false;
  }

  // After Close, Send drops everything; returns once no Write is running.
  void Close() {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }

 private:
  grpc::ServerReaderWriter<StreamSyncResponse, StreamSyncRequest>* const
      stream_;
  CallMetrics* const metrics_;
  absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

class SyncServiceImpl final : public v1::SyncService::Service {
 public:
  SyncServiceImpl(SyncHandler* handler, CallMetrics* metrics)
      : handler_(handler), metrics_(metrics) {}

  // Lets calls name the TLS client instead of the relay socket.
  void set_terminator(const TlsTerminator* terminator) {
    terminator_.store(terminator);
  }

  grpc::Status SyncMetrics(grpc::ServerContext* context,
                           const v1::SyncMetricsRequest* request,
                           v1::SyncMetricsResponse* response) override {
    return Unary(
        "SyncMetrics", context,
        [&](const CallContext& call) {
          return handler_->SyncMetrics(call, *request);
        },
        response);
  }

  grpc::Status SyncLogs(grpc::ServerContext* context,
                        const v1::SyncLogsRequest* request,
                        v1::SyncLogsResponse* response) override {
    return Unary(
        "SyncLogs", context,
        [&](const CallContext& call) {
          return handler_->SyncLogs(call, *request);
        },
        response);
  }

  grpc::Status GetSyncConfig(grpc::ServerContext* context,
                             const v1::GetSyncConfigRequest* request,
                             v1::GetSyncConfigResponse* response) override {
    return Unary(
        "GetSyncConfig", context,
        [&](const CallContext& call) {
          return handler_->GetSyncConfig(call, *request);
        },
        response);
  }

  grpc::Status SyncEvents(grpc::ServerContext* context,
                          const v1::SyncEventsRequest* request,
                          v1::SyncEventsResponse* response) override {
    return Unary(
        "SyncEvents", context,
        [&](const CallContext& call) {
          return handler_->SyncEvents(call, *request);
        },
        response);
  }

  grpc::Status UpdateDeviceInfo(
      grpc::ServerContext* context, const v1::UpdateDeviceInfoRequest* request,
      v1::UpdateDeviceInfoResponse* response) override {
    return Unary(
        "UpdateDeviceInfo", context,
        [&](const CallContext& call) {
          return handler_->UpdateDeviceInfo(call, *request);
        },
        response);
  }

  grpc::Status StreamSync(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<StreamSyncResponse, StreamSyncRequest>* stream)
      override {
    GrpcStreamSink sink(stream, metrics_);
    absl::StatusOr<std::unique_ptr<StreamSession>> session =
        handler_->OpenStream(MakeCallContext(context), &sink);
    if (!session.ok()) {
      sink.Close();
      return Finish("StreamSync", context, session.status());
    }
    absl::Status status;
    StreamSyncRequest request;
    while (stream->Read(&request)) {
      status = (*session)->OnRequest(request);
      if (!status.ok()) break;
      request.Clear();
    }
    // Finish runs exactly once, also after a failed message or a broken call.
    absl::Status finished = (*session)->Finish();
    sink.Close();
    if (status.ok()) {
      status = context->IsCancelled()
                   ? absl::CancelledError("client cancelled the stream")
                   : finished;
    }
    return Finish("StreamSync", context, status);
  }

 private:
  template <typename Response, typename Call>
  grpc::Status Unary(absl::string_view method, grpc::ServerContext* context,
                     Call call, Response* response) {
    absl::StatusOr<Response> result = call(MakeCallContext(context));
    if (result.ok()) *response = *std::move(result);
    return Finish(method, context, result.status());
  }

  grpc::Status Finish(absl::string_view method, grpc::ServerContext* context,
                      const absl::Status& status) {
    metrics_->Finished(method, status.code());
    if (std::optional<absl::Duration> retry = GetRetryAfter(status)) {
      context->AddTrailingMetadata(
          "retry-after-ms", absl::StrCat(absl::ToInt64Milliseconds(*retry)));
    }
    if (IsBatchRejected(status)) {
      context->AddTrailingMetadata(kVerdictMetadataKey, kVerdictRejected);
    }
    return ToGrpcStatus(status);
  }

  CallContext MakeCallContext(grpc::ServerContext* context) const {
    CallContext call;
    call.protocol = "grpc";
    const auto& metadata = context->client_metadata();
    auto key = metadata.find("x-api-key");
    if (key != metadata.end()) {
      call.api_key.assign(key->second.data(), key->second.size());
    }
    call.peer = context->peer();
    // gRPC writes TCP peers as "ipv4:1.2.3.4:5" / "ipv6:[::1]:5"; the other
    // front ends use the bare address.
    for (absl::string_view prefix : {"ipv4:", "ipv6:"}) {
      if (absl::StartsWith(call.peer, prefix)) {
        call.peer.erase(0, prefix.size());
      }
    }
    // Connections relayed from the TLS terminator show up as "fd:N" in gRPC.
    const TlsTerminator* terminator = terminator_.load();
    if (terminator != nullptr && absl::StartsWith(call.peer, "fd:")) {
      int fd;
      if (absl::SimpleAtoi(absl::string_view(call.peer).substr(3), &fd)) {
        std::string tcp_peer = terminator->PeerOf(fd);
        if (!tcp_peer.empty()) call.peer = std::move(tcp_peer);
      }
    }
    auto deadline = context->deadline();
    if (deadline != std::chrono::system_clock::time_point::max()) {
      call.deadline = absl::FromChrono(deadline);
    }
    return call;
  }

  SyncHandler* const handler_;
  CallMetrics* const metrics_;
  std::atomic<const TlsTerminator*> terminator_{nullptr};
};

class GrpcFrontEndImpl final : public GrpcFrontEnd {
 public:
  GrpcFrontEndImpl(const GrpcFrontEndOptions& options, SyncHandler* handler)
      : options_(options),
        clock_(options.clock != nullptr ? options.clock : Clock::Real()),
        handler_(handler),
        metrics_(options.metrics) {}

  ~GrpcFrontEndImpl() override { Shutdown(); }

  absl::Status Init() {
    absl::StatusOr<HostPort> address = ParseHostPort(options_.address);
    if (!address.ok()) return address.status();
    SslCtxPtr ssl_ctx;
    if (!options_.insecure) {
      absl::StatusOr<SslCtxPtr> ctx =
          NewTls13ServerContext(options_.tls_cert_file, options_.tls_key_file,
                                AlpnPolicy::kRequireH2);
      if (!ctx.ok()) return ctx.status();
      ssl_ctx = *std::move(ctx);
    }

    grpc::EnableDefaultHealthCheckService(true);
    service_ = std::make_unique<SyncServiceImpl>(handler_, &metrics_);
    grpc::ServerBuilder builder;
    builder.SetMaxReceiveMessageSize(static_cast<int>(std::min<int64_t>(
        options_.max_receive_message_bytes, std::numeric_limits<int>::max())));
    // Without this a second server could bind the same port (SO_REUSEPORT).
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    if (options_.max_threads > 0) {
      grpc::ResourceQuota quota("fleetd-grpc-front-end");
      quota.SetMaxThreads(options_.max_threads);
      builder.SetResourceQuota(quota);
    }
    int bound_port = 0;
    if (options_.insecure) {
      builder.AddListeningPort(FormatHostPort(address->host, address->port),
                               grpc::InsecureServerCredentials(), &bound_port);
    }
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || (options_.insecure && bound_port == 0)) {
      server_.reset();
      return absl::UnavailableError(
          absl::StrCat("cannot start the gRPC server on ", options_.address));
    }
    if (options_.insecure) {
      port_ = bound_port;
      LOG(WARNING) << "gRPC front end serving PLAINTEXT on port " << port_
                   << " (insecure mode)";
      return absl::OkStatus();
    }

    TlsTerminator::Options tls;
    tls.handshake_timeout = options_.tls_handshake_timeout;
    tls.max_connections = options_.max_connections;
    tls.clock = clock_;
    tls.metrics = options_.metrics;
    tls.name = "grpc";
    grpc::Server* server = server_.get();
    absl::StatusOr<std::unique_ptr<TlsTerminator>> terminator =
        TlsTerminator::Start(
            *address, std::move(ssl_ctx), tls,
            [server](int fd) { grpc::AddInsecureChannelFromFd(server, fd); });
    if (!terminator.ok()) {
      server_->Shutdown();
      server_->Wait();
      server_.reset();
      return terminator.status();
    }
    terminator_ = *std::move(terminator);
    service_->set_terminator(terminator_.get());
    port_ = terminator_->port();
    LOG(INFO) << "gRPC front end serving TLS 1.3 on port " << port_;
    return absl::OkStatus();
  }

  int port() const override { return port_; }

  void Shutdown() override {
    absl::MutexLock lock(&shutdown_mu_);
    if (server_ == nullptr) return;
    if (terminator_ != nullptr) terminator_->StopAccepting();
    if (auto* health = server_->GetHealthCheckService()) health->Shutdown();
    absl::Time deadline = clock_->Now() + options_.shutdown_grace;
    server_->Shutdown(absl::ToChronoTime(deadline));
    if (terminator_ != nullptr) terminator_->Shutdown();
    server_->Wait();
    server_.reset();
    terminator_.reset();
  }

 private:
  const GrpcFrontEndOptions options_;
  Clock* const clock_;
  SyncHandler* const handler_;
  CallMetrics metrics_;
  std::unique_ptr<SyncServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<TlsTerminator> terminator_;
  int port_ = 0;
  absl::Mutex shutdown_mu_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<GrpcFrontEnd>> GrpcFrontEnd::Start(
    const GrpcFrontEndOptions& options, SyncHandler* handler) {
  if (handler == nullptr) {
    return absl::InvalidArgumentError("gRPC front end needs a SyncHandler");
  }
  bool has_cert = !options.tls_cert_file.empty();
  bool has_key = !options.tls_key_file.empty();
  if (options.insecure && (has_cert || has_key)) {
    return absl::InvalidArgumentError(
        "gRPC front end: insecure (plaintext) mode and a TLS certificate were "
        "both configured; choose one");
  }
  if (!options.insecure && !(has_cert && has_key)) {
    return absl::InvalidArgumentError(
        "gRPC front end: TLS needs both a certificate chain and a private key "
        "(plaintext only with the explicit insecure setting)");
  }
  if (options.max_receive_message_bytes <= 0 || options.max_connections <= 0) {
    return absl::InvalidArgumentError(
        "gRPC front end: max_receive_message_bytes and max_connections must "
        "be positive");
  }
  auto front_end = std::make_unique<GrpcFrontEndImpl>(options, handler);
  absl::Status status = front_end->Init();
  if (!status.ok()) return status;
  return std::unique_ptr<GrpcFrontEnd>(std::move(front_end));
}

void AddGrpcFrontEndSettings(Settings& settings, GrpcFrontEndOptions* options) {
  settings
      .String("FLEET_GRPC_ADDR", "grpc-addr",
              "Address the gRPC front end listens on (host:port).",
              &options->address)
      .String("FLEET_GRPC_TLS_CERT", "grpc-tls-cert",
              "PEM certificate chain for the gRPC front end (TLS 1.3 only).",
              &options->tls_cert_file)
      .String("FLEET_GRPC_TLS_KEY", "grpc-tls-key",
              "PEM private key for the gRPC front end.", &options->tls_key_file)
      .Bool("FLEET_GRPC_INSECURE", "grpc-insecure",
            "Serve gRPC in plaintext (development only).", &options->insecure)
      .Bytes("FLEET_GRPC_MAX_RECV_BYTES", "grpc-max-recv-bytes",
             "Largest gRPC request message accepted.",
             &options->max_receive_message_bytes)
      .Int32("FLEET_GRPC_MAX_CONNECTIONS", "grpc-max-connections",
             "Most TLS connections the gRPC front end serves at once.",
             &options->max_connections, 1, 1 << 20)
      .Int32("FLEET_GRPC_MAX_THREADS", "grpc-max-threads",
             "Upper bound on gRPC call threads (0: grpc++ default).",
             &options->max_threads, 0, 1 << 16);
}

}  // namespace fleetd::server::rpc
