#include "server/router/group_commit.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status/error_class.h"
#include "common/status/retry_after.h"
#include "glog/logging.h"

namespace fleetd::server {

GroupCommitter::GroupCommitter(Writer* writer, Clock* clock,
                               metrics::Registry* metrics, Options options)
    : writer_(writer),
      clock_(clock),
      options_(options),
      breaker_(options.breaker, clock),
      metrics_(metrics) {
  if (metrics != nullptr) {
    std::string backend(writer->name());
    auto& flushes = metrics->CounterFamily(
        "fleetd_backend_flushes_total", "Coalesced backend writes by result.",
        {"backend", "result"});
    flushes_ok_ = &flushes.WithLabels({backend, "ok"});
    flushes_failed_ = &flushes.WithLabels({backend, "error"});
    records_written_ =
        &metrics
             ->CounterFamily("fleetd_backend_records_written_total",
                             "Records accepted by each backend.", {"backend"})
             .WithLabels({backend});
    auto& rejected = metrics->CounterFamily(
        "fleetd_backend_rejected_batches_total",
        "Device batches refused before reaching the backend, by reason.",
        {"backend", "reason"});
    rejected_overload_ = &rejected.WithLabels({backend, "queue_full"});
    rejected_breaker_ = &rejected.WithLabels({backend, "circuit_open"});
    isolation_writes_ =
        &metrics
             ->CounterFamily("fleetd_router_isolation_writes_total",
                             "Extra backend writes made to find the batch a "
                             "backend refused in a coalesced write.",
                             {"backend"})
             .WithLabels({backend});
    isolated_batches_ = &rejected.WithLabels({backend, "content_refused"});
    queue_bytes_gauge_ =
        &metrics
             ->GaugeFamily("fleetd_backend_queue_bytes",
                           "Bytes of batches waiting for each backend.",
                           {"backend"})
             .WithLabels({backend});
    flush_seconds_ =
        &metrics
             ->HistogramFamily("fleetd_backend_flush_seconds",
                               "Duration of coalesced backend writes.",
                               {"backend"}, metrics::LatencyBuckets())
             .WithLabels({backend});
    flush_batches_ =
        &metrics
             ->HistogramFamily("fleetd_backend_flush_batches",
                               "Device batches per coalesced backend write.",
                               {"backend"},
                               {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000})
             .WithLabels({backend});
    restarts_detected_ =
        &metrics
             ->CounterFamily("fleetd_backend_restarts_detected_total",
                             "Backend restarts noticed by a change of its "
                             "instance identity (the replay window is then "
                             "written again).",
                             {"backend"})
             .WithLabels({backend});
    replayed_batches_ =
        &metrics
             ->CounterFamily("fleetd_backend_replayed_batches_total",
                             "Acknowledged device batches written again "
                             "after a backend restart.",
                             {"backend"})
             .WithLabels({backend});
    replay_failures_ =
        &metrics
             ->CounterFamily("fleetd_backend_replay_failures_total",
                             "Replay writes that failed (retried at the next "
                             "poll).",
                             {"backend"})
             .WithLabels({backend});
    window_evicted_ =
        &metrics
             ->CounterFamily("fleetd_backend_replay_window_evicted_total",
                             "Acknowledged device batches dropped from the "
                             "replay window before their time because it "
                             "reached FLEET_REPLAY_WINDOW_BYTES.",
                             {"backend"})
             .WithLabels({backend});
    window_bytes_gauge_ =
        &metrics
             ->GaugeFamily("fleetd_backend_replay_window_bytes",
                           "Bytes of acknowledged batches kept for replay "
                           "after a backend restart.",
                           {"backend"})
             .WithLabels({backend});
  }
  {
    absl::MutexLock lock(&window_mu_);
    confirmed_at_ = clock_->MonotonicNow();
  }
  for (int i = 0; i < std::max(1, options_.flush_threads); ++i) {
    threads_.emplace_back([this] { FlushLoop(); });
  }
  if (replay_enabled()) monitor_ = std::thread([this] { MonitorLoop(); });
}

GroupCommitter::~GroupCommitter() {
  monitor_stop_.Notify();
  if (monitor_.joinable()) monitor_.join();
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (auto& t : threads_) t.join();
  std::vector<Pending> rest;
  {
    absl::MutexLock lock(&mu_);
    rest.assign(std::make_move_iterator(queue_.begin()),
                std::make_move_iterator(queue_.end()));
    queue_.clear();
  }
  SetOutcome(absl::MakeSpan(rest),
             absl::UnavailableError("server shutting down"));
  Complete(absl::MakeSpan(rest));
}

size_t GroupCommitter::queued_bytes() {
  absl::MutexLock lock(&mu_);
  return queued_bytes_;
}

size_t GroupCommitter::queued_batches() {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

size_t GroupCommitter::replay_window_batches() {
  absl::MutexLock lock(&window_mu_);
  size_t n = 0;
  for (const WindowEntry& e : window_) n += e.batches.size();
  return n;
}

size_t GroupCommitter::replay_window_bytes() {
  absl::MutexLock lock(&window_mu_);
  return window_bytes_;
}

int64_t GroupCommitter::monitor_rounds() {
  absl::MutexLock lock(&window_mu_);
  return monitor_rounds_;
}

absl::Status GroupCommitter::Admit(Pending p) {
  if (!breaker_.Allow()) {
    if (rejected_breaker_ != nullptr) rejected_breaker_->Increment();
    return WithRetryAfter(
        absl::UnavailableError(
            absl::StrCat(writer_->name(), " is failing; not writing")),
        std::max(breaker_.RetryAfter(), absl::Milliseconds(100)));
  }
  // In half-open state Allow() admitted this batch as the probe; its flush
  // reports back.
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("server shutting down");
  if (queued_bytes_ + p.bytes > options_.max_queue_bytes && !queue_.empty()) {
    if (rejected_overload_ != nullptr) rejected_overload_->Increment();
    LOG_EVERY_T(WARNING, 1) << "queue for " << writer_->name() << " is full ("
                            << queued_bytes_ << " bytes); refusing a batch";
    return WithRetryAfter(
        absl::ResourceExhaustedError(absl::StrCat(
            "server overloaded: ", writer_->name(), " queue is full")),
        options_.overload_retry_after);
  }
  queued_bytes_ += p.bytes;
  queued_records_ += p.batch->record_count();
  if (queue_bytes_gauge_ != nullptr) queue_bytes_gauge_->Set(queued_bytes_);
  queue_.push_back(std::move(p));
  return absl::OkStatus();
}

absl::StatusOr<GroupCommitter::Ticket> GroupCommitter::Enqueue(
    std::shared_ptr<const DecodedBatch> batch) {
  const size_t bytes = batch->approx_bytes();
  Ticket ticket;
  ticket.result_ = std::make_shared<Result>();
  absl::Status admitted =
      Admit(Pending{std::move(batch), bytes, ticket.result_, nullptr});
  if (!admitted.ok()) return admitted;
  return ticket;
}

absl::Status GroupCommitter::Enqueue(std::shared_ptr<const DecodedBatch> batch,
                                     Done done) {
  CHECK(done) << "GroupCommitter::Enqueue needs a callback";
  const size_t bytes = batch->approx_bytes();
  return Admit(Pending{std::move(batch), bytes, nullptr, std::move(done)});
}

absl::Status GroupCommitter::Wait(const Ticket& ticket, absl::Time deadline) {
  // Waits in real time, re-checking the caller's deadline on our clock at least
  // every second so that a simulated clock in tests is honoured too.
  Result* r = ticket.result_.get();
  absl::MutexLock lock(&r->mu);
  while (!r->done) {
    absl::Duration left = deadline - clock_->MonotonicNow();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(
          absl::StrCat("deadline passed waiting for ", writer_->name()));
    }
    r->mu.AwaitWithTimeout(absl::Condition(&r->done),
                           std::min(left, absl::Seconds(1)));
  }
  return r->status;
}

absl::Status GroupCommitter::Submit(std::shared_ptr<const DecodedBatch> batch,
                                    absl::Time deadline) {
  absl::StatusOr<Ticket> ticket = Enqueue(std::move(batch));
  if (!ticket.ok()) return ticket.status();
  return Wait(*ticket, deadline);
}

absl::Status GroupCommitter::Health() {
  absl::MutexLock lock(&health_mu_);
  return misconfigured_;
}

void GroupCommitter::NoteBackendHealth(const absl::Status& backend_error) {
  std::optional<std::string> reason = MisconfigurationReason(backend_error);
  if (!reason.has_value()) {
    // A write that landed (or an outage, which says nothing about our setup)
    // ends a misconfiguration only when the backend accepted data.
    if (!backend_error.ok()) return;
    absl::MutexLock lock(&health_mu_);
    if (!misconfigured_.ok()) {
      LOG(INFO) << writer_->name()
                << " accepts writes again; no longer misconfigured";
      misconfigured_ = absl::OkStatus();
    }
    return;
  }
  if (metrics_ != nullptr) {
    metrics_
        ->CounterFamily("fleetd_backend_misconfigured_total",
                        "Backend writes refused because of this server's "
                        "configuration (credentials, tenant, URL, request "
                        "size), by backend and HTTP status.",
                        {"backend", "status"})
        .WithLabels({std::string(writer_->name()), *reason})
        .Increment();
  }
  absl::Status now = absl::UnavailableError(absl::StrCat(
      writer_->name(), " refuses this server's writes (", *reason,
      "): check its URL, credentials and tenant; devices keep their data and "
      "retry: ",
      backend_error.message()));
  absl::MutexLock lock(&health_mu_);
  if (misconfigured_.message() != now.message()) {
    LOG(WARNING) << writer_->name()
                 << " refuses writes because of this server's configuration ("
                 << *reason << "): " << backend_error.message()
                 << "; devices keep their data and retry";
  }
  misconfigured_ = std::move(now);
}

bool IsContentRefusal(const absl::Status& status) {
  return absl::IsInvalidArgument(status) || absl::IsOutOfRange(status);
}

void GroupCommitter::SetOutcome(absl::Span<Pending> span,
                                const absl::Status& status) {
  for (Pending& p : span) p.outcome = status;
}

void GroupCommitter::Complete(absl::Span<Pending> taken) {
  for (Pending& p : taken) {
    if (p.done) {
      std::move(p.done)(p.outcome);
      continue;
    }
    absl::MutexLock lock(&p.result->mu);
    p.result->status = p.outcome;
    p.result->done = true;
  }
}

GroupCommitter::SpanResult GroupCommitter::WriteSpan(absl::Span<Pending> span) {
  std::vector<const DecodedBatch*> batches;
  batches.reserve(span.size());
  int records = 0;
  for (const Pending& p : span) {
    batches.push_back(p.batch.get());
    records += p.batch->record_count();
  }
  absl::Status status = writer_->Write(batches);
  if (status.ok()) {
    SetOutcome(span, status);
    return {absl::OkStatus(), records};
  }
  if (IsContentRefusal(status)) return Isolate(span, status);
  SetOutcome(span, status);
  return {status, 0};
}

GroupCommitter::SpanResult GroupCommitter::Isolate(
    absl::Span<Pending> span, const absl::Status& refusal) {
  if (span.size() == 1) {
    const DecodedBatch& b = *span[0].batch;
    absl::Status rejected = MarkBatchRejected(absl::InvalidArgumentError(
        absl::StrCat(writer_->name(), " refused batch ", b.sequence_number,
                     " of stream ", b.stream, " (device ", b.device.device_id,
                     "): ", refusal.message())));
    LOG(WARNING) << writer_->name() << " refused the batch of device "
                 << b.device.device_id << ", stream " << b.stream
                 << ", sequence " << b.sequence_number << " ("
                 << b.record_count() << " records): " << refusal;
    if (isolated_batches_ != nullptr) isolated_batches_->Increment();
    span[0].outcome = std::move(rejected);
    return {};
  }
  size_t half = span.size() / 2;
  SpanResult out;
  for (absl::Span<Pending> part : {span.subspan(0, half), span.subspan(half)}) {
    if (isolation_writes_ != nullptr) isolation_writes_->Increment();
    SpanResult r = WriteSpan(part);
    out.records_written += r.records_written;
    if (out.backend_error.ok()) out.backend_error = r.backend_error;
  }
  return out;
}

void GroupCommitter::FlushLoop() {
  while (true) {
    std::vector<Pending> taken;
    {
      absl::MutexLock lock(&mu_);
      // Alone, any batch is worth a flush; beside another flush, only half
      // a full one.
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        if (stopping_) return true;
        if (queue_.empty()) return false;
        return flushes_in_flight_ == 0 ||
               2 * queued_records_ >= options_.max_records_per_flush ||
               2 * queued_bytes_ >= options_.max_bytes_per_flush;
      };
      mu_.Await(absl::Condition(&ready));
      if (stopping_) return;
      if (options_.linger > absl::ZeroDuration()) {
        auto full = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || queued_bytes_ >= options_.max_bytes_per_flush;
        };
        mu_.AwaitWithTimeout(absl::Condition(&full), options_.linger);
        // Another flusher may have started while this one lingered.
        if (!ready()) continue;
      }
      int records = 0;
      size_t bytes = 0;
      while (!queue_.empty()) {
        const Pending& next = queue_.front();
        int n = next.batch->record_count();
        if (!taken.empty() &&
            (records + n > options_.max_records_per_flush ||
             bytes + next.bytes > options_.max_bytes_per_flush)) {
          break;
        }
        records += n;
        bytes += next.bytes;
        taken.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      queued_bytes_ -= bytes;
      queued_records_ -= records;
      ++flushes_in_flight_;
      if (queue_bytes_gauge_ != nullptr) queue_bytes_gauge_->Set(queued_bytes_);
    }
    int records = 0;
    for (const Pending& p : taken) records += p.batch->record_count();
    int64_t generation = 0;
    if (replay_enabled()) {
      absl::MutexLock lock(&window_mu_);
      generation = generation_;
    }
    absl::Time start = clock_->MonotonicNow();
    std::vector<const DecodedBatch*> batches;
    batches.reserve(taken.size());
    for (const Pending& p : taken) batches.push_back(p.batch.get());
    absl::Status status = writer_->Write(batches);
    SpanResult result{status, status.ok() ? records : 0};
    if (status.ok()) {
      SetOutcome(absl::MakeSpan(taken), status);
    } else if (IsContentRefusal(status)) {
      LOG(WARNING) << writer_->name() << " refused a write of " << taken.size()
                   << " batches (" << records << " records): " << status
                   << "; splitting it to find the refused batch";
      result = Isolate(absl::MakeSpan(taken), status);
    } else {
      SetOutcome(absl::MakeSpan(taken), status);
    }
    absl::Duration took = clock_->MonotonicNow() - start;
    NoteBackendHealth(result.backend_error);
    if (result.backend_error.ok()) {
      breaker_.RecordSuccess();
      if (flushes_ok_ != nullptr) flushes_ok_->Increment();
    } else {
      breaker_.RecordFailure();
      if (flushes_failed_ != nullptr) flushes_failed_->Increment();
      LOG(WARNING) << "write of " << batches.size() << " batches (" << records
                   << " records) to " << writer_->name()
                   << " failed: " << result.backend_error;
    }
    if (records_written_ != nullptr && result.records_written > 0) {
      records_written_->Increment(result.records_written);
    }
    if (flush_seconds_ != nullptr)
      flush_seconds_->Observe(absl::ToDoubleSeconds(took));
    if (flush_batches_ != nullptr) flush_batches_->Observe(batches.size());
    // Before acknowledging: once a device hears OK it drops the batch, so from
    // then on the window is what covers a backend crash.
    if (replay_enabled() && result.records_written > 0) {
      Remember(absl::MakeConstSpan(taken), generation, clock_->MonotonicNow());
    }
    {
      absl::MutexLock lock(&mu_);
      --flushes_in_flight_;
    }
    // Last, so that a caller who sees its outcome also sees the metrics and
    // health it caused.
    Complete(absl::MakeSpan(taken));
  }
}

