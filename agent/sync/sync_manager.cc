#include "agent/sync/sync_manager.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/crypto/sha256.h"
#include "common/status/error_class.h"
#include "common/status/retry_after.h"
#include "common/status/status_macros.h"
#include "glog/logging.h"

namespace fleetd::agent {
namespace {

// Reserved pending-batch slot holding a stream's last used sequence number, so
// numbers never repeat even if the device clock goes back (no RTC, before NTP).
std::string SequenceSlot(absl::string_view stream) {
  return absl::StrCat("seq/", stream);
}

// Stands for "no limit" in a token bucket.
constexpr double kUnlimitedRate = 1e12;

double RateOrUnlimited(double per_second) {
  return per_second > 0 ? per_second : kUnlimitedRate;
}

void SetTimestamp(google::protobuf::Timestamp* ts, absl::Time t) {
  int64_t nanos = absl::ToUnixNanos(t);
  ts->set_seconds(nanos / 1'000'000'000);
  ts->set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
}

// Per-kind pieces, so the send path is written once.
template <typename Record>
void AddRecord(Record&& r, v1::MetricsBatch* b) {
  *b->add_metrics() = std::forward<Record>(r);
}
template <typename Record>
void AddRecord(Record&& r, v1::LogsBatch* b) {
  *b->add_logs() = std::forward<Record>(r);
}
template <typename Record>
void AddRecord(Record&& r, v1::EventsBatch* b) {
  *b->add_events() = std::forward<Record>(r);
}
void SwapOntoStream(v1::MetricsBatch* b, v1::StreamSyncRequest* r) {
  r->mutable_metrics()->Swap(b);
}
void SwapOntoStream(v1::LogsBatch* b, v1::StreamSyncRequest* r) {
  r->mutable_logs()->Swap(b);
}
void SwapOntoStream(v1::EventsBatch* b, v1::StreamSyncRequest* r) {
  r->mutable_events()->Swap(b);
}
absl::StatusOr<v1::SyncMetricsResponse> CallUnary(
    SyncTransport& t, const v1::SyncMetricsRequest& r, absl::Duration timeout) {
  return t.SyncMetrics(r, timeout);
}
absl::StatusOr<v1::SyncLogsResponse> CallUnary(SyncTransport& t,
                                               const v1::SyncLogsRequest& r,
                                               absl::Duration timeout) {
  return t.SyncLogs(r, timeout);
}
absl::StatusOr<v1::SyncEventsResponse> CallUnary(SyncTransport& t,
                                                 const v1::SyncEventsRequest& r,
                                                 absl::Duration timeout) {
  return t.SyncEvents(r, timeout);
}
template <typename Response>
const v1::SyncConfig* ConfigUpdate(const Response& r) {
  return r.has_config_update() ? &r.config_update() : nullptr;
}
const v1::SyncConfig* ConfigUpdate(const v1::SyncEventsResponse&) {
  return nullptr;
}

// Reads the records `read` selects as the wire batch message of their kind.
// `ids` gets the first and last id read.
template <typename BatchMsg, typename ReadFn>
absl::Status ReadInto(ReadFn read_fn, const ReadOptions& read, BatchMsg* batch,
                      IdRange* ids, int32_t* count) {
  ASSIGN_OR_RETURN(auto records, read_fn(read));
  batch->Clear();
  *count = static_cast<int32_t>(records.size());
  if (records.empty()) return absl::OkStatus();
  *ids = {records.front().id, records.back().id};
  for (auto& r : records) AddRecord(std::move(r.record), batch);
  return absl::OkStatus();
}

// Replaces `batch`'s records by their compressed serialization `raw` when
// that saves at least 10 %. Returns whether it did.
template <typename BatchMsg>
absl::StatusOr<bool> Pack(Compression codec, const std::string& raw,
                          BatchMsg* batch) {
  if (codec == Compression::kNone) return false;
  ASSIGN_OR_RETURN(std::string packed, Compress(codec, raw));
  if (packed.size() * 10 > raw.size() * 9) return false;  // saves < 10 %
  batch->Clear();
  batch->set_compression(std::string(CompressionName(codec)));
  batch->set_compressed_data(std::move(packed));
  batch->set_original_size(static_cast<int32_t>(raw.size()));
  return true;
}

}  // namespace

struct SyncManager::Stream {
  std::string name;
  RecordKind kind;
  bool fresh_turn = false;
};

// One batch on its way: its identity in the store and its wire request, built
// once (one read from the store, one serialization for checksum and
// compression) and reused by every attempt.
struct SyncManager::Batch {
  PendingBatch pending;
  // Exactly the request of the stream's kind is filled.
  v1::SyncMetricsRequest metrics;
  v1::SyncLogsRequest logs;
  v1::SyncEventsRequest events;
  int64_t raw_bytes = 0;  // serialized size before compression
  bool compressed = false;

