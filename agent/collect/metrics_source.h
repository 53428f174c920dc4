// The seam between what produces metric samples (system metrics, later
// others) and the Collector that schedules them and appends to the store.
#ifndef FLEETD_AGENT_COLLECT_METRICS_SOURCE_H_
#define FLEETD_AGENT_COLLECT_METRICS_SOURCE_H_

#include <vector>

#include "absl/strings/string_view.h"
#include "fleetd/v1/sync.pb.h"

namespace fleetd::agent {

// A source of metric samples for a Collector.
class MetricsSource {
 public:
  MetricsSource() = default;
  virtual ~MetricsSource() = default;
  MetricsSource(const MetricsSource&) = delete;
  MetricsSource& operator=(const MetricsSource&) = delete;

  // Short name for logs and counter labels, e.g. "system".
  virtual absl::string_view name() const = 0;

  // Takes one sample. Never fails as a whole: inputs that cannot be read are
  // left out (logged and counted by the source). May keep state between calls
  // (e.g. the previous CPU sample). Not safe for concurrent calls; the
  // Collector serialises them.
  virtual std::vector<v1::Metric> Collect() = 0;
};

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_COLLECT_METRICS_SOURCE_H_
