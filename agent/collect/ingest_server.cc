#include "agent/collect/ingest_server.h"

#include <sys/socket.h>

#include <atomic>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/collect/collect_util.h"
#include "agent/collect/ingest_formats.h"
#include "common/status/retryable.h"
#include "glog/logging.h"
#include "httplib.h"

namespace fleetd::agent {
namespace {

enum class Kind { kMetrics, kLogs };

const char* KindName(Kind kind) {
  return kind == Kind::kMetrics ? "metrics" : "logs";
}

bool IsLoopbackHost(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

}  // namespace

void AddIngestSettings(Settings& settings, IngestServerOptions* options) {
  settings
      .String("FLEET_INGEST_ADDR", "ingest-addr",
              "Local ingest endpoint (POST /v1/metrics, /v1/logs), host:port; "
              "unauthenticated, keep it on loopback",
              &options->address)
      .Bytes("FLEET_INGEST_MAX_BODY_BYTES", "ingest-max-body-bytes",
             "Largest request body the local ingest endpoint accepts",
             &options->max_body_bytes);
}

struct IngestServer::Impl {
  Impl(const IngestServerOptions& o, Storage* s, Clock* c, metrics::Registry* r)
      : options(o), storage(s), clock(c) {
    if (r == nullptr) {
      owned_registry = std::make_unique<metrics::Registry>();
      r = owned_registry.get();
    }
    requests = &r->CounterFamily("fleetd_ingest_requests_total",
                                 "Local ingest requests by response code",
                                 {"kind", "code"});
    accepted = &r->CounterFamily("fleetd_ingest_records_accepted_total",
                                 "Records stored from local ingest requests",
                                 {"kind"});
    rejected = &r->CounterFamily(
        "fleetd_ingest_requests_rejected_total",
        "Local ingest requests answered with an error, by reason",
        {"kind", "reason"});
  }

  void Reply(Kind kind, httplib::Response& res, int code,
             const std::string& reason, const std::string& body) {
    res.status = code;
    if (!body.empty()) res.set_content(body + "\n", "text/plain");
    requests->WithLabels({KindName(kind), std::to_string(code)}).Increment();
    if (!reason.empty()) {
      rejected->WithLabels({KindName(kind), reason}).Increment();
    }
  }

  void Handle(Kind kind, const httplib::Request& req, httplib::Response& res,
              const httplib::ContentReader& reader) {
    // Timestamps for records without one: when the request came in.
    const absl::Time received = clock->Now();
    if (req.is_multipart_form_data()) {
      Reply(kind, res, 415, "unsupported",
            "multipart bodies are not supported; send the lines as the body");
      return;
    }
    std::string body;
    bool too_large = false;
    const size_t limit = static_cast<size_t>(options.max_body_bytes);
    bool read = reader([&](const char* data, size_t len) {
      if (body.size() + len > limit) {
        too_large = true;
        return false;
      }
      body.append(data, len);
      return true;
    });
    if (too_large || res.status == 413) {
      // The rest of the body is still on the connection: do not reuse it.
      res.set_header("Connection", "close");
      Reply(kind, res, 413, "too_large",
            absl::StrCat("request body larger than ", limit, " bytes"));
      return;
    }
    if (!read) {
      res.set_header("Connection", "close");
      Reply(kind, res, 400, "bad_request", "could not read the request body");
      return;
    }

    absl::Status stored;
    size_t count = 0;
    if (kind == Kind::kMetrics) {
      absl::StatusOr<std::vector<v1::Metric>> metrics =
          ParsePrometheusText(body, received);
      if (!metrics.ok()) {
        Reply(kind, res, 400, "bad_request",
              std::string(metrics.status().message()));
        return;
      }
      count = metrics->size();
      if (count > 0) stored = storage->AppendMetrics(*metrics).status();
    } else {
      absl::StatusOr<std::vector<v1::LogEntry>> logs =
          ParseJsonLogLines(body, received);
      if (!logs.ok()) {
        Reply(kind, res, 400, "bad_request",
              std::string(logs.status().message()));
        return;
      }
      count = logs->size();
      if (count > 0) stored = storage->AppendLogs(*logs).status();
    }

    if (stored.ok()) {
      accepted->WithLabels({KindName(kind)})
          .Increment(static_cast<double>(count));
      Reply(kind, res, 204, "", "");
      return;
    }
    if (IsRetryable(stored.code())) {
      LOG(WARNING) << "ingest: store unavailable, refused " << count << " "
                   << KindName(kind)
                   << " records (client may retry): " << stored;
      res.set_header("Retry-After", "1");
      Reply(kind, res, 503, "store_unavailable",
            absl::StrCat("store unavailable: ", stored.message()));
    } else if (stored.code() == absl::StatusCode::kInvalidArgument) {
      Reply(kind, res, 400, "bad_request",
            absl::StrCat("store refused the records: ", stored.message()));
    } else {
      LOG(WARNING) << "ingest: store failed, refused " << count << " "
                   << KindName(kind) << " records: " << stored;
      Reply(kind, res, 500, "store_error",
            absl::StrCat("store error: ", stored.message()));
    }
  }

