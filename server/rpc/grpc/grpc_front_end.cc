#include "server/rpc/grpc/grpc_front_end.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/concurrency/worker_pool.h"
#include "common/status/error_class.h"
#include "common/status/grpc_status.h"
#include "common/status/retry_after.h"
#include "fleetd/v1/sync.grpc.pb.h"
#include "glog/logging.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
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
    stalled_ = &registry
                    ->CounterFamily("fleetd_rpc_stream_stalled_total",
                                    "Streams cancelled because the client "
                                    "read no response for the send timeout.",
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
  void Dropped(int n = 1) {
    if (dropped_ != nullptr && n > 0) dropped_->Increment(n);
  }
  void Stalled() {
    if (stalled_ != nullptr) stalled_->Increment();
  }

 private:
  metrics::Family<metrics::Counter>* calls_ = nullptr;
  metrics::Counter* dropped_ = nullptr;
  metrics::Counter* stalled_ = nullptr;
};

// What the service needs from the front end, shared by every call.
struct ServiceParts {
  SyncHandler* handler;
  WorkerPool* workers;
  CallMetrics* metrics;
  Clock* clock;
  absl::Duration overload_retry_after;
  size_t stream_send_queue;
  absl::Duration stream_send_timeout;
};

// Adds the handler status's wire extras (retry hint, verdict) as trailing
// metadata, counts the call, and returns the gRPC status to finish with.
// REQUIRES: called once per call, before its Finish.
grpc::Status FinishStatus(CallMetrics* metrics, absl::string_view method,
                          grpc::ServerContextBase* context,
                          const absl::Status& status) {
  metrics->Finished(method, status.code());
  if (std::optional<absl::Duration> retry = GetRetryAfter(status)) {
    context->AddTrailingMetadata(
        "retry-after-ms", absl::StrCat(absl::ToInt64Milliseconds(*retry)));
  }
  if (IsBatchRejected(status)) {
    context->AddTrailingMetadata(kVerdictMetadataKey, kVerdictRejected);
  }
  return ToGrpcStatus(status);
}

// The answer to a call the workers did not take: RESOURCE_EXHAUSTED with a
// retry hint when their queue is full, UNAVAILABLE when they have stopped.
absl::Status Refusal(const ServiceParts& parts, absl::string_view method,
                     const absl::Status& submitted) {
  if (absl::IsResourceExhausted(submitted)) {
    LOG_EVERY_T(WARNING, 1)
        << "gRPC " << method << ": refusing a call, " << submitted.message();
    return WithRetryAfter(
        absl::ResourceExhaustedError(
            "server overloaded: every gRPC worker is busy and the call queue "
            "is full"),
        parts.overload_retry_after);
  }
  return absl::UnavailableError("server shutting down");
}

