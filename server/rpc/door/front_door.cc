#include "server/rpc/door/front_door.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/concurrency/timer_queue.h"
#include "common/concurrency/worker_pool.h"
#include "glog/logging.h"
#include "server/rpc/door/cors.h"
#include "server/rpc/door/health.h"
#include "server/rpc/door/sync_service_handler.h"
#include "server/rpc/http/server.h"
#include "server/rpc/net/tls_context.h"

namespace fleetd::server::rpc {
namespace {

class FrontDoorImpl final : public FrontDoor {
 public:
  FrontDoorImpl(FrontDoorOptions options, std::unique_ptr<TimerQueue> timers,
                std::unique_ptr<WorkerPool> workers,
                std::unique_ptr<http::HttpServer> server)
      : timers_(std::move(timers)),
        options_(std::move(options)),
        workers_(std::move(workers)),
        server_(std::move(server)),
        ports_(server_->ports()) {}
  ~FrontDoorImpl() override { Shutdown(); }

  int port() const override { return ports_.front(); }
  std::vector<int> ports() const override { return ports_; }
  size_t connections() const override {
    absl::MutexLock lock(&mu_);
    return server_ != nullptr ? server_->connections() : 0;
  }

  void Shutdown() override {
    absl::MutexLock lock(&mu_);
    if (server_ == nullptr) return;
    // Connections first (calls in flight answer within the grace), then the
    // workers: queued calls whose connection is gone are refused.
    server_->Shutdown(options_.shutdown_grace);
    workers_->Shutdown(WorkerPool::ShutdownMode::kRejectQueued);
    server_.reset();
  }

 private:
  // First, so it goes last: every call may still cancel its timer.
  std::unique_ptr<TimerQueue> timers_;
  const FrontDoorOptions options_;
  std::unique_ptr<WorkerPool> workers_;
  mutable absl::Mutex mu_;
  std::unique_ptr<http::HttpServer> server_ ABSL_GUARDED_BY(mu_);
  const std::vector<int> ports_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<FrontDoor>> FrontDoor::Start(
    const FrontDoorOptions& options, SyncHandler* handler) {
  if (handler == nullptr) {
    return absl::InvalidArgumentError("front door: no handler");
  }
  SslCtxPtr tls;
  if (!options.insecure) {
    if (options.tls_cert_file.empty() || options.tls_key_file.empty()) {
      return absl::InvalidArgumentError(
          "front door: TLS needs a certificate and a key (or insecure mode)");
    }
    absl::StatusOr<SslCtxPtr> ctx = NewTls13ServerContext(
        options.tls_cert_file, options.tls_key_file, AlpnPolicy::kH2OrHttp11);
    if (!ctx.ok()) return ctx.status();
    tls = *std::move(ctx);
  }

  auto timers = std::make_unique<TimerQueue>(
      options.clock != nullptr ? options.clock : Clock::Real());

  WorkerPool::Options pool;
  pool.name = "door";
  pool.threads = options.workers;
  pool.max_queued = options.max_queued_calls;
  pool.metrics = options.metrics;
  absl::StatusOr<std::unique_ptr<WorkerPool>> workers = WorkerPool::Start(pool);
  if (!workers.ok()) return workers.status();

  DoorOptions door;
  door.max_message_bytes = options.max_message_bytes;
  door.workers = workers->get();
  door.clock = options.clock;
  door.metrics = options.metrics;
  door.timers = timers.get();

  http::ServerOptions http;
  http.address = options.address;
  http.more_addresses = options.more_addresses;
  http.io_threads =
      options.io_threads > 0
          ? options.io_threads
          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  http.tls = tls.get();  // the server takes its own reference
  http.max_connections = options.max_connections;
  http.idle_timeout = options.idle_timeout;
  http.handler = door::WithCors(
      {options.cors_allowed_origins, absl::Hours(2)},
      door::WithGrpcHealth(NewSyncServiceHandler(handler, door)));
  absl::StatusOr<std::unique_ptr<http::HttpServer>> server =
      http::HttpServer::Start(std::move(http));
  if (!server.ok()) {
    (*workers)->Shutdown(WorkerPool::ShutdownMode::kRejectQueued);
    return server.status();
  }
  LOG(INFO) << "front door: gRPC, gRPC-Web and Connect on port"
            << ((*server)->ports().size() > 1 ? "s " : " ")
            << absl::StrJoin((*server)->ports(), ", ")
            << (options.insecure ? " (plaintext)" : "") << ", " << pool.threads
            << " workers";
  return std::unique_ptr<FrontDoor>(new FrontDoorImpl(
      options, std::move(timers), *std::move(workers), *std::move(server)));
}

}  // namespace fleetd::server::rpc