void GroupCommitter::Remember(absl::Span<const Pending> taken,
                              int64_t generation, absl::Time written_at) {
  WindowEntry entry;
  entry.written_at = written_at;
  entry.generation = generation;
  for (const Pending& p : taken) {
    if (!p.outcome.ok()) continue;  // refused: its device keeps it
    entry.batches.push_back(p.batch);
    entry.bytes += p.bytes;
  }
  if (entry.batches.empty()) return;
  absl::MutexLock lock(&window_mu_);
  if (support_ == ReplaySupport::kNo) return;
  entry.id = next_entry_id_++;
  // A restart noticed while this write was in flight: it may have reached the
  // old process, so it is due for replay like the rest of the window.
  if (generation < generation_) replay_due_ = true;
  window_bytes_ += entry.bytes;
  window_.push_back(std::move(entry));
  EvictLocked();
}

void GroupCommitter::PopFrontLocked() {
  window_bytes_ -= window_.front().bytes;
  window_.pop_front();
}

void GroupCommitter::EvictLocked() {
  // By age: only entries written to the current backend process, and measured
  // back from the last poll that saw that process alive.
  const absl::Time cutoff = confirmed_at_ - options_.replay_window;
  while (!window_.empty() && window_.front().generation == generation_ &&
         window_.front().written_at < cutoff) {
    PopFrontLocked();
  }
  // By bytes, oldest first; always keeps the newest entry.
  size_t evicted_batches = 0;
  absl::Time oldest_evicted = absl::InfiniteFuture();
  while (window_.size() > 1 && window_bytes_ > options_.replay_window_bytes) {
    evicted_batches += window_.front().batches.size();
    oldest_evicted = std::min(oldest_evicted, window_.front().written_at);
    PopFrontLocked();
  }
  if (window_bytes_gauge_ != nullptr) window_bytes_gauge_->Set(window_bytes_);
  if (evicted_batches == 0) return;
  if (window_evicted_ != nullptr) window_evicted_->Increment(evicted_batches);
  const absl::Time now = clock_->MonotonicNow();
  if (now - last_eviction_warning_ >= absl::Minutes(1)) {
    last_eviction_warning_ = now;
    LOG(WARNING) << "replay window of " << writer_->name() << " is full ("
                 << window_bytes_ << " bytes, FLEET_REPLAY_WINDOW_BYTES="
                 << options_.replay_window_bytes << "): dropped "
                 << evicted_batches << " acknowledged batches written "
                 << absl::ToInt64Seconds(now - oldest_evicted)
                 << " s ago, before their "
                 << absl::FormatDuration(options_.replay_window)
                 << "; a crash of " << writer_->name()
                 << " may now lose them. Raise FLEET_REPLAY_WINDOW_BYTES "
                    "(its identity was last confirmed "
                 << absl::ToInt64Seconds(now - confirmed_at_) << " s ago)";
  }
}

