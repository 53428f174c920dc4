#include "bench/loadgen/loadgen.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "agent/transport/connect_transport.h"
#include "agent/transport/grpc_transport.h"
#include "agent/transport/server_url.h"
#include "agent/transport/transport.h"
#include "bench/loadgen/scheduler.h"
#include "bench/workload.h"
#include "common/codec/codec.h"
#include "common/http/http_client.h"
#include "common/status/retry_after.h"
#include "common/status/retryable.h"
#include "fleetd/v1/sync.grpc.pb.h"
#include "glog/logging.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "nlohmann/json.hpp"
#include "server/model/batch.h"
#include "server/model/metric_samples.h"
#include "server/writers/remote_write.h"

namespace fleetd::bench {
namespace {

constexpr int kMetrics = 0;
constexpr int kLogs = 1;

void SetTimestamp(google::protobuf::Timestamp* ts, absl::Time t) {
  int64_t nanos = absl::ToUnixNanos(t);
  ts->set_seconds(nanos / 1'000'000'000);
  ts->set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
}

// Connect devices share the calling sender thread's libcurl client.
thread_local HttpClient* current_http_client = nullptr;

class ThreadHttpClient final : public HttpClient {
 public:
  absl::StatusOr<HttpResponse> Send(const HttpRequest& request) override {
    if (current_http_client == nullptr) {
      return absl::FailedPreconditionError("no HTTP client on this thread");
    }
    return current_http_client->Send(request);
  }
};

struct Device {
  const DeviceKey* key = nullptr;
  int tier = 3;
  int batch = 10;
  int log_batch = 0;
  Compression codec = Compression::kNone;
  std::unique_ptr<agent::SyncTransport> transport;
  // Backlog mode: the metrics batches to drain, in order, ready to send (one
  // sender at a time uses a device's; each is released once acknowledged).
  std::vector<v1::SyncMetricsRequest> backlog;
  std::atomic<int64_t> next_sequence[2] = {{0}, {0}};
  std::atomic<bool> active{false};
};

// What one sender thread measured; merged at the end.
struct WorkerStats {
  std::vector<double> latencies_ms;
  std::map<std::string, int64_t> errors;
  int64_t samples_acked = 0;
  int64_t logs_acked = 0;
  int64_t batches_acked = 0;
  int64_t duplicates = 0;
  int64_t calls = 0;
  int64_t retries = 0;
  int64_t unsent = 0;
  int64_t metrics_bytes_sent = 0;
  int64_t samples_sent = 0;
  absl::Time last_ack = absl::InfinitePast();
};

class Runner {
 public:
  Runner(const LoadgenOptions& options, Clock* clock)
      : o_(options), clock_(clock) {}

  absl::Status Setup();
  LoadgenReport Run();

 private:
  void Sender(WorkerStats* stats);
  void Execute(const Job& job, WorkerStats* stats);
  void Enqueue(const Job& job);
  // The metadata of a batch `d` sends with `sequence` and `attempt`.
  v1::SyncMetadata Metadata(const Device& d, int64_t sequence,
                            int attempt) const;
  // Backlog mode: builds every device's batches, in time order, the last
  // ending at `now`.
  void BuildBacklogs(absl::Time now);
  // Backlog mode: one device has no more work.
  void DeviceDone() { scheduler_->AddPending(-1); }

  const LoadgenOptions& o_;
  Clock* const clock_;
  std::vector<std::unique_ptr<Device>> devices_;
  std::unique_ptr<Scheduler> scheduler_;
  absl::Time start_;
  absl::Time wall_start_;
  absl::Time end_;
  int64_t sequence_base_ = 0;
  std::atomic<int64_t> samples_offered_{0};
  std::atomic<int64_t> dropped_{0};
  std::atomic<int64_t> backlog_left_{0};
  std::atomic<int64_t> drained_at_{0};  // ns since start

  absl::Mutex mu_;
  std::deque<Job> ready_ ABSL_GUARDED_BY(mu_);
  bool dispatch_done_ ABSL_GUARDED_BY(mu_) = false;
};

absl::Status Runner::Setup() {
  if (o_.devices < 1)
    return absl::InvalidArgumentError("--devices must be >= 1");
  if (static_cast<size_t>(o_.devices) > o_.keys.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--devices ", o_.devices, " but the keys file has only ",
                     o_.keys.size(), " keys"));
  }
  if (o_.transport != "grpc" && o_.transport != "connect") {
    return absl::InvalidArgumentError("--transport must be grpc or connect");
  }
  if (o_.concurrency < 1) {
    return absl::InvalidArgumentError("--concurrency must be >= 1");
  }
  absl::StatusOr<agent::ServerUrl> url = agent::ParseServerUrl(o_.server_url);
  if (!url.ok()) return url.status();

