#include "server/router/group_commit.h"

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
  }
  for (int i = 0; i < std::max(1, options_.flush_threads); ++i) {
    threads_.emplace_back([this] { FlushLoop(); });
  }
}

GroupCommitter::~GroupCommitter() {
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

absl::StatusOr<GroupCommitter::Ticket> GroupCommitter::Enqueue(
    std::shared_ptr<const DecodedBatch> batch) {
  if (!breaker_.Allow()) {
    if (rejected_breaker_ != nullptr) rejected_breaker_->Increment();
    return WithRetryAfter(
        absl::UnavailableError(
            absl::StrCat(writer_->name(), " is failing; not writing")),
        std::max(breaker_.RetryAfter(), absl::Milliseconds(100)));
  }
  // In half-open state Allow() admitted this batch as the probe; its flush
  // reports back.
  size_t bytes = batch->approx_bytes();
  Pending p{std::move(batch), bytes, std::make_shared<Result>()};
  Ticket ticket;
  ticket.result_ = p.result;
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("server shutting down");
  if (queued_bytes_ + p.bytes > options_.max_queue_bytes && !queue_.empty()) {
    if (rejected_overload_ != nullptr) rejected_overload_->Increment();
    LOG(WARNING) << "queue for " << writer_->name() << " is full ("
                 << queued_bytes_ << " bytes); refusing a batch";
    return WithRetryAfter(
        absl::ResourceExhaustedError(absl::StrCat(
            "server overloaded: ", writer_->name(), " queue is full")),
        options_.overload_retry_after);
  }
  queued_bytes_ += p.bytes;
  if (queue_bytes_gauge_ != nullptr) queue_bytes_gauge_->Set(queued_bytes_);
  queue_.push_back(std::move(p));
  return ticket;
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
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !queue_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (stopping_) return;
      if (options_.linger > absl::ZeroDuration()) {
        auto full = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || queued_bytes_ >= options_.max_bytes_per_flush;
        };
        mu_.AwaitWithTimeout(absl::Condition(&full), options_.linger);
        if (queue_.empty()) continue;
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
      if (queue_bytes_gauge_ != nullptr) queue_bytes_gauge_->Set(queued_bytes_);
    }
    int records = 0;
    for (const Pending& p : taken) records += p.batch->record_count();
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
    // Last, so that a caller who sees its outcome also sees the metrics and
    // health it caused.
    Complete(absl::MakeSpan(taken));
  }
}

}  // namespace fleetd::server
