// Runs a MetricsSource on a schedule and appends every sample to the store.
#ifndef FLEETD_AGENT_COLLECT_COLLECTOR_H_
#define FLEETD_AGENT_COLLECT_COLLECTOR_H_

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/collect/metrics_source.h"
#include "agent/storage/storage.h"
#include "common/clock/clock.h"
#include "common/metrics/metrics.h"
#include "fleetd/v1/sync.pb.h"

namespace fleetd::agent {

namespace collect_internal {
class PeriodicRunner;
}  // namespace collect_internal

struct CollectorOptions {
  // Time between samples (at least 1 ms; smaller values are raised).
  absl::Duration interval = absl::Seconds(10);
  // When the store refuses a sample with a retryable error (busy, full disk),
  // up to this many records are kept and appended before the next sample; the
  // oldest beyond it are dropped (counted). Non-retryable refusals drop the
  // sample.
  size_t max_carry_over_records = 10000;
};

// Counters (labelled collector=<source name>):
//   fleetd_collect_records_total            records appended to the store
//   fleetd_collect_append_errors_total      failed appends
//   fleetd_collect_dropped_records_total    records given up on
//
// Thread-safety: all methods may be called from any thread; collections never
// overlap.
class Collector {
 public:
  // `source`, `storage` and `clock` must outlive the collector; `registry`
  // may be null (a private one is used).
  Collector(MetricsSource* source, Storage* storage, Clock* clock,
            metrics::Registry* registry, CollectorOptions options);
  ~Collector();  // Stop()s.
  Collector(const Collector&) = delete;
  Collector& operator=(const Collector&) = delete;

  // Takes one sample and appends it (with any carried-over records) in one
  // batch. Returns the store's error when the append failed; the failure is
  // logged and counted, and the records carried over or dropped as above.
  absl::Status CollectOnce();

  // Collects right away, then every `interval` on the clock, in a background
  // thread, until Stop(). Errors are logged and counted, never fatal.
  void Start();
  // Waits for a collection in progress. Idempotent.
  void Stop();

 private:
  MetricsSource* const source_;
  Storage* const storage_;
  const CollectorOptions options_;
  std::unique_ptr<metrics::Registry> owned_registry_;
  metrics::Counter* records_;
  metrics::Counter* append_errors_;
  metrics::Counter* dropped_;

  absl::Mutex mu_;
  std::vector<v1::Metric> carry_over_ ABSL_GUARDED_BY(mu_);
  bool failing_ ABSL_GUARDED_BY(mu_) = false;

  std::unique_ptr<collect_internal::PeriodicRunner> runner_;
};

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_COLLECT_COLLECTOR_H_