  agent::TransportOptions topts;
  topts.kind = o_.transport;
  topts.server_url = o_.server_url;
  topts.ca_file = o_.ca_file;
  topts.user_agent = "fleetd-loadgen/0.1";
  topts.clock = clock_;
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  if (o_.transport == "grpc") {
    std::shared_ptr<grpc::ChannelCredentials> credentials;
    if (url->tls) {
      grpc::SslCredentialsOptions ssl;
      if (!o_.ca_file.empty()) {
        std::ifstream in(o_.ca_file);
        if (!in) return absl::NotFoundError("cannot read --ca-file");
        std::stringstream pem;
        pem << in.rdbuf();
        ssl.pem_root_certs = pem.str();
      }
      credentials = grpc::SslCredentials(ssl);
    } else {
      credentials = grpc::InsecureChannelCredentials();
    }
    const int connections = std::clamp(
        o_.grpc_connections > 0 ? o_.grpc_connections : o_.concurrency, 1,
        std::max(1, o_.devices));
    for (int c = 0; c < connections; ++c) {
      grpc::ChannelArguments args = agent::GrpcChannelArguments(topts);
      // Channels with equal arguments share one connection.
      args.SetInt("fleetd.loadgen.connection", c);
      channels.push_back(
          grpc::CreateCustomChannel(url->Authority(), credentials, args));
    }
  }

  std::vector<int> batch_sizes;
  for (int i = 0; i < o_.devices; ++i) {
    auto d = std::make_unique<Device>();
    d->key = &o_.keys[i];
    d->tier = TierOfDevice(i);
    TierShape shape = ShapeOfTier(d->tier);
    d->batch = o_.batch > 0 ? o_.batch : shape.samples;
    d->codec = shape.codec;
    if (o_.logs_ratio > 0) {
      d->log_batch =
          std::max(1, static_cast<int>(std::lround(d->batch * o_.logs_ratio)));
    }
    if (o_.transport == "grpc") {
      agent::GrpcCallConfig config;
      config.api_key = d->key->api_key;
      d->transport = agent::NewGrpcTransportWithStub(
          v1::SyncService::NewStub(channels[i % channels.size()]),
          std::move(config));
    } else {
      agent::ConnectCallConfig config;
      config.base_url = url->Base();
      config.api_key = d->key->api_key;
      config.clock = clock_;
      d->transport = agent::NewConnectTransportWithClient(
          std::make_unique<ThreadHttpClient>(), std::move(config));
    }
    batch_sizes.push_back(d->batch);
    devices_.push_back(std::move(d));
  }