  v1::SyncMetadata* metadata(RecordKind kind) {
    switch (kind) {
      case RecordKind::kMetric:
        return metrics.mutable_metadata();
      case RecordKind::kLog:
        return logs.mutable_metadata();
      case RecordKind::kEvent:
        return events.mutable_metadata();
    }
    return metrics.mutable_metadata();
  }
  int64_t wire_bytes(RecordKind kind) const {
    switch (kind) {
      case RecordKind::kMetric:
        return static_cast<int64_t>(metrics.ByteSizeLong());
      case RecordKind::kLog:
        return static_cast<int64_t>(logs.ByteSizeLong());
      case RecordKind::kEvent:
        return static_cast<int64_t>(events.ByteSizeLong());
    }
    return 0;
  }
};

SyncManager::SyncManager(Storage* storage, SyncTransport* transport,
                         Clock* clock, metrics::Registry* metrics,
                         SyncOptions options)
    : storage_(storage),
      transport_(transport),
      clock_(clock),
      registry_(metrics),
      options_(options),
      backoff_(options.backoff,
               options.seed != 0
                   ? options.seed
                   : static_cast<uint64_t>(absl::ToUnixNanos(clock->Now()))),
      breaker_(options.breaker, clock),
      bucket_(RateOrUnlimited(options.max_records_per_second),
              std::max<double>(options.batch_size, 1), clock),
      metrics_bucket_(kUnlimitedRate, std::max<double>(options.batch_size, 1),
                      clock),
      logs_bucket_(kUnlimitedRate, std::max<double>(options.batch_size, 1),
                   clock) {
  stats_.state = "idle";
}

SyncManager::~SyncManager() { Stop(); }

SyncOptions SyncManager::options() {
  absl::MutexLock lock(&mu_);
  return options_;
}

void SyncManager::SetState(const std::string& state) {
  absl::MutexLock lock(&mu_);
  stats_.state = state;
}

void SyncManager::ApplyConfig(const v1::SyncConfig& c) {
  std::optional<int64_t> quota;
  {
    absl::MutexLock lock(&mu_);
    quota = ApplyConfigLocked(c);
  }
  // The store is called without holding mu_ (status readers wait on it).
  if (!quota.has_value()) return;
  absl::Status s = storage_->SetMaxBytes(*quota);
  if (absl::IsUnimplemented(s)) {
    VLOG(1) << "the store has a fixed size; server quota ignored: " << s;
  } else if (!s.ok()) {
    LOG(WARNING) << "cannot apply the server's storage quota of " << *quota
                 << " bytes: " << s;
  }
}

std::optional<int64_t> SyncManager::ApplyConfigLocked(const v1::SyncConfig& c) {
  SyncOptions& o = options_;
  if (!o.interval_pinned && c.sync_interval_seconds() > 0) {
    o.interval = absl::Seconds(c.sync_interval_seconds());
  }
  if (!o.batch_size_pinned && c.batch_size() > 0) {
    o.batch_size = c.batch_size();
  }
  if (!o.compression_pinned && !c.compression_type().empty()) {
    auto codec = ParseCompression(c.compression_enabled() ? c.compression_type()
                                                          : "none");
    if (codec.ok()) o.compression = *codec;
  }
  if (!o.max_retries_pinned && c.max_retries() > 0) {
    o.max_retries = c.max_retries();
  }
  if (!o.backoff_pinned) {
    BackoffOptions b = o.backoff;
    if (c.initial_backoff_seconds() > 0) {
      b.initial = absl::Seconds(c.initial_backoff_seconds());
    }
    if (c.max_backoff_seconds() > 0) {
      b.max = absl::Seconds(c.max_backoff_seconds());
    }
    if (c.backoff_multiplier() >= 1) b.multiplier = c.backoff_multiplier();
    if (ValidateBackoffOptions(b).ok()) {
      o.backoff = b;  // the cycle picks it up before its next wait
    } else {
      LOG(WARNING) << "ignoring the server's backoff settings (initial "
                   << c.initial_backoff_seconds() << " s, max "
                   << c.max_backoff_seconds() << " s, multiplier "
                   << c.backoff_multiplier() << "): not a valid backoff";
    }
  }
  if (!o.retention_pinned && c.retention_hours() > 0) {
    o.retention = absl::Hours(c.retention_hours());
  }
  double burst = std::max<double>(o.batch_size, 1);
  bucket_.SetRate(RateOrUnlimited(o.max_records_per_second), burst);
  if (!o.rate_limits_pinned) {
    metrics_rate_ = std::max(0, c.max_metrics_per_second());
    logs_rate_ = std::max(0, c.max_logs_per_second());
    metrics_bucket_.SetRate(RateOrUnlimited(metrics_rate_), burst);
    logs_bucket_.SetRate(RateOrUnlimited(logs_rate_), burst);
  }
  if (!o.storage_limits_pinned && c.max_local_storage_bytes() > 0) {
    return c.max_local_storage_bytes();
  }
  return std::nullopt;
}

absl::Status SyncManager::FetchConfig() {
  SyncOptions o = options();
  v1::GetSyncConfigRequest request;
  request.set_device_id(o.device_id);
  *request.mutable_capability() = o.capability;
  absl::StatusOr<v1::GetSyncConfigResponse> response =
      transport_->GetSyncConfig(request, o.call_timeout);
  if (!response.ok()) {
    LOG(WARNING) << "GetSyncConfig failed, keeping the tier defaults: "
                 << response.status();
    return response.status();
  }
  ApplyConfig(response->config());
  return absl::OkStatus();
}

void SyncManager::Start() {
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { Loop(); });
}

void SyncManager::Stop() {
  stopping_ = true;
  stop_wakeup_.Notify();
  wakeup_.Notify();
  if (thread_.joinable()) thread_.join();
}

void SyncManager::TriggerSync() { wakeup_.Notify(); }

bool SyncManager::WaitFor(absl::Duration d) {
  if (stopping_) return false;
  clock_->SleepFor(d, &stop_wakeup_);
  return !stopping_;
}

void SyncManager::Loop() {
  while (!stopping_) {
    // A trigger that arrived before this point is served by this cycle.
    wakeup_.Reset();
    int set_aside = 0;
    absl::Status s = Cycle(&set_aside);
    if (stopping_) break;
    if (s.ok()) {
      // Between cycles a trigger (new data, a flush command) starts the next
      // one early.
      clock_->SleepFor(DelayAfter(s), &wakeup_);
    } else {
      // After a failure, wait out the backoff: a flush command from the
      // server must not turn it into a tight loop.
      WaitFor(DelayAfter(s));
    }
  }
}

absl::Duration SyncManager::DelayAfter(const absl::Status& s) {
  absl::Duration interval = options().interval;
  if (s.ok()) return interval;
  absl::MutexLock cycle(&cycle_mu_);
  // The data waits in the store; come back after the backoff (or the breaker's
  // cool-down, or the server's hint), not a whole interval later.
  if (unauthenticated_) return options().backoff.max;
  absl::Duration retry = std::max(backoff_.Next(), breaker_.RetryAfter());
  if (auto hint = GetRetryAfter(s); hint.has_value())
    retry = std::max(retry, *hint);
  return std::min(interval, retry);
}

absl::Status SyncManager::SyncNow() {
  int set_aside = 0;
  absl::Status s = Cycle(&set_aside);
  if (s.ok() && set_aside > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the server rejected ", set_aside,
        " batch(es) as invalid; they are set aside (see `fleetd quarantine "
        "list`)"));
  }
  return s;
}

