#include "agent/sync/sync_manager.h"

#include <openssl/sha.h>

#include <algorithm>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/status/retry_after.h"
#include "common/status/retryable.h"
#include "common/status/status_macros.h"
#include "glog/logging.h"

namespace fleetd::agent {
namespace {

// Reserved pending-batch slot holding a stream's last used sequence number, so
// numbers never repeat even if the device clock goes back (no RTC, before NTP).
std::string SequenceSlot(absl::string_view stream) {
  return absl::StrCat("seq/", stream);
}

void SetTimestamp(google::protobuf::Timestamp* ts, absl::Time t) {
  int64_t nanos = absl::ToUnixNanos(t);
  ts->set_seconds(nanos / 1'000'000'000);
  ts->set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
}

std::string Sha256(const std::string& data) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), d);
  return std::string(reinterpret_cast<const char*>(d), sizeof(d));
}

// Fills `batch` (MetricsBatch, LogsBatch or EventsBatch) for the wire from its
// serialization `raw`: compressed when that saves at least 10 %.
template <typename Batch>
absl::Status Pack(Compression codec, const std::string& raw, Batch* batch,
                  bool* compressed) {
  *compressed = false;
  if (codec == Compression::kNone) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string packed, Compress(codec, raw));
  if (packed.size() * 10 > raw.size() * 9)
    return absl::OkStatus();  // saves < 10 %
  Batch wire;
  wire.set_compression(std::string(CompressionName(codec)));
  wire.set_compressed_data(std::move(packed));
  wire.set_original_size(static_cast<int32_t>(raw.size()));
  *batch = std::move(wire);
  *compressed = true;
  return absl::OkStatus();
}

// Per-kind pieces of sending a batch, so SendBatch is written once.
void PutOnStream(const v1::MetricsBatch& b, v1::StreamSyncRequest* r) {
  *r->mutable_metrics() = b;
}
void PutOnStream(const v1::LogsBatch& b, v1::StreamSyncRequest* r) {
  *r->mutable_logs() = b;
}
void PutOnStream(const v1::EventsBatch& b, v1::StreamSyncRequest* r) {
  *r->mutable_events() = b;
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

}  // namespace

struct SyncManager::Stream {
  std::string name;
  RecordKind kind;
  bool fresh_turn = false;
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
      bucket_(options.max_records_per_second > 0
                  ? options.max_records_per_second
                  : 1e12,
              std::max<double>(options.batch_size, 1), clock) {
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
  absl::MutexLock lock(&mu_);
  if (!options_.interval_pinned && c.sync_interval_seconds() > 0) {
    options_.interval = absl::Seconds(c.sync_interval_seconds());
  }
  if (!options_.batch_size_pinned && c.batch_size() > 0) {
    options_.batch_size = c.batch_size();
  }
  if (!options_.compression_pinned && !c.compression_type().empty()) {
    auto codec = ParseCompression(c.compression_enabled() ? c.compression_type()
                                                          : "none");
    if (codec.ok()) options_.compression = *codec;
  }
  // max_metrics_per_second caps collection, not sync: throttling the sync to
  // the collection rate would keep a backlog from ever draining after an
  // outage.
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
  wakeup_.Notify();
  if (thread_.joinable()) thread_.join();
}

void SyncManager::TriggerSync() { wakeup_.Notify(); }

bool SyncManager::WaitFor(absl::Duration d) {
  if (stopping_) return false;
  clock_->SleepFor(d, &wakeup_);
  return !stopping_;
}

void SyncManager::Loop() {
  while (!stopping_) {
    wakeup_.Reset();
    absl::Status s = Cycle();
    if (stopping_) break;
    clock_->SleepFor(DelayAfter(s), &wakeup_);
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

absl::Status SyncManager::SyncNow() { return Cycle(); }

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
  gauge("quarantined_records",
        "Records in batches the server rejected as invalid.",
        m.quarantined_records);
  gauge("circuit_open", "1 while the circuit breaker is open.",
        m.state == "circuit_open" ? 1 : 0);
}

absl::Status SyncManager::Cycle() {
  absl::MutexLock cycle(&cycle_mu_);
  if (unauthenticated_ && clock_->MonotonicNow() < auth_retry_at_) {
    return absl::UnauthenticatedError(
        "the server refused the API key; not sending");
  }
  if (absl::Status s = PrepareStream(); !s.ok()) {
    SetState("paused");
    return s;
  }
  SetState("syncing");
  Stream streams[] = {{"metrics", RecordKind::kMetric},
                      {"logs", RecordKind::kLog},
                      {"events", RecordKind::kEvent}};
  absl::Status last_error;
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
        case Outcome::kStopped:
          last_error = error.ok() ? absl::UnavailableError("stopped") : error;
          SetState(unauthenticated_ ? "unauthenticated"
                   : breaker_.state() == CircuitBreaker::State::kOpen
                       ? "circuit_open"
                       : "backoff");
          PublishMetrics();
          return last_error;
      }
    }
    if (!any) break;
  }
  {
    absl::MutexLock lock(&mu_);
    stats_.state = "idle";
  }
  PublishMetrics();
  return absl::OkStatus();
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