void GroupCommitter::MonitorLoop() {
  while (true) {
    PollInstance();
    bool due;
    {
      absl::MutexLock lock(&window_mu_);
      due = replay_due_;
    }
    if (due && Replay()) {
      absl::MutexLock lock(&window_mu_);
      // Set again by Remember when a write from before the restart landed
      // after Replay looked.
      bool stale = false;
      for (const WindowEntry& e : window_) {
        if (e.generation < generation_) stale = true;
      }
      replay_due_ = stale;
    }
    {
      absl::MutexLock lock(&window_mu_);
      ++monitor_rounds_;
    }
    if (clock_->SleepUntil(
            clock_->MonotonicNow() + options_.replay_poll_interval,
            &monitor_stop_) ||
        monitor_stop_.Notified()) {
      return;
    }
  }
}

void GroupCommitter::PollInstance() {
  absl::StatusOr<std::string> id = writer_->InstanceId();
  const absl::Time now = clock_->MonotonicNow();
  absl::MutexLock lock(&window_mu_);
  if (absl::IsUnimplemented(id.status())) {
    if (support_ != ReplaySupport::kNo) {
      LOG(INFO) << writer_->name()
                << " does not tell its instance identity: no replay window ("
                << id.status().message() << ")";
      support_ = ReplaySupport::kNo;
      window_.clear();
      window_bytes_ = 0;
      replay_due_ = false;
      if (window_bytes_gauge_ != nullptr) window_bytes_gauge_->Set(0);
    }
    return;
  }
  // Down or unreachable: ask again at the next round; nothing ages out.
  if (!id.ok()) return;
  support_ = ReplaySupport::kYes;
  if (!instance_.has_value()) {
    LOG(INFO) << writer_->name() << " instance " << *id
              << ": acknowledged writes are kept for replay for "
              << absl::FormatDuration(options_.replay_window) << " (at most "
              << options_.replay_window_bytes << " bytes)";
  } else if (*instance_ != *id) {
    ++generation_;
    size_t batches = 0;
    for (const WindowEntry& e : window_) batches += e.batches.size();
    replay_due_ = true;
    if (restarts_detected_ != nullptr) restarts_detected_->Increment();
    LOG(WARNING) << writer_->name() << " restarted (instance " << *instance_
                 << " -> " << *id << "): writing again the " << batches
                 << " acknowledged batches (" << window_bytes_
                 << " bytes) of the replay window, which it may have held "
                    "only in memory";
  }
  instance_ = *id;
  confirmed_at_ = now;
  EvictLocked();
}