  bool backlog = o_.backlog_batches > 0;
  absl::Duration interval = backlog ? absl::InfiniteDuration()
                                    : IntervalForRate(batch_sizes, o_.rate);
  std::vector<DeviceSchedule> schedule(devices_.size());
  std::mt19937_64 rng(o_.seed);
  std::uniform_real_distribution<double> unit(0, 1);
  for (DeviceSchedule& s : schedule) {
    s.interval = interval;
    s.phase = interval == absl::InfiniteDuration() ? absl::ZeroDuration()
                                                   : interval * unit(rng);
  }
  // Sequence numbers start at the wall time in nanoseconds, as the agent's do,
  // so runs reusing the same keys never collide with earlier runs.
  sequence_base_ = absl::ToUnixNanos(clock_->Now());
  if (backlog) BuildBacklogs(clock_->Now());
  // A little headroom for the sender threads to start.
  start_ = clock_->MonotonicNow() + absl::Milliseconds(100);
  wall_start_ = clock_->Now() + absl::Milliseconds(100);
  end_ = start_ + o_.duration;
  scheduler_ = std::make_unique<Scheduler>(clock_, schedule, start_, end_);
  if (backlog) {
    for (size_t i = 0; i < devices_.size(); ++i) {
      Job job;
      job.intended = start_;
      job.device = static_cast<int>(i);
      job.kind = kMetrics;
      job.remaining = o_.backlog_batches - 1;
      scheduler_->AddPending(1);
      if (!scheduler_->Push(job)) DeviceDone();
    }
    backlog_left_ = int64_t{o_.backlog_batches} * o_.devices;
  }
  LOG(INFO) << "fleetd-loadgen: " << o_.devices << " devices over "
            << o_.transport << " to " << o_.server_url << ", "
            << (backlog ? absl::StrCat("backlog of ", o_.backlog_batches,
                                       " batches per device")
                        : absl::StrCat("one batch per device every ",
                                       absl::FormatDuration(interval)))
            << ", " << o_.concurrency << " sender threads";
  return absl::OkStatus();
}

v1::SyncMetadata Runner::Metadata(const Device& d, int64_t sequence,
                                  int attempt) const {
  v1::SyncMetadata md;
  md.set_device_id(d.key->device_id);
  md.set_org_id(d.key->org_id);
  md.set_sequence_number(sequence);
  SetTimestamp(md.mutable_client_time(), clock_->Now());
  md.set_retry_count(attempt);
  md.mutable_capability()->set_tier(d.tier);
  md.mutable_capability()->set_architecture("arm64");
  md.mutable_capability()->set_os("linux");
  md.mutable_capability()->set_has_network(true);
  return md;
}

void Runner::BuildBacklogs(absl::Time now) {
  const absl::Time built = clock_->MonotonicNow();
  for (size_t i = 0; i < devices_.size(); ++i) {
    Device& d = *devices_[i];
    // Each batch covers its own scrapes: the batches of a device follow one
    // another without overlap, the last ending now.
    const absl::Duration span = absl::Seconds(10 * ((d.batch + 23) / 24));
    d.backlog.resize(o_.backlog_batches);
    for (int b = 0; b < o_.backlog_batches; ++b) {
      const int64_t sequence = sequence_base_ + b;
      const uint64_t seed = o_.seed * 1'000'003u +
                            static_cast<uint64_t>(i) * 7'919u +
                            static_cast<uint64_t>(sequence);
      v1::SyncMetricsRequest& request = d.backlog[b];
      *request.mutable_batch() =
          MakeMetricsBatch(d.batch, now - span * (o_.backlog_batches - b), seed,
                           d.key->device_id);
      v1::SyncMetadata md = Metadata(d, sequence, 0);
      PackForWire(d.codec, request.mutable_batch(), &md);
      *request.mutable_metadata() = std::move(md);
    }
  }
  LOG(INFO) << "fleetd-loadgen: built " << o_.backlog_batches
            << " backlog batches for each of " << devices_.size()
            << " devices in "
            << absl::FormatDuration(clock_->MonotonicNow() - built);
}

void Runner::Enqueue(const Job& job) {
  absl::MutexLock lock(&mu_);
  if (static_cast<int>(ready_.size()) >= o_.max_queue) {
    dropped_.fetch_add(1);
    if (o_.backlog_batches > 0) DeviceDone();
    return;
  }
  ready_.push_back(job);
}

LoadgenReport Runner::Run() {
  std::vector<WorkerStats> stats(o_.concurrency);
  std::vector<std::thread> senders;
  for (int i = 0; i < o_.concurrency; ++i) {
    senders.emplace_back([this, s = &stats[i]] { Sender(s); });
  }
  Job job;
  while (scheduler_->WaitNext(&job)) {
    if (!job.one_off) {
      job.kind = kMetrics;
      Enqueue(job);
      if (devices_[job.device]->log_batch > 0) {
        job.kind = kLogs;
        Enqueue(job);
      }
    } else {
      Enqueue(job);
    }
  }
  {
    absl::MutexLock lock(&mu_);
    dispatch_done_ = true;
  }
  for (std::thread& t : senders) t.join();
  absl::Time finished = clock_->MonotonicNow();

  LoadgenReport r;
  r.transport = o_.transport;
  r.devices = o_.devices;
  r.duration_s = absl::ToDoubleSeconds(o_.duration);
  r.target_rate = o_.backlog_batches > 0 ? 0 : o_.rate;
  std::vector<double> latencies;
  absl::Time last_ack = absl::InfinitePast();
  for (WorkerStats& s : stats) {
    latencies.insert(latencies.end(), s.latencies_ms.begin(),
                     s.latencies_ms.end());
    for (const auto& [code, n] : s.errors) r.errors[code] += n;
    r.samples_acked += s.samples_acked;
    r.logs_acked += s.logs_acked;
    r.batches_acked += s.batches_acked;
    r.duplicates += s.duplicates;
    r.calls += s.calls;
    r.retries += s.retries;
    r.unsent += s.unsent;
    r.metrics_bytes_sent += s.metrics_bytes_sent;
    r.samples_sent += s.samples_sent;
    last_ack = std::max(last_ack, s.last_ack);
  }
  r.unsent += dropped_.load() + scheduler_->dropped();
  r.samples_offered = samples_offered_.load();
  for (const auto& d : devices_) {
    if (d->active.load()) ++r.active_devices;
    agent::TransportStats ts = d->transport->stats();
    r.bytes_sent += ts.bytes_sent;
    r.bytes_received += ts.bytes_received;
  }
  double acked_window = last_ack == absl::InfinitePast()
                            ? 0
                            : absl::ToDoubleSeconds(last_ack - start_);
  if (o_.backlog_batches > 0) {
    r.window_s = acked_window;
    r.drained = backlog_left_.load() == 0;
    r.drain_s =
        r.drained ? absl::ToDoubleSeconds(absl::Nanoseconds(drained_at_.load()))
                  : absl::ToDoubleSeconds(finished - start_);
  } else {
    r.window_s = std::max(r.duration_s, acked_window);
  }
  if (r.window_s > 0) {
    r.samples_per_second = static_cast<double>(r.samples_acked) / r.window_s;
    r.logs_per_second = static_cast<double>(r.logs_acked) / r.window_s;
    r.batches_per_second = static_cast<double>(r.batches_acked) / r.window_s;
  }
  r.latency_ms = Summarize(std::move(latencies));
  struct rusage usage;
  if (getrusage(RUSAGE_SELF, &usage) == 0) {
    r.client_cpu_s = usage.ru_utime.tv_sec + usage.ru_stime.tv_sec +
                     (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
  }
  return r;
}

void Runner::Sender(WorkerStats* stats) {
  std::unique_ptr<HttpClient> http;
  if (o_.transport == "connect") {
    CurlHttpClientOptions copts;
    copts.ca_file = o_.ca_file;
    copts.user_agent = "fleetd-loadgen/0.1";
    absl::StatusOr<std::unique_ptr<HttpClient>> client =
        NewCurlHttpClient(copts);
    if (!client.ok()) {
      LOG(ERROR) << "cannot create an HTTP client: " << client.status();
    } else {
      http = *std::move(client);
    }
    current_http_client = http.get();
  }
  while (true) {
    Job job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Runner* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->mu_) {
            return !r->ready_.empty() || r->dispatch_done_;
          },
          this));
      if (ready_.empty()) break;
      job = ready_.front();
      ready_.pop_front();
    }
    if (clock_->MonotonicNow() > end_ + o_.grace) {
      ++stats->unsent;
      if (o_.backlog_batches > 0) DeviceDone();
      continue;
    }
    Execute(job, stats);
  }
  current_http_client = nullptr;
}