void SyncManager::PublishMetrics() {
  if (registry_ == nullptr) return;
  SyncMetricsSnapshot m = GetMetrics();
  auto gauge = [this](const char* name, const char* help, double v) {
    registry_->GetGauge(absl::StrCat("fleetd_agent_", name), help).Set(v);
  };
  gauge("metrics_synced", "Metric samples acknowledged by the server.",
        m.metrics_synced);
  gauge("logs_synced", "Log entries acknowledged by the server.",
        m.logs_synced);
  gauge("events_synced", "Events acknowledged by the server.", m.events_synced);
  gauge("bytes_sent", "Request bytes sent to the server.", m.bytes_sent);
  gauge("bytes_compressed", "Uncompressed bytes of compressed batches.",
        m.bytes_compressed);
  gauge("compression_ratio",
        "Uncompressed / compressed size of compressed batches.",
        m.compression_ratio);
  gauge("successful_syncs", "Batches acknowledged.", m.successful_syncs);
  gauge("failed_syncs", "Failed batch attempts.", m.failed_syncs);
  gauge("consecutive_failures", "Failed attempts since the last success.",
        m.consecutive_failures);
  gauge("last_sync_duration_seconds",
        "Duration of the last successful batch exchange.",
        absl::ToDoubleSeconds(m.last_sync_duration));
  gauge("set_aside_batches_total",
        "Batches the server rejected as invalid and this agent set aside "
        "since it started.",
        m.set_aside_batches);
  gauge("set_aside_records_total",
        "Records in batches set aside since the agent started.",
        m.set_aside_records);
  gauge("circuit_open", "1 while the circuit breaker is open.",
        m.state == "circuit_open" ? 1 : 0);
}