absl::StatusOr<std::optional<PendingBatch>> SyncManager::NextBatch(
    Stream& stream) {
  ASSIGN_OR_RETURN(std::optional<PendingBatch> pending,
                   storage_->LoadPendingBatch(stream.name));
  if (pending.has_value()) return pending;  // resend under the same number

  int32_t batch_size = options().batch_size;
  ReadOptions read;
  read.max_records = batch_size;
  // While a backlog drains, every other batch carries the newest records.
  if (stream.fresh_turn) {
    ASSIGN_OR_RETURN(StorageInfo info, storage_->Info());
    const KindInfo& k = info.of(stream.kind);
    if (k.unsynced > batch_size) {
      read.after_id = std::max<int64_t>(0, k.next_id - 1 - batch_size);
    }
  }
  stream.fresh_turn = !stream.fresh_turn;
  IdRange ids;
  int32_t count = 0;
  // Reads with `read`; an empty fresh read (the newest are already synced)
  // falls back to the oldest records.
  for (int pass = 0; pass < 2 && count == 0; ++pass) {
    if (pass == 1) {
      if (read.after_id == 0) break;
      read.after_id = 0;
    }
    switch (stream.kind) {
      case RecordKind::kMetric: {
        ASSIGN_OR_RETURN(auto records, storage_->ReadMetrics(read));
        if (records.empty()) break;
        ids = {records.front().id, records.back().id};
        count = static_cast<int32_t>(records.size());
        break;
      }
      case RecordKind::kLog: {
        ASSIGN_OR_RETURN(auto records, storage_->ReadLogs(read));
        if (records.empty()) break;
        ids = {records.front().id, records.back().id};
        count = static_cast<int32_t>(records.size());
        break;
      }
      case RecordKind::kEvent: {
        ASSIGN_OR_RETURN(auto records, storage_->ReadEvents(read));
        if (records.empty()) break;
        ids = {records.front().id, records.back().id};
        count = static_cast<int32_t>(records.size());
        break;
      }
    }
  }
  if (count == 0) return std::nullopt;
  PendingBatch batch;
  batch.stream = stream.name;
  batch.kind = stream.kind;
  ASSIGN_OR_RETURN(batch.sequence_number, NextSequence(stream));
  batch.ids = ids;
  batch.record_count = count;
  RETURN_IF_ERROR(storage_->SavePendingBatch(batch));
  return batch;
}

// Serializes the records of `pending` (re-read from the store by id range) as
// the stream's batch message. `records` is how many are still unsynced.
absl::Status SyncManager::BuildRequest(const Stream& stream,
                                       const PendingBatch& pending,
                                       std::string* serialized, int* records) {
  ReadOptions read;
  read.after_id = pending.ids.first - 1;
  read.until_id = pending.ids.last;
  read.max_records =
      static_cast<int32_t>(std::max<int64_t>(pending.ids.size(), 1));
  switch (stream.kind) {
    case RecordKind::kMetric: {
      ASSIGN_OR_RETURN(auto stored, storage_->ReadMetrics(read));
      v1::MetricsBatch batch;
      for (auto& r : stored) *batch.add_metrics() = std::move(r.record);
      *records = batch.metrics_size();
      *serialized = batch.SerializeAsString();
      break;
    }
    case RecordKind::kLog: {
      ASSIGN_OR_RETURN(auto stored, storage_->ReadLogs(read));
      v1::LogsBatch batch;
      for (auto& r : stored) *batch.add_logs() = std::move(r.record);
      *records = batch.logs_size();
      *serialized = batch.SerializeAsString();
      break;
    }
    case RecordKind::kEvent: {
      ASSIGN_OR_RETURN(auto stored, storage_->ReadEvents(read));
      v1::EventsBatch batch;
      for (auto& r : stored) *batch.add_events() = std::move(r.record);
      *records = batch.events_size();
      *serialized = batch.SerializeAsString();
      break;
    }
  }
  return absl::OkStatus();
}