bool GroupCommitter::Replay() {
  size_t replayed = 0;
  while (true) {
    // The next flush's worth of entries from before the current generation,
    // in window order.
    std::vector<uint64_t> ids;
    std::vector<std::shared_ptr<const DecodedBatch>> chunk;
    int64_t generation;
    {
      absl::MutexLock lock(&window_mu_);
      generation = generation_;
      int records = 0;
      size_t bytes = 0;
      for (const WindowEntry& e : window_) {
        if (e.generation >= generation_) continue;
        int n = 0;
        for (const auto& b : e.batches) n += b->record_count();
        if (!ids.empty() && (records + n > options_.max_records_per_flush ||
                             bytes + e.bytes > options_.max_bytes_per_flush)) {
          break;
        }
        records += n;
        bytes += e.bytes;
        ids.push_back(e.id);
        chunk.insert(chunk.end(), e.batches.begin(), e.batches.end());
      }
    }
    if (ids.empty()) break;
    std::vector<const DecodedBatch*> batches;
    batches.reserve(chunk.size());
    for (const auto& b : chunk) batches.push_back(b.get());
    absl::Status status = writer_->Write(batches);
    if (IsContentRefusal(status)) {
      // Accepted before, refused now (e.g. it aged out of the backend's
      // retention meanwhile): write the batches one by one and give up only on
      // those still refused; their devices were told OK long ago.
      status = absl::OkStatus();
      for (const DecodedBatch* b : batches) {
        absl::Status one = writer_->Write({b});
        if (IsContentRefusal(one)) {
          LOG(WARNING) << writer_->name()
                       << " refuses the replay of the batch of device "
                       << b->device.device_id << ", stream " << b->stream
                       << ", sequence " << b->sequence_number
                       << " it accepted before; not replaying it: " << one;
          if (replay_failures_ != nullptr) replay_failures_->Increment();
        } else if (!one.ok()) {
          status = one;
          break;
        }
      }
    }
    if (!status.ok()) {
      if (replay_failures_ != nullptr) replay_failures_->Increment();
      LOG(WARNING) << "replay of " << batches.size() << " batches to "
                   << writer_->name() << " failed (retrying at the next poll, "
                   << replayed << " replayed so far): " << status;
      return false;
    }
    replayed += batches.size();
    if (replayed_batches_ != nullptr)
      replayed_batches_->Increment(chunk.size());
    const absl::Time now = clock_->MonotonicNow();
    absl::MutexLock lock(&window_mu_);
    // Written to the process of `generation` just now: it may hold them in
    // memory again, so their age starts over. Entries evicted meanwhile are
    // simply gone.
    size_t next = 0;
    for (WindowEntry& e : window_) {
      while (next < ids.size() && ids[next] < e.id) ++next;
      if (next == ids.size()) break;
      if (ids[next] != e.id) continue;
      if (e.generation < generation) {
        e.generation = generation;
        e.written_at = now;
      }
    }
  }
  if (replayed > 0) {
    LOG(INFO) << "replayed " << replayed << " acknowledged batches to "
              << writer_->name();
  }
  return true;
}

}  // namespace fleetd::server