absl::Status SyncManager::Cycle(int* set_aside) {
  absl::MutexLock cycle(&cycle_mu_);
  if (unauthenticated_ && clock_->MonotonicNow() < auth_retry_at_) {
    return absl::UnauthenticatedError(
        "the server refused the API key; not sending");
  }
  RemoveExpiredHistory();
  if (absl::Status s = PrepareStream(); !s.ok()) {
    SetState("paused");
    return s;
  }
  SetState("syncing");
  Stream streams[] = {{"metrics", RecordKind::kMetric},
                      {"logs", RecordKind::kLog},
                      {"events", RecordKind::kEvent}};
  int64_t set_aside_before;
  {
    absl::MutexLock lock(&mu_);
    set_aside_before = stats_.set_aside_batches;
  }
  auto count_set_aside = [&] {
    absl::MutexLock lock(&mu_);
    *set_aside = static_cast<int>(stats_.set_aside_batches - set_aside_before);
  };
  int max_batches = options().max_batches_per_cycle;
  bool active[3] = {true, true, true};
  // Round-robin: one batch per stream in turn, so no stream starves another.
  for (int round = 0; round < max_batches; ++round) {
    bool any = false;
    for (int i = 0; i < 3; ++i) {
      if (!active[i]) continue;
      absl::Status error;
      Outcome o = SendOne(streams[i], &error);
      switch (o) {
        case Outcome::kMore:
          any = true;
          break;
        case Outcome::kDone:
          active[i] = false;
          break;
        case Outcome::kRetryLater:
        case Outcome::kStopped: {
          absl::Status last_error =
              error.ok() ? absl::UnavailableError("stopped") : error;
          SetState(unauthenticated_ ? "unauthenticated"
                   : breaker_.state() == CircuitBreaker::State::kOpen
                       ? "circuit_open"
                       : "backoff");
          count_set_aside();
          PublishMetrics();
          return last_error;
        }
      }
    }
    if (!any) break;
  }
  SetState("idle");
  count_set_aside();
  PublishMetrics();
  return absl::OkStatus();
}

void SyncManager::RemoveExpiredHistory() {
  absl::Duration retention = options().retention;
  if (retention <= absl::ZeroDuration()) return;
  absl::StatusOr<int64_t> removed =
      storage_->CleanOlderThan(retention, CleanScope::kSyncedOnly);
  if (!removed.ok()) {
    LOG(WARNING) << "cannot remove synced records older than "
                 << absl::FormatDuration(retention) << ": " << removed.status();
  } else if (*removed > 0) {
    VLOG(1) << "removed " << *removed << " synced records older than "
            << absl::FormatDuration(retention);
  }
}

absl::StatusOr<int64_t> SyncManager::NextSequence(const Stream& stream) {
  std::string slot = SequenceSlot(stream.name);
  ASSIGN_OR_RETURN(std::optional<PendingBatch> last,
                   storage_->LoadPendingBatch(slot));
  // Like upstream agents, numbers start at the Unix time in nanoseconds; unlike
  // them, they never go back when the clock does.
  int64_t next = absl::ToUnixNanos(clock_->Now());
  if (last.has_value()) next = std::max(next, last->sequence_number + 1);
  PendingBatch mark;
  mark.stream = slot;
  mark.kind = stream.kind;
  mark.sequence_number = next;
  RETURN_IF_ERROR(storage_->SavePendingBatch(mark));
  return next;
}