// One StreamSync call, from its start to OnDone (which deletes it).
//
// Work that may block (OpenStream, OnRequest, Finish of the session) runs as
// worker-pool tasks, one at a time per stream: Open, then one HandleMessage
// per message, then EndSession; the next read starts only at the end of a
// message's task, so a stream has at most one task queued or running, and
// `session_` and `request_` are touched by one thread at a time without a
// lock. gRPC's reactions (OnReadDone, OnWriteDone, OnCancel) only submit tasks
// or move the write queue along.
//
// The call ends with Finish only after the session's Finish returned (no more
// Sends) and the write queue drained; no task touches the reactor after
// calling Finish, since OnDone may run at once.
class StreamReactor final
    : public grpc::ServerBidiReactor<StreamSyncRequest, StreamSyncResponse>,
      public StreamSink {
 public:
  StreamReactor(const ServiceParts& parts, grpc::CallbackServerContext* context,
                CallContext call)
      : parts_(parts), context_(context), call_(std::move(call)) {}

  // Queues the session's opening; the reactor may be used before gRPC binds
  // it (grpc++ keeps the operations until then).
  void Start() {
    absl::Status submitted = parts_.workers->Submit(
        [this](absl::Status run) { Open(std::move(run)); });
    if (!submitted.ok()) {
      FinishCall(Refusal(parts_, kMethod, submitted));
    }
  }

  // StreamSink. Blocks while `stream_send_queue` responses wait (see the
  // header); false once the stream is closed.
  bool Send(const StreamSyncResponse& response) override {
    const StreamSyncResponse* to_write = nullptr;
    Room room;
    {
      absl::MutexLock lock(&mu_);
      room = WaitForRoomLocked();
      if (room == Room::kRoom) {
        pending_.push_back(response);
        if (!writing_) {
          writing_ = true;
          to_write = &pending_.front();
        }
      }
    }
    if (room != Room::kRoom) {
      parts_.metrics->Dropped();
      // Outside the lock: gRPC may run OnCancel on this thread.
      if (room == Room::kTimedOut) context_->TryCancel();
      return false;
    }
    // A std::deque keeps its elements in place while others are appended, and
    // the front is popped only in OnWriteDone.
    if (to_write != nullptr) StartWrite(to_write);
    return true;
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The client half-closed, or the call broke or was cancelled.
      SubmitEnd(absl::OkStatus());
      return;
    }
    absl::Status submitted = parts_.workers->Submit(
        [this](absl::Status run) { HandleMessage(std::move(run)); });
    if (!submitted.ok()) SubmitEnd(Refusal(parts_, kMethod, submitted));
  }

  void OnWriteDone(bool ok) override {
    const StreamSyncResponse* to_write = nullptr;
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      pending_.pop_front();
      if (!ok) {
        // The call broke or was cancelled: nothing more will be written.
        if (!closed_) {
          LOG(WARNING) << "gRPC StreamSync from " << call_.peer
                       << ": client stream broke; dropping " << pending_.size()
                       << " queued responses and later ones";
        }
        parts_.metrics->Dropped(static_cast<int>(pending_.size()));
        pending_.clear();
        CloseLocked();
      }
      if (!pending_.empty()) {
        to_write = &pending_.front();
      } else {
        writing_ = false;
        finish = TakeFinishLocked();
      }
      WakeSendersLocked();
    }
    if (to_write != nullptr) StartWrite(to_write);
    if (finish.has_value()) Finish(*std::move(finish));
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    CloseLocked();
  }

  void OnDone() override { delete this; }

 private:
  static constexpr absl::string_view kMethod = "StreamSync";

  // Task: opens the session and starts reading.
  void Open(absl::Status run) {
    if (!run.ok()) {
      FinishCall(absl::UnavailableError("server shutting down"));
      return;
    }
    if (IsCancelled()) {
      FinishCall(absl::CancelledError("client cancelled the stream"));
      return;
    }
    absl::StatusOr<std::unique_ptr<StreamSession>> session =
        parts_.handler->OpenStream(call_, this);
    if (!session.ok()) {
      FinishCall(session.status());
      return;
    }
    session_ = *std::move(session);
    StartRead(&request_);
  }

  // Task: hands one message to the session, then reads the next.
  void HandleMessage(absl::Status run) {
    if (!run.ok()) {
      EndSession(absl::UnavailableError("server shutting down"));
      return;
    }
    if (IsCancelled()) {
      // No ack could reach the client; it sends the batch again.
      EndSession(absl::OkStatus());
      return;
    }
    absl::Status status = session_->OnRequest(request_);
    request_.Clear();
    if (!status.ok()) {
      EndSession(status);
      return;
    }
    StartRead(&request_);
  }

  // Queues EndSession. It must run, whatever the queue holds: the session is
  // open and its Finish is owed.
  void SubmitEnd(absl::Status status) {
    absl::Status submitted = parts_.workers->Submit(
        [this, status](absl::Status run) { EndSession(status); },
        WorkerPool::Admission::kAlways);
    if (!submitted.ok()) {
      // Only when the workers stopped before the server, which the front end
      // never does; blocking a gRPC thread beats leaking the call.
      LOG(ERROR) << "gRPC StreamSync: workers stopped; finishing inline";
      EndSession(status);
    }
  }

  // Finishes the session exactly once, then the call: with `status` when it
  // is an error, else CANCELLED for a cancelled call, else the session's
  // verdict.
  void EndSession(absl::Status status) {
    absl::Status finished = session_->Finish();
    session_.reset();
    if (status.ok()) {
      status = IsCancelled()
                   ? absl::CancelledError("client cancelled the stream")
                   : finished;
    }
    FinishCall(status);
  }

  // Ends the call with `status` once the queued responses are written. The
  // caller must not touch the reactor afterwards.
  void FinishCall(const absl::Status& status) {
    grpc::Status wire = FinishStatus(parts_.metrics, kMethod, context_, status);
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      CloseLocked();
      final_status_ = std::move(wire);
      if (!writing_) finish = TakeFinishLocked();
    }
    if (finish.has_value()) Finish(*std::move(finish));
  }

  bool IsCancelled() {
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_) return true;
    }
    return context_->IsCancelled();
  }

  // Returns the status to Finish with, once: when the call has one and no
  // write is pending.
  std::optional<grpc::Status> TakeFinishLocked()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!final_status_.has_value() || finish_started_) return std::nullopt;
    finish_started_ = true;
    return final_status_;
  }

  // No more Sends are accepted; blocked ones give up.
  void CloseLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    closed_ = true;
    WakeSendersLocked();
  }

  void WakeSendersLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (Wakeup* waiter : waiters_) waiter->Notify();
  }

  enum class Room { kRoom, kClosed, kTimedOut };

  // Waits, with mu_ released, while the write queue is full. kClosed when the
  // stream is closed or closes meanwhile; kTimedOut when no room appeared
  // within the send timeout: the stream is then closed, and the caller cancels
  // the call (its pending write then completes with !ok, and its read too).
  Room WaitForRoomLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::optional<absl::Time> deadline;
    while (!closed_ && pending_.size() > parts_.stream_send_queue) {
      absl::Time now = parts_.clock->MonotonicNow();
      if (!deadline.has_value()) deadline = now + parts_.stream_send_timeout;
      if (now >= *deadline) {
        LOG(WARNING) << "gRPC StreamSync from " << call_.peer
                     << ": client read no response for "
                     << parts_.stream_send_timeout << "; cancelling the stream";
        parts_.metrics->Stalled();
        CloseLocked();
        return Room::kTimedOut;
      }
      Wakeup wakeup;
      waiters_.push_back(&wakeup);
      mu_.Unlock();
      parts_.clock->SleepUntil(*deadline, &wakeup);
      mu_.Lock();
      waiters_.erase(std::find(waiters_.begin(), waiters_.end(), &wakeup));
    }
    return closed_ ? Room::kClosed : Room::kRoom;
  }

  const ServiceParts& parts_;
  grpc::CallbackServerContext* const context_;
  const CallContext call_;
  // Touched only by the stream's one task at a time (see the class comment).
  std::unique_ptr<StreamSession> session_;
  StreamSyncRequest request_;

  absl::Mutex mu_;
  // Responses not yet written; the front one is being written when writing_.
  std::deque<StreamSyncResponse> pending_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  // Sends are refused: the call is ending, broke or was cancelled.
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Wakeup*> waiters_ ABSL_GUARDED_BY(mu_);  // blocked Sends
  std::optional<grpc::Status> final_status_ ABSL_GUARDED_BY(mu_);
  bool finish_started_ ABSL_GUARDED_BY(mu_) = false;
};