absl::Status SyncManager::Transmit(const Stream& stream,
                                   const PendingBatch& pending,
                                   const std::string& serialized,
                                   int64_t* wire_bytes) {
  SyncOptions o = options();
  v1::SyncMetadata md;
  md.set_device_id(o.device_id);
  md.set_org_id(o.org_id);
  md.set_sequence_number(pending.sequence_number);
  SetTimestamp(md.mutable_client_time(), clock_->Now());
  md.set_retry_count(pending.retry_count);
  md.set_checksum(Sha256(serialized));
  *md.mutable_capability() = o.capability;
  md.set_stream(stream.name);
  md.set_record_count(pending.record_count);
  bool compressed = false;
  absl::Status sent;
  switch (stream.kind) {
    case RecordKind::kMetric:
      sent = SendBatch<v1::SyncMetricsRequest>(md, serialized, o, wire_bytes,
                                               &compressed);
      break;
    case RecordKind::kLog:
      sent = SendBatch<v1::SyncLogsRequest>(md, serialized, o, wire_bytes,
                                            &compressed);
      break;
    case RecordKind::kEvent:
      sent = SendBatch<v1::SyncEventsRequest>(md, serialized, o, wire_bytes,
                                              &compressed);
      break;
  }
  RETURN_IF_ERROR(sent);
  if (compressed) {
    absl::MutexLock lock(&mu_);
    stats_.bytes_compressed += static_cast<int64_t>(serialized.size());
    compressed_in_ += static_cast<double>(serialized.size());
    compressed_out_ += static_cast<double>(*wire_bytes);
    stats_.compression_ratio =
        compressed_out_ > 0 ? compressed_in_ / compressed_out_ : 0;
  }
  return absl::OkStatus();
}