absl::StatusOr<std::optional<SyncManager::Batch>> SyncManager::NextBatch(
    Stream& stream) {
  SyncOptions o = options();
  ASSIGN_OR_RETURN(std::optional<PendingBatch> saved,
                   storage_->LoadPendingBatch(stream.name));
  ReadOptions read;
  if (saved.has_value()) {
    // Resend under the same number: exactly the unsynced records of its range.
    read.after_id = saved->ids.first - 1;
    read.until_id = saved->ids.last;
    read.max_records =
        static_cast<int32_t>(std::max<int64_t>(saved->ids.size(), 1));
  } else {
    read.max_records = std::max(o.batch_size, 1);
    // While a backlog drains, every other batch carries the newest records.
    if (stream.fresh_turn) {
      ASSIGN_OR_RETURN(StorageInfo info, storage_->Info());
      const KindInfo& k = info.of(stream.kind);
      if (k.unsynced > read.max_records) {
        read.after_id = std::max<int64_t>(0, k.next_id - 1 - read.max_records);
      }
    }
    stream.fresh_turn = !stream.fresh_turn;
  }

  Batch batch;
  IdRange ids;
  int32_t count = 0;
  std::string raw;
  // Reads with `read`; an empty fresh read (the newest are already synced)
  // falls back to the oldest records.
  for (int pass = 0; pass < 2 && count == 0; ++pass) {
    if (pass == 1) {
      if (saved.has_value() || read.after_id == 0) break;
      read.after_id = 0;
    }
    switch (stream.kind) {
      case RecordKind::kMetric:
        RETURN_IF_ERROR(ReadInto(
            [this](const ReadOptions& r) { return storage_->ReadMetrics(r); },
            read, batch.metrics.mutable_batch(), &ids, &count));
        break;
      case RecordKind::kLog:
        RETURN_IF_ERROR(ReadInto(
            [this](const ReadOptions& r) { return storage_->ReadLogs(r); },
            read, batch.logs.mutable_batch(), &ids, &count));
        break;
      case RecordKind::kEvent:
        RETURN_IF_ERROR(ReadInto(
            [this](const ReadOptions& r) { return storage_->ReadEvents(r); },
            read, batch.events.mutable_batch(), &ids, &count));
        break;
    }
  }
  if (count == 0) {
    // A saved batch whose records were all evicted or cleaned meanwhile.
    if (saved.has_value()) {
      RETURN_IF_ERROR(storage_->ClearPendingBatch(stream.name));
    }
    return std::nullopt;
  }
  if (saved.has_value()) {
    batch.pending = *saved;
  } else {
    batch.pending.stream = stream.name;
    batch.pending.kind = stream.kind;
    ASSIGN_OR_RETURN(batch.pending.sequence_number, NextSequence(stream));
    batch.pending.ids = ids;
  }
  batch.pending.record_count = count;
  if (!saved.has_value()) {
    RETURN_IF_ERROR(storage_->SavePendingBatch(batch.pending));
  }

  // The one serialization of the records: for the checksum (SHA-256 of the
  // uncompressed batch, as upstream) and, when it pays, compression.
  absl::StatusOr<bool> packed = false;
  switch (stream.kind) {
    case RecordKind::kMetric:
      raw = batch.metrics.batch().SerializeAsString();
      packed = Pack(o.compression, raw, batch.metrics.mutable_batch());
      break;
    case RecordKind::kLog:
      raw = batch.logs.batch().SerializeAsString();
      packed = Pack(o.compression, raw, batch.logs.mutable_batch());
      break;
    case RecordKind::kEvent:
      raw = batch.events.batch().SerializeAsString();
      packed = Pack(o.compression, raw, batch.events.mutable_batch());
      break;
  }
  if (!packed.ok()) return packed.status();
  batch.compressed = *packed;
  batch.raw_bytes = static_cast<int64_t>(raw.size());

  v1::SyncMetadata* md = batch.metadata(stream.kind);
  md->set_device_id(o.device_id);
  md->set_org_id(o.org_id);
  md->set_sequence_number(batch.pending.sequence_number);
  md->set_checksum(Sha256(raw));
  *md->mutable_capability() = o.capability;
  md->set_stream(stream.name);
  md->set_record_count(batch.pending.record_count);
  return batch;
}

absl::Status SyncManager::Transmit(const Stream& stream, Batch& batch) {
  v1::SyncMetadata* md = batch.metadata(stream.kind);
  SetTimestamp(md->mutable_client_time(), clock_->Now());
  md->set_retry_count(batch.pending.retry_count);
  if (stream_ != nullptr) {
    v1::StreamSyncRequest sr;
    *sr.mutable_metadata() = *md;
    // Lend the batch to the stream request and take it back afterwards.
    auto swap = [&] {
      switch (stream.kind) {
        case RecordKind::kMetric:
          SwapOntoStream(batch.metrics.mutable_batch(), &sr);
          break;
        case RecordKind::kLog:
          SwapOntoStream(batch.logs.mutable_batch(), &sr);
          break;
        case RecordKind::kEvent:
          SwapOntoStream(batch.events.mutable_batch(), &sr);
          break;
      }
    };
    swap();
    absl::Status s = ExchangeOnStream(sr, md->sequence_number());
    swap();
    return s;
  }
  switch (stream.kind) {
    case RecordKind::kMetric:
      return SendUnary(batch.metrics);
    case RecordKind::kLog:
      return SendUnary(batch.logs);
    case RecordKind::kEvent:
      return SendUnary(batch.events);
  }
  return absl::InternalError("unknown record kind");
}

template <typename Request>
absl::Status SyncManager::SendUnary(const Request& request) {
  auto resp = CallUnary(*transport_, request, options().call_timeout);
  if (!resp.ok()) return resp.status();
  if (!resp->success()) {
    // An answer without a verdict: retried (class "retry").
    return absl::UnavailableError(absl::StrCat(
        "server did not accept the batch: ", resp->error_message()));
  }
  if (const v1::SyncConfig* update = ConfigUpdate(*resp); update != nullptr) {
    ApplyConfig(*update);
  }
  if (resp->duplicate()) {
    absl::MutexLock lock(&mu_);
    ++stats_.duplicates_acknowledged;
  }
  return absl::OkStatus();
}

