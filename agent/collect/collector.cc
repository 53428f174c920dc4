#include "agent/collect/collector.h"

#include <iterator>
#include <string>
#include <utility>

#include "agent/collect/periodic.h"
#include "common/status/retryable.h"
#include "glog/logging.h"

namespace fleetd::agent {

Collector::Collector(MetricsSource* source, Storage* storage, Clock* clock,
                     metrics::Registry* registry, CollectorOptions options)
    : source_(source), storage_(storage), options_(std::move(options)) {
  if (registry == nullptr) {
    owned_registry_ = std::make_unique<metrics::Registry>();
    registry = owned_registry_.get();
  }
  const std::vector<std::string> labels = {std::string(source_->name())};
  records_ = &registry
                  ->CounterFamily("fleetd_collect_records_total",
                                  "Records collectors appended to the store",
                                  {"collector"})
                  .WithLabels(labels);
  append_errors_ =
      &registry
           ->CounterFamily("fleetd_collect_append_errors_total",
                           "Failed appends of collected records", {"collector"})
           .WithLabels(labels);
  dropped_ =
      &registry
           ->CounterFamily("fleetd_collect_dropped_records_total",
                           "Collected records given up on", {"collector"})
           .WithLabels(labels);
  runner_ = std::make_unique<collect_internal::PeriodicRunner>(
      clock, options_.interval, [this] { CollectOnce().IgnoreError(); });
}

Collector::~Collector() { Stop(); }

void Collector::Start() { runner_->Start(); }

void Collector::Stop() { runner_->Stop(); }

absl::Status Collector::CollectOnce() {
  absl::MutexLock lock(&mu_);
  std::vector<v1::Metric> batch = std::move(carry_over_);
  carry_over_.clear();
  std::vector<v1::Metric> sample = source_->Collect();
  batch.insert(batch.end(), std::make_move_iterator(sample.begin()),
               std::make_move_iterator(sample.end()));
  if (batch.empty()) return absl::OkStatus();

  absl::StatusOr<IdRange> ids = storage_->AppendMetrics(batch);
  if (ids.ok()) {
    records_->Increment(static_cast<double>(batch.size()));
    if (failing_) {
      LOG(INFO) << source_->name() << " collector: store accepts samples again";
      failing_ = false;
    }
    return absl::OkStatus();
  }

  append_errors_->Increment();
  size_t dropped = batch.size();
  if (IsRetryable(ids.status().code())) {
    // Keep the newest records for the next attempt.
    size_t keep = std::min(batch.size(), options_.max_carry_over_records);
    dropped = batch.size() - keep;
    carry_over_.assign(std::make_move_iterator(batch.end() - keep),
                       std::make_move_iterator(batch.end()));
  }
  if (dropped > 0) dropped_->Increment(static_cast<double>(dropped));
  if (!failing_ || dropped > 0) {
    LOG(WARNING) << source_->name()
                 << " collector: appending to the store failed: "
                 << ids.status() << " (" << carry_over_.size()
                 << " records kept for the next attempt, " << dropped
                 << " dropped)";
  }
  failing_ = true;
  return ids.status();
}

}  // namespace fleetd::agent