void Runner::Execute(const Job& job, WorkerStats* stats) {
  Device& d = *devices_[job.device];
  d.active.store(true);
  const bool backlog = o_.backlog_batches > 0;
  // Backlog mode: the prepared batch this job sends.
  v1::SyncMetricsRequest* prepared =
      backlog && job.kind == kMetrics
          ? &d.backlog[o_.backlog_batches - 1 - job.remaining]
          : nullptr;
  int64_t sequence = job.sequence;
  if (prepared != nullptr) {
    sequence = prepared->metadata().sequence_number();
  } else if (sequence == 0) {
    sequence = sequence_base_ + d.next_sequence[job.kind].fetch_add(1);
  }
  absl::Time wall = wall_start_ + (job.intended - start_);
  uint64_t seed = o_.seed * 1'000'003u +
                  static_cast<uint64_t>(job.device) * 7'919u +
                  static_cast<uint64_t>(sequence);

  absl::Status status;
  int records = 0;
  bool duplicate = false;
  if (job.kind == kMetrics) {
    records = d.batch;
    v1::SyncMetricsRequest built;
    v1::SyncMetricsRequest& request = prepared != nullptr ? *prepared : built;
    if (prepared != nullptr) {
      request.mutable_metadata()->set_retry_count(job.attempt);
    } else {
      // Samples cover the scrapes up to the intended send time.
      absl::Time first = wall - absl::Seconds(10 * ((records + 23) / 24));
      *request.mutable_batch() =
          MakeMetricsBatch(records, first, seed, d.key->device_id);
      v1::SyncMetadata md = Metadata(d, sequence, job.attempt);
      PackForWire(d.codec, request.mutable_batch(), &md);
      *request.mutable_metadata() = std::move(md);
    }
    if (job.attempt == 0) samples_offered_.fetch_add(records);
    // As the transports count it: the message plus gRPC's 5-byte frame header
    // (Connect sends the bare message).
    stats->metrics_bytes_sent += static_cast<int64_t>(request.ByteSizeLong()) +
                                 (o_.transport == "grpc" ? 5 : 0);
    stats->samples_sent += records;
    absl::StatusOr<v1::SyncMetricsResponse> response =
        d.transport->SyncMetrics(request, o_.call_timeout);
    if (!response.ok()) {
      status = response.status();
    } else if (!response->success()) {
      status = absl::UnknownError(response->error_message());
    } else {
      duplicate = response->duplicate();
    }
  } else {
    records = d.log_batch;
    v1::SyncLogsRequest request;
    *request.mutable_batch() = MakeLogsBatch(records, wall, seed);
    v1::SyncMetadata md = Metadata(d, sequence, job.attempt);
    PackForWire(d.codec, request.mutable_batch(), &md);
    *request.mutable_metadata() = std::move(md);
    absl::StatusOr<v1::SyncLogsResponse> response =
        d.transport->SyncLogs(request, o_.call_timeout);
    if (!response.ok()) {
      status = response.status();
    } else if (!response->success()) {
      status = absl::UnknownError(response->error_message());
    } else {
      duplicate = response->duplicate();
    }
  }
  absl::Time done = clock_->MonotonicNow();
  ++stats->calls;
  stats->latencies_ms.push_back(
      absl::ToDoubleMilliseconds(done - job.intended));
  if (status.ok()) {
    if (prepared != nullptr) v1::SyncMetricsRequest().Swap(prepared);
    stats->last_ack = std::max(stats->last_ack, done);
    ++stats->batches_acked;
    if (duplicate) ++stats->duplicates;
    (job.kind == kMetrics ? stats->samples_acked : stats->logs_acked) +=
        records;
    if (!backlog) return;
    if (backlog_left_.fetch_sub(1) == 1) {
      drained_at_.store(absl::ToInt64Nanoseconds(done - start_));
    }
    if (job.remaining == 0) {
      DeviceDone();
      return;
    }
    Job next = job;
    next.intended = done;
    next.sequence = 0;
    next.attempt = 0;
    next.remaining = job.remaining - 1;
    if (!scheduler_->Push(next)) DeviceDone();
    return;
  }
  ++stats->errors[absl::StatusCodeToString(status.code())];
  if (!backlog) return;
  if (!IsRetryable(status.code())) {
    DeviceDone();
    return;
  }
  // The agent retries the same batch after the server's hint.
  Job retry = job;
  retry.sequence = sequence;
  retry.attempt = job.attempt + 1;
  retry.intended = done + GetRetryAfter(status).value_or(absl::Seconds(1));
  ++stats->retries;
  if (!scheduler_->Push(retry)) DeviceDone();
}

}  // namespace