class SyncServiceImpl final : public v1::SyncService::CallbackService {
 public:
  explicit SyncServiceImpl(const ServiceParts& parts) : parts_(parts) {}

  // Lets calls name the TLS client instead of the relay socket.
  void set_terminator(const TlsTerminator* terminator) {
    terminator_.store(terminator);
  }

  grpc::ServerUnaryReactor* SyncMetrics(
      grpc::CallbackServerContext* context,
      const v1::SyncMetricsRequest* request,
      v1::SyncMetricsResponse* response) override {
    return Unary("SyncMetrics", context, response,
                 [this, request](const CallContext& call, auto done) {
                   parts_.handler->SyncMetricsAsync(call, *request,
                                                    std::move(done));
                 });
  }

  grpc::ServerUnaryReactor* SyncLogs(grpc::CallbackServerContext* context,
                                     const v1::SyncLogsRequest* request,
                                     v1::SyncLogsResponse* response) override {
    return Unary("SyncLogs", context, response,
                 [this, request](const CallContext& call, auto done) {
                   parts_.handler->SyncLogsAsync(call, *request,
                                                 std::move(done));
                 });
  }

  grpc::ServerUnaryReactor* GetSyncConfig(
      grpc::CallbackServerContext* context,
      const v1::GetSyncConfigRequest* request,
      v1::GetSyncConfigResponse* response) override {
    return Unary(
        "GetSyncConfig", context, response,
        [this, request](const CallContext& call, auto done) {
          std::move(done)(parts_.handler->GetSyncConfig(call, *request));
        });
  }