  const IngestServerOptions options;
  Storage* const storage;
  Clock* const clock;
  std::unique_ptr<metrics::Registry> owned_registry;
  metrics::Family<metrics::Counter>* requests;
  metrics::Family<metrics::Counter>* accepted;
  metrics::Family<metrics::Counter>* rejected;

  httplib::Server http;
  std::thread thread;
  std::atomic<bool> listen_returned{false};
  int port = 0;
};

absl::StatusOr<std::unique_ptr<IngestServer>> IngestServer::Start(
    const IngestServerOptions& options, Storage* storage, Clock* clock,
    metrics::Registry* registry) {
  std::string host;
  int port = 0;
  absl::Status s = collect_internal::SplitHostPort(
      options.address, "FLEET_INGEST_ADDR", &host, &port);
  if (!s.ok()) return s;
  if (options.max_body_bytes <= 0 || options.threads < 1) {
    return absl::InvalidArgumentError(
        "FLEET_INGEST_MAX_BODY_BYTES must be > 0 and threads >= 1");
  }
  auto impl = std::make_unique<Impl>(options, storage, clock, registry);
  Impl* p = impl.get();
  httplib::Server& http = p->http;
  const size_t threads = static_cast<size_t>(options.threads);
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // Bodies with a Content-Length over the limit are refused (413) before
  // they are read; chunked and compressed ones are counted as they arrive.
  http.set_payload_max_length(static_cast<size_t>(options.max_body_bytes));
  // httplib's default sets SO_REUSEPORT, which would let a second agent bind
  // the same port and silently share the traffic. SO_REUSEADDR alone still
  // allows a quick restart.
  http.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  for (const auto& [path, kind] :
       {std::pair<const char*, Kind>{"/v1/metrics", Kind::kMetrics},
        std::pair<const char*, Kind>{"/v1/logs", Kind::kLogs}}) {
    const Kind k = kind;
    http.Post(path, [p, k](const httplib::Request& req, httplib::Response& res,
                           const httplib::ContentReader& reader) {
      p->Handle(k, req, res, reader);
    });
    const auto not_allowed = [p, k](const httplib::Request&,
                                    httplib::Response& res) {
      res.set_header("Allow", "POST");
      p->Reply(k, res, 405, "unsupported", "only POST is allowed here");
    };
    http.Get(path, not_allowed);
    http.Put(path, not_allowed);
    http.Patch(path, not_allowed);
    http.Delete(path, not_allowed);
    http.Options(path, not_allowed);
  }
  int bound = port == 0 ? http.bind_to_any_port(host)
                        : (http.bind_to_port(host, port) ? port : -1);
  if (bound < 0) {
    return absl::UnavailableError(
        absl::StrCat("FLEET_INGEST_ADDR: cannot listen on ", options.address));
  }
  p->port = bound;
  if (!IsLoopbackHost(host)) {
    LOG(WARNING) << "ingest: listening on " << options.address
                 << ", which is not loopback; the endpoint has no "
                 << "authentication";
  }
  p->thread = std::thread([p] {
    p->http.listen_after_bind();
    p->listen_returned = true;
  });
  // httplib's stop() is a no-op until the listen loop runs, so wait for it
  // here to make a Stop() right after Start() effective.
  while (!p->http.is_running() && !p->listen_returned) {
    std::this_thread::yield();
  }
  return std::unique_ptr<IngestServer>(new IngestServer(std::move(impl)));
}

IngestServer::IngestServer(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

IngestServer::~IngestServer() { Stop(); }

int IngestServer::port() const { return impl_->port; }

void IngestServer::Stop() {
  if (!impl_->thread.joinable()) return;
  impl_->http.stop();
  impl_->thread.join();
}

}  // namespace fleetd::agent