int TierOfDevice(int index) {
  int slot = index % 10;
  return slot < 2 ? 1 : slot < 6 ? 2 : 3;
}

int TierBatchSize(int tier) { return ShapeOfTier(tier).samples; }

absl::StatusOr<LoadgenReport> RunLoadgen(const LoadgenOptions& options,
                                         Clock* clock) {
  Runner runner(options, clock);
  absl::Status setup = runner.Setup();
  if (!setup.ok()) return setup;
  return runner.Run();
}

namespace {

// Calls fn(key, batch) for every metrics batch the devices of `options` would
// send in `rounds` rounds (round by round; each device one batch of its tier
// per round, from the generator and seeds of RunLoadgen), the last round's
// samples ending at `now`. Stops at the first error fn returns.
template <typename Fn>
absl::Status ForEachExportBatch(const LoadgenOptions& options, int rounds,
                                absl::Time now, Fn fn) {
  if (static_cast<size_t>(options.devices) > options.keys.size()) {
    return absl::InvalidArgumentError("more devices than keys");
  }
  int64_t sequence_base = absl::ToUnixNanos(now);
  for (int round = 0; round < rounds; ++round) {
    for (int i = 0; i < options.devices; ++i) {
      int records =
          options.batch > 0 ? options.batch : TierBatchSize(TierOfDevice(i));
      int64_t sequence = sequence_base + round;
      uint64_t seed = options.seed * 1'000'003u +
                      static_cast<uint64_t>(i) * 7'919u +
                      static_cast<uint64_t>(sequence);
      absl::Time first = now - absl::Seconds(10 * ((records + 23) / 24)) -
                         absl::Seconds(rounds - round);
      const DeviceKey& key = options.keys[i];
      absl::Status status = fn(
          round, i, key, MakeMetricsBatch(records, first, seed, key.device_id));
      if (!status.ok()) return status;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<int64_t> ExportVmJsonl(const LoadgenOptions& options, int rounds,
                                      const std::string& path, Clock* clock) {
  std::ofstream out(path);
  if (!out) return absl::NotFoundError(absl::StrCat("cannot write ", path));
  int64_t samples = 0;
  absl::Status status = ForEachExportBatch(
      options, rounds, clock->Now(),
      [&](int, int, const DeviceKey& key, const v1::MetricsBatch& batch) {
        std::map<std::string, nlohmann::json> series;
        for (const v1::Metric& m : batch.metrics()) {
          nlohmann::json labels = nlohmann::json::object();
          labels["__name__"] = m.name();
          for (const auto& [k, v] : m.labels()) labels[k] = v;
          labels["device_id"] = key.device_id;
          labels["org_id"] = key.org_id;
          nlohmann::json& line = series[labels.dump()];
          if (line.is_null()) {
            line["metric"] = std::move(labels);
            line["values"] = nlohmann::json::array();
            line["timestamps"] = nlohmann::json::array();
          }
          line["values"].push_back(m.value());
          line["timestamps"].push_back(m.timestamp().seconds() * 1000 +
                                       m.timestamp().nanos() / 1'000'000);
        }
        for (auto& [k, line] : series) out << line.dump() << '\n';
        samples += batch.metrics_size();
        return absl::OkStatus();
      });
  if (!status.ok()) return status;
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("cannot write ", path));
  return samples;
}

absl::StatusOr<int64_t> ExportRemoteWrite(const LoadgenOptions& options,
                                          int rounds, const std::string& dir,
                                          Clock* clock) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    return absl::NotFoundError(
        absl::StrCat("cannot create ", dir, ": ", error.message()));
  }
  server::RemoteWriteEncoder encoder;
  std::string body;
  int64_t samples = 0;
  absl::Status status = ForEachExportBatch(
      options, rounds, clock->Now(),
      [&](int round, int device, const DeviceKey& key,
          const v1::MetricsBatch& batch) -> absl::Status {
        server::DecodedBatch decoded;
        decoded.device.device_id = key.device_id;
        decoded.device.org_id = key.org_id;
        decoded.kind = server::DataKind::kMetrics;
        decoded.metrics = server::MetricSamples::FromProto(batch);
        const server::DecodedBatch* batches[] = {&decoded};
        absl::Status encoded = encoder.Encode(batches, &body);
        if (!encoded.ok()) return encoded;
        std::string path =
            absl::StrFormat("%s/r%06d-d%07d.rw", dir, round, device);
        std::ofstream out(path, std::ios::binary);
        out.write(body.data(), static_cast<std::streamsize>(body.size()));
        out.close();
        if (!out)
          return absl::DataLossError(absl::StrCat("cannot write ", path));
        samples += static_cast<int64_t>(encoder.sample_count());
        return absl::OkStatus();
      });
  if (!status.ok()) return status;
  return samples;
}

std::string ReportToJson(const LoadgenReport& r) {
  nlohmann::json j;
  j["transport"] = r.transport;
  j["devices"] = r.devices;
  j["active_devices"] = r.active_devices;
  j["duration_s"] = r.duration_s;
  j["window_s"] = r.window_s;
  j["target_rate"] = r.target_rate;
  j["samples_offered"] = r.samples_offered;
  j["samples_acked"] = r.samples_acked;
  j["logs_acked"] = r.logs_acked;
  j["batches_acked"] = r.batches_acked;
  j["duplicates"] = r.duplicates;
  j["calls"] = r.calls;
  j["samples_per_second"] = r.samples_per_second;
  j["logs_per_second"] = r.logs_per_second;
  j["batches_per_second"] = r.batches_per_second;
  j["p50_ms"] = r.latency_ms.p50;
  j["p95_ms"] = r.latency_ms.p95;
  j["p99_ms"] = r.latency_ms.p99;
  j["max_ms"] = r.latency_ms.max;
  j["mean_ms"] = r.latency_ms.mean;
  j["errors"] = nlohmann::json::object();
  for (const auto& [code, n] : r.errors) j["errors"][code] = n;
  j["retries"] = r.retries;
  j["unsent"] = r.unsent;
  j["drain_s"] = r.drain_s;
  j["drained"] = r.drained;
  j["client_cpu_s"] = r.client_cpu_s;
  j["bytes_sent"] = r.bytes_sent;
  j["bytes_received"] = r.bytes_received;
  j["metrics_bytes_sent"] = r.metrics_bytes_sent;
  j["samples_sent"] = r.samples_sent;
  j["metrics_bytes_per_sample"] =
      r.samples_sent > 0 ? static_cast<double>(r.metrics_bytes_sent) /
                               static_cast<double>(r.samples_sent)
                         : 0.0;
  return j.dump(2);
}

}  // namespace fleetd::bench