absl::Status SyncManager::SetAside(const Stream& stream, const Batch& batch,
                                   const absl::Status& why) {
  SetAsideBatch entry;
  entry.stream = stream.name;
  entry.kind = stream.kind;
  entry.sequence_number = batch.pending.sequence_number;
  entry.ids = batch.pending.ids;
  entry.record_count = batch.pending.record_count;
  entry.reason = std::string(why.message());
  RETURN_IF_ERROR(storage_->SetAside(entry));
  LOG(ERROR) << "server rejected " << stream.name << " batch "
             << batch.pending.sequence_number << " ("
             << batch.pending.record_count << " records) as invalid: " << why
             << "; set aside in the store (`fleetd quarantine list`)";
  absl::MutexLock lock(&mu_);
  ++stats_.set_aside_batches;
  stats_.set_aside_records += batch.pending.record_count;
  stats_.last_error = why.ToString();
  return absl::OkStatus();
}

bool SyncManager::AwaitRateLimit(const Stream& stream, int records) {
  TokenBucket* limits[2] = {nullptr, nullptr};
  {
    absl::MutexLock lock(&mu_);
    if (options_.max_records_per_second > 0) limits[0] = &bucket_;
    if (stream.kind == RecordKind::kMetric && metrics_rate_ > 0) {
      limits[1] = &metrics_bucket_;
    } else if (stream.kind == RecordKind::kLog && logs_rate_ > 0) {
      limits[1] = &logs_bucket_;
    }
  }
  double want = std::max(records, 1);
  for (TokenBucket* bucket : limits) {
    if (bucket == nullptr) continue;
    // The burst follows the batch size: a batch larger than the burst (saved
    // under a larger setting) raises it, so every batch is admitted in time.
    bucket->RaiseBurst(want);
    if (!bucket->TryConsume(want)) {
      if (!WaitFor(bucket->TimeUntilAvailable(want))) return false;
      // The wait was served; rounding may leave the bucket a hair short.
      bucket->TryConsume(want);
    }
  }
  return true;
}

void SyncManager::RecordFailure(const absl::Status& s) {
  breaker_.RecordFailure();
  absl::MutexLock lock(&mu_);
  ++stats_.failed_syncs;
  ++stats_.consecutive_failures;
  stats_.last_error = s.ToString();
}