template <typename Request>
absl::Status SyncManager::SendBatch(const v1::SyncMetadata& md,
                                    const std::string& serialized,
                                    const SyncOptions& o, int64_t* wire_bytes,
                                    bool* compressed) {
  Request r;
  *r.mutable_metadata() = md;
  if (!r.mutable_batch()->ParseFromString(serialized)) {
    return absl::InternalError("cannot re-parse batch");
  }
  RETURN_IF_ERROR(
      Pack(o.compression, serialized, r.mutable_batch(), compressed));
  *wire_bytes = static_cast<int64_t>(r.ByteSizeLong());
  if (stream_ != nullptr) {
    v1::StreamSyncRequest sr;
    *sr.mutable_metadata() = md;
    PutOnStream(r.batch(), &sr);
    return ExchangeOnStream(sr, md.sequence_number());
  }
  auto resp = CallUnary(*transport_, r, o.call_timeout);
  if (!resp.ok()) return resp.status();
  if (!resp->success()) {
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

void SyncManager::Quarantine(const Stream& stream, const PendingBatch& pending,
                             const std::string& serialized,
                             const absl::Status& why) {
  LOG(ERROR) << "server rejected " << stream.name << " batch "
             << pending.sequence_number << " (" << pending.record_count
             << " records) as invalid: " << why
             << "; quarantining it so it does not block the queue";
  std::string dir = options().quarantine_dir;
  if (!dir.empty()) {
    std::string path = absl::StrCat(dir, "/", stream.name, "-",
                                    pending.sequence_number, ".pb");
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << serialized;
    if (!out) LOG(ERROR) << "could not write quarantined batch to " << path;
  }
  absl::MutexLock lock(&mu_);
  stats_.quarantined_records += pending.record_count;
  stats_.last_error = std::string(why.message());
}

void SyncManager::RecordFailure(const absl::Status& s) {
  breaker_.RecordFailure();
  absl::MutexLock lock(&mu_);
  ++stats_.failed_syncs;
  ++stats_.consecutive_failures;
  stats_.last_error = s.ToString();
}

SyncManager::Outcome SyncManager::SendOne(Stream& stream, absl::Status* error) {
  absl::StatusOr<std::optional<PendingBatch>> next = NextBatch(stream);
  if (!next.ok()) {
    *error = next.status();
    LOG(WARNING) << "cannot read " << stream.name
                 << " from the store: " << next.status();
    return Outcome::kRetryLater;
  }
  if (!next->has_value()) return Outcome::kDone;
  PendingBatch pending = **next;
  std::string serialized;
  int records = 0;
  if (absl::Status s = BuildRequest(stream, pending, &serialized, &records);
      !s.ok()) {
    *error = s;
    return Outcome::kRetryLater;
  }
  if (records == 0) {
    // Everything in the batch was evicted or cleaned meanwhile; nothing to
    // send.
    storage_->ClearPendingBatch(stream.name).IgnoreError();
    return Outcome::kMore;
  }
  pending.record_count = records;
  int32_t max_retries = std::max(1, options().max_retries);
  for (int attempt = 0; attempt < max_retries; ++attempt) {
    if (stopping_) return Outcome::kStopped;
    if (!breaker_.Allow()) {
      *error = WithRetryAfter(
          absl::UnavailableError("circuit open: server keeps failing"),
          breaker_.RetryAfter());
      return Outcome::kRetryLater;
    }
    // Rate limit: wait for tokens (a whole batch may exceed a tiny burst: then
    // wait for one burst's worth).
    double want =
        std::min<double>(records, std::max<double>(options().batch_size, 1));
    absl::Duration wait = bucket_.TimeUntilAvailable(want);
    if (wait > absl::ZeroDuration() && wait != absl::InfiniteDuration() &&
        !WaitFor(wait)) {
      return Outcome::kStopped;
    }
    bucket_.TryConsume(want);

    int64_t wire_bytes = 0;
    absl::Time sent_at = clock_->MonotonicNow();
    absl::Status s = Transmit(stream, pending, serialized, &wire_bytes);
    {
      absl::MutexLock lock(&mu_);
      stats_.bytes_sent += wire_bytes;
    }
    if (s.ok()) {
      breaker_.RecordSuccess();
      backoff_.Reset();
      unauthenticated_ = false;
      absl::StatusOr<int64_t> marked =
          storage_->MarkSynced(stream.kind, pending.ids);
      if (!marked.ok()) {
        // Acknowledged but not marked: it will be resent under the same number
        // and the server will answer "duplicate"; nothing is lost or doubled.
        LOG(WARNING) << "could not mark batch synced: " << marked.status();
        *error = marked.status();
        return Outcome::kRetryLater;
      }
      storage_->ClearPendingBatch(stream.name).IgnoreError();
      Note(stream, pending, absl::StrCat("acknowledged bytes=", wire_bytes));
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
      return Outcome::kMore;
    }
    if (absl::IsUnauthenticated(s) || absl::IsPermissionDenied(s)) {
      LOG(ERROR) << "the server refused this device's credentials (" << s
                 << "): not sending until the key is fixed; data stays stored";
      RecordFailure(s);
      Note(stream, pending,
           absl::StrCat("refused credentials: ", s.ToString()));
      unauthenticated_ = true;
      auth_retry_at_ = clock_->MonotonicNow() + options().backoff.max;
      *error = s;
      return Outcome::kRetryLater;
    }
    if (!IsRetryable(s.code())) {
      Quarantine(stream, pending, serialized, s);
      Note(stream, pending, absl::StrCat("quarantined: ", s.ToString()));
      storage_->MarkSynced(stream.kind, pending.ids).IgnoreError();
      storage_->ClearPendingBatch(stream.name).IgnoreError();
      return Outcome::kMore;
    }
    RecordFailure(s);
    Note(stream, pending, absl::StrCat("failed: ", s.ToString()));
    LOG(WARNING) << "sync of " << stream.name << " batch "
                 << pending.sequence_number << " failed (attempt "
                 << attempt + 1 << "/" << max_retries << "): " << s;
    pending.retry_count++;
    storage_->SavePendingBatch(pending).IgnoreError();
    *error = s;
    if (attempt + 1 >= max_retries) break;
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
      wakeup_.Notify();  // the background loop syncs again right away
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
    if (!ack.retryable())
      return absl::InvalidArgumentError(ack.error_message());
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