  grpc::ServerUnaryReactor* SyncEvents(
      grpc::CallbackServerContext* context,
      const v1::SyncEventsRequest* request,
      v1::SyncEventsResponse* response) override {
    return Unary("SyncEvents", context, response,
                 [this, request](const CallContext& call, auto done) {
                   parts_.handler->SyncEventsAsync(call, *request,
                                                   std::move(done));
                 });
  }

  grpc::ServerUnaryReactor* UpdateDeviceInfo(
      grpc::CallbackServerContext* context,
      const v1::UpdateDeviceInfoRequest* request,
      v1::UpdateDeviceInfoResponse* response) override {
    return Unary(
        "UpdateDeviceInfo", context, response,
        [this, request](const CallContext& call, auto done) {
          std::move(done)(parts_.handler->UpdateDeviceInfo(call, *request));
        });
  }

  grpc::ServerBidiReactor<StreamSyncRequest, StreamSyncResponse>* StreamSync(
      grpc::CallbackServerContext* context) override {
    auto* reactor =
        new StreamReactor(parts_, context, MakeCallContext(context));
    reactor->Start();
    return reactor;
  }

 private:
  // Runs `call` on a worker and finishes the call with the outcome it hands
  // to its Reply, from whichever thread that is (the batch methods answer
  // from the flusher that finished the batch: the worker does not wait for
  // backends). The request and response stay valid until Finish (grpc++ owns
  // them).
  template <typename Response, typename Call>
  grpc::ServerUnaryReactor* Unary(absl::string_view method,
                                  grpc::CallbackServerContext* context,
                                  Response* response, Call call) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    absl::Status submitted = parts_.workers->Submit(
        [this, method, context, reactor, response, call = std::move(call),
         call_context = MakeCallContext(context)](absl::Status run) {
          absl::Status status;
          if (!run.ok()) {
            status = absl::UnavailableError("server shutting down");
          } else if (context->IsCancelled()) {
            // The client gave up (or its deadline passed) while the call
            // waited for a worker: its answer could not arrive anyway.
            status = absl::CancelledError("call cancelled before it ran");
          } else {
            call(call_context,
                 Reply<Response>([this, method, context, reactor,
                                  response](absl::StatusOr<Response> result) {
                   if (result.ok()) *response = *std::move(result);
                   reactor->Finish(FinishStatus(parts_.metrics, method, context,
                                                result.status()));
                 }));
            return;
          }
          reactor->Finish(
              FinishStatus(parts_.metrics, method, context, status));
        });
    if (!submitted.ok()) {
      reactor->Finish(FinishStatus(parts_.metrics, method, context,
                                   Refusal(parts_, method, submitted)));
    }
    return reactor;
  }

  CallContext MakeCallContext(grpc::ServerContextBase* context) const {
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

  const ServiceParts& parts_;
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

    WorkerPool::Options pool;
    pool.name = "grpc";
    pool.threads = options_.workers;
    if (options_.max_threads > 0 && options_.max_threads < pool.threads) {
      pool.threads = options_.max_threads;
    }
    if (options_.max_threads > 0) {
      LOG(WARNING) << "FLEET_GRPC_MAX_THREADS is deprecated (the gRPC front "
                      "end runs calls on FLEET_GRPC_WORKERS threads); it now "
                      "caps the workers: "
                   << pool.threads;
    }
    pool.max_queued = options_.max_queued_calls;
    pool.metrics = options_.metrics;
    absl::StatusOr<std::unique_ptr<WorkerPool>> workers =
        WorkerPool::Start(pool);
    if (!workers.ok()) return workers.status();
    workers_ = *std::move(workers);

    parts_.handler = handler_;
    parts_.workers = workers_.get();
    parts_.metrics = &metrics_;
    parts_.clock = clock_;
    parts_.overload_retry_after = options_.overload_retry_after;
    parts_.stream_send_queue = static_cast<size_t>(options_.stream_send_queue);
    parts_.stream_send_timeout = options_.stream_send_timeout;

    grpc::EnableDefaultHealthCheckService(true);
    service_ = std::make_unique<SyncServiceImpl>(parts_);
    grpc::ServerBuilder builder;
    builder.SetMaxReceiveMessageSize(static_cast<int>(std::min<int64_t>(
        options_.max_receive_message_bytes, std::numeric_limits<int>::max())));
    // Without this a second server could bind the same port (SO_REUSEPORT).
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    int bound_port = 0;
    if (options_.insecure) {
      builder.AddListeningPort(FormatHostPort(address->host, address->port),
                               grpc::InsecureServerCredentials(), &bound_port);
    }
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || (options_.insecure && bound_port == 0)) {
      server_.reset();
      workers_->Shutdown();
      return absl::UnavailableError(
          absl::StrCat("cannot start the gRPC server on ", options_.address));
    }
    if (options_.insecure) {
      port_ = bound_port;
      LOG(WARNING) << "gRPC front end serving PLAINTEXT on port " << port_
                   << " (insecure mode), " << pool.threads << " workers";
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
      workers_->Shutdown();
      return terminator.status();
    }
    terminator_ = *std::move(terminator);
    service_->set_terminator(terminator_.get());
    port_ = terminator_->port();
    LOG(INFO) << "gRPC front end serving TLS 1.3 on port " << port_ << ", "
              << pool.threads << " workers";
    return absl::OkStatus();
  }

  int port() const override { return port_; }

  void Shutdown() override {
    absl::MutexLock lock(&shutdown_mu_);
    if (server_ == nullptr) return;
    if (terminator_ != nullptr) terminator_->StopAccepting();
    if (auto* health = server_->GetHealthCheckService()) health->Shutdown();
    absl::Time deadline = clock_->Now() + options_.shutdown_grace;
    // Returns once every call has finished, which needs the workers: the
    // queued calls run (or, cancelled, end at once) and the streams' sessions
    // finish on them.
    server_->Shutdown(absl::ToChronoTime(deadline));
    if (terminator_ != nullptr) terminator_->Shutdown();
    server_->Wait();
    server_.reset();
    terminator_.reset();
    // Nothing is queued any more: every call ended above.
    workers_->Shutdown(WorkerPool::ShutdownMode::kRunQueued);
  }

 private:
  const GrpcFrontEndOptions options_;
  Clock* const clock_;
  SyncHandler* const handler_;
  CallMetrics metrics_;
  // Declared before the server so that they outlive it.
  std::unique_ptr<WorkerPool> workers_;
  ServiceParts parts_{};
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
  if (options.workers < 1 || options.max_queued_calls < 0 ||
      options.stream_send_queue < 0 || options.max_threads < 0) {
    return absl::InvalidArgumentError(
        "gRPC front end: workers must be positive and max_queued_calls, "
        "stream_send_queue and max_threads not negative");
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
      .Int32("FLEET_GRPC_WORKERS", "grpc-workers",
             "Threads running gRPC calls (each call waiting for a backend "
             "commit occupies one).",
             &options->workers, 1, 1 << 16)
      .Int("FLEET_GRPC_QUEUE", "grpc-queue",
           "gRPC calls that may wait for a worker before RESOURCE_EXHAUSTED.",
           &options->max_queued_calls, 0, int64_t{1} << 24)
      .Duration("FLEET_GRPC_STREAM_SEND_TIMEOUT", "grpc-stream-send-timeout",
                "How long a StreamSync response waits for a client that "
                "stopped reading before the stream is cancelled.",
                &options->stream_send_timeout)
      .Int32("FLEET_GRPC_MAX_THREADS", "grpc-max-threads",
             "Deprecated: use FLEET_GRPC_WORKERS (when set, caps it).",
             &options->max_threads, 0, 1 << 16);
}

}  // namespace fleetd::server::rpc