SyncManager::Outcome SyncManager::SendOne(Stream& stream, absl::Status* error) {
  absl::StatusOr<std::optional<Batch>> next = NextBatch(stream);
  if (!next.ok()) {
    *error = next.status();
    LOG(WARNING) << "cannot read " << stream.name
                 << " from the store: " << next.status();
    return Outcome::kRetryLater;
  }
  if (!next->has_value()) return Outcome::kDone;
  Batch& batch = **next;
  const int records = batch.pending.record_count;
  int32_t max_retries = std::max(1, options().max_retries);
  for (int attempt = 0; attempt < max_retries; ++attempt) {
    if (stopping_) return Outcome::kStopped;
    if (!AwaitRateLimit(stream, records)) return Outcome::kStopped;
    // Asked right before sending, so a half-open probe always reports back.
    if (!breaker_.Allow()) {
      *error = WithRetryAfter(
          absl::UnavailableError("circuit open: server keeps failing"),
          breaker_.RetryAfter());
      return Outcome::kRetryLater;
    }

    int64_t wire_bytes = batch.wire_bytes(stream.kind);
    absl::Time sent_at = clock_->MonotonicNow();
    absl::Status s = Transmit(stream, batch);
    {
      absl::MutexLock lock(&mu_);
      stats_.bytes_sent += wire_bytes;
    }
    switch (ClassifyError(s)) {
      case ErrorClass::kOk: {
        breaker_.RecordSuccess();
        backoff_.Reset();
        unauthenticated_ = false;
        absl::StatusOr<int64_t> marked =
            storage_->MarkSynced(stream.kind, batch.pending.ids);
        if (!marked.ok()) {
          // Acknowledged but not marked: it will be resent under the same
          // number and the server will answer "duplicate"; nothing is lost or
          // doubled.
          LOG(WARNING) << "could not mark batch synced: " << marked.status();
          *error = marked.status();
          return Outcome::kRetryLater;
        }
        storage_->ClearPendingBatch(stream.name).IgnoreError();
        Note(stream, batch.pending,
             absl::StrCat("acknowledged bytes=", wire_bytes));
        absl::MutexLock lock(&mu_);
        ++stats_.successful_syncs;
        stats_.consecutive_failures = 0;
        stats_.last_success = clock_->Now();
        stats_.last_sync_duration = clock_->MonotonicNow() - sent_at;
        latencies_.push_back(stats_.last_sync_duration);
        if (latencies_.size() > 1024) latencies_.pop_front();
        switch (stream.kind) {
          case RecordKind::kMetric:
            stats_.metrics_synced += records;
            break;
          case RecordKind::kLog:
            stats_.logs_synced += records;
            break;
          case RecordKind::kEvent:
            stats_.events_synced += records;
            break;
        }
        if (batch.compressed) {
          stats_.bytes_compressed += batch.raw_bytes;
          compressed_in_ += static_cast<double>(batch.raw_bytes);
          compressed_out_ += static_cast<double>(wire_bytes);
          stats_.compression_ratio =
              compressed_out_ > 0 ? compressed_in_ / compressed_out_ : 0;
        }
        return Outcome::kMore;
      }
      case ErrorClass::kCredentials:
        LOG(ERROR) << "the server refused this device's credentials (" << s
                   << "): not sending until the key is fixed; data stays "
                      "stored";
        RecordFailure(s);
        Note(stream, batch.pending,
             absl::StrCat("refused credentials: ", s.ToString()));
        unauthenticated_ = true;
        auth_retry_at_ = clock_->MonotonicNow() + options().backoff.max;
        *error = s;
        return Outcome::kRetryLater;
      case ErrorClass::kSetAside: {
        // The server is healthy: it answered with a verdict.
        breaker_.RecordSuccess();
        if (absl::Status kept = SetAside(stream, batch, s); !kept.ok()) {
          LOG(WARNING) << "cannot set aside the rejected " << stream.name
                       << " batch " << batch.pending.sequence_number
                       << ", keeping it pending: " << kept;
          *error = kept;
          return Outcome::kRetryLater;
        }
        Note(stream, batch.pending, absl::StrCat("set aside: ", s.ToString()));
        return Outcome::kMore;
      }
      case ErrorClass::kRetry:
        break;
    }
    RecordFailure(s);
    Note(stream, batch.pending, absl::StrCat("failed: ", s.ToString()));
    LOG(WARNING) << "sync of " << stream.name << " batch "
                 << batch.pending.sequence_number << " failed (attempt "
                 << attempt + 1 << "/" << max_retries
                 << ", kept for retry): " << s;
    batch.pending.retry_count++;
    storage_->SavePendingBatch(batch.pending).IgnoreError();
    *error = s;
    if (attempt + 1 >= max_retries) break;
    // Settings from the server apply from the next wait on.
    if (BackoffOptions b = options().backoff;
        b.initial != backoff_.options().initial ||
        b.max != backoff_.options().max ||
        b.multiplier != backoff_.options().multiplier) {
      backoff_.SetOptions(b);
    }
    absl::Duration delay = backoff_.Next();
    if (auto hint = GetRetryAfter(s); hint.has_value())
      delay = std::max(delay, *hint);
    SetState("backoff");
    if (!WaitFor(delay)) return Outcome::kStopped;
  }
  return Outcome::kRetryLater;
}

absl::Status SyncManager::PrepareStream() {
  if (!options().use_stream || stream_unsupported_) return absl::OkStatus();
  if (stream_ == nullptr) {
    absl::StatusOr<std::unique_ptr<SyncStream>> opened =
        transport_->OpenStream();
    if (absl::IsUnimplemented(opened.status())) {
      LOG(WARNING) << "the transport has no streams (" << opened.status()
                   << "); syncing with unary calls";
      stream_unsupported_ = true;
      return absl::OkStatus();
    }
    if (!opened.ok()) {
      LOG(WARNING) << "cannot open StreamSync, using unary calls this cycle: "
                   << opened.status();
      return absl::OkStatus();
    }
    stream_ = *std::move(opened);
  }
  v1::StreamSyncRequest hb;
  hb.mutable_metadata()->set_device_id(options().device_id);
  v1::SyncHeartbeat* beat = hb.mutable_heartbeat();
  if (absl::StatusOr<StorageInfo> info = storage_->Info(); info.ok()) {
    beat->set_unsynced_metrics(info->of(RecordKind::kMetric).unsynced);
    beat->set_unsynced_logs(info->of(RecordKind::kLog).unsynced);
    beat->set_storage_used_bytes(info->bytes_used);
    beat->set_set_aside_batches(info->set_aside_batches);
    int64_t set_aside_records = 0;
    int64_t evicted = 0;
    for (const KindInfo& k : info->kinds) {
      set_aside_records += k.set_aside;
      evicted += k.dropped_unsynced + k.set_aside_dropped;
    }
    beat->set_set_aside_records(set_aside_records);
    beat->set_evicted_records(evicted);
  }
  if (!stream_->Write(hb).ok()) {
    stream_.reset();  // reopened next cycle; this one uses unary calls
    return absl::OkStatus();
  }
  // Take whatever the server has said so far (commands answer heartbeats
  // quickly).
  while (true) {
    absl::StatusOr<v1::StreamSyncResponse> r =
        stream_->Read(absl::Milliseconds(50));
    if (absl::IsDeadlineExceeded(r.status())) break;
    if (!r.ok()) {
      stream_.reset();
      break;
    }
    HandleCommand(*r);
  }
  if (paused_until_.has_value()) {
    absl::Duration left = *paused_until_ - clock_->MonotonicNow();
    if (left > absl::ZeroDuration()) {
      return WithRetryAfter(absl::UnavailableError("the server asked to pause"),
                            left);
    }
    paused_until_.reset();
  }
  return absl::OkStatus();
}

void SyncManager::HandleCommand(const v1::StreamSyncResponse& r) {
  switch (r.command_case()) {
    case v1::StreamSyncResponse::kConfigUpdate:
      ApplyConfig(r.config_update());
      break;
    case v1::StreamSyncResponse::kFlush:
      // The background loop syncs again once this cycle ends (never cutting a
      // backoff short).
      wakeup_.Notify();
      break;
    case v1::StreamSyncResponse::kPause:
      LOG(WARNING) << "server asked to pause for "
                   << r.pause().duration_seconds()
                   << " s: " << r.pause().reason();
      paused_until_ = clock_->MonotonicNow() +
                      absl::Seconds(std::max(1, r.pause().duration_seconds()));
      break;
    case v1::StreamSyncResponse::kResume:
      paused_until_.reset();
      break;
    default:
      break;
  }
}

absl::Status SyncManager::ExchangeOnStream(const v1::StreamSyncRequest& request,
                                           int64_t sequence) {
  if (!stream_->Write(request).ok()) {
    stream_.reset();
    return absl::UnavailableError("the sync stream broke");
  }
  absl::Time deadline = clock_->MonotonicNow() + options().call_timeout;
  while (true) {
    absl::Duration left = deadline - clock_->MonotonicNow();
    if (left <= absl::ZeroDuration()) {
      stream_.reset();  // an ack may still come on a stream we no longer read
      return absl::DeadlineExceededError("no ack on the sync stream in time");
    }
    absl::StatusOr<v1::StreamSyncResponse> r = stream_->Read(left);
    if (absl::IsDeadlineExceeded(r.status())) continue;
    if (!r.ok()) {
      absl::Status s = r.status();
      stream_.reset();
      if (absl::IsUnauthenticated(s) || absl::IsPermissionDenied(s)) return s;
      return absl::UnavailableError(
          absl::StrCat("the sync stream ended: ", s.message()));
    }
    if (!r->has_ack()) {
      HandleCommand(*r);
      continue;
    }
    const v1::SyncAck& ack = r->ack();
    if (ack.sequence_number() != sequence)
      continue;  // a late ack of an older attempt
    if (ack.success()) return absl::OkStatus();
    if (!ack.retryable()) {
      // Only our server acks on the stream: a refusal that may not be retried
      // is its verdict on this batch.
      return MarkBatchRejected(absl::InvalidArgumentError(ack.error_message()));
    }
    absl::Status s = absl::UnavailableError(ack.error_message());
    if (ack.retry_after_ms() > 0)
      s = WithRetryAfter(s, absl::Milliseconds(ack.retry_after_ms()));
    return s;
  }
}

void SyncManager::Note(const Stream& stream, const PendingBatch& pending,
                       absl::string_view outcome) {
  std::string line =
      absl::StrCat(absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", clock_->Now(),
                                    absl::UTCTimeZone()),
                   " ", stream.name, " seq=", pending.sequence_number,
                   " records=", pending.record_count,
                   " retry=", pending.retry_count, " ", outcome);
  absl::MutexLock lock(&mu_);
  recent_.push_back(std::move(line));
  while (recent_.size() > 200) recent_.pop_front();
}

std::vector<std::string> SyncManager::RecentActivity() {
  absl::MutexLock lock(&mu_);
  return {recent_.begin(), recent_.end()};
}

SyncMetricsSnapshot SyncManager::GetMetrics() {
  absl::MutexLock lock(&mu_);
  SyncMetricsSnapshot m = stats_;
  if (!latencies_.empty()) {
    std::vector<absl::Duration> sorted(latencies_.begin(), latencies_.end());
    std::sort(sorted.begin(), sorted.end());
    auto at = [&](double q) {
      size_t i =
          static_cast<size_t>(q * static_cast<double>(sorted.size() - 1) + 0.5);
      return sorted[std::min(i, sorted.size() - 1)];
    };
    m.latency_p50 = at(0.50);
    m.latency_p95 = at(0.95);
    m.latency_p99 = at(0.99);
  }
  return m;
}

}  // namespace fleetd::agent
