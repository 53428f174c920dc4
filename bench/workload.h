// Realistic telemetry for benchmarks and the load generator: the system metrics
// an agent collects on a Raspberry-Pi-class device, with the label sets and
// value patterns real collectors produce. Deterministic for a given seed.
#ifndef FLEETD_BENCH_WORKLOAD_H_
#define FLEETD_BENCH_WORKLOAD_H_

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "fleetd/v1/sync.pb.h"

namespace fleetd::bench {

// A batch of `count` metric samples from one device starting at `start`,
// cycling through CPU, memory, disk, network, load and temperature series.
v1::MetricsBatch MakeMetricsBatch(int count, absl::Time start, uint64_t seed,
                                  const std::string& device_id = "rpi-0042");

// A batch of `count` log entries with realistic levels, sources and messages.
v1::LogsBatch MakeLogsBatch(int count, absl::Time start, uint64_t seed);

}  // namespace fleetd::bench

#endif  // FLEETD_BENCH_WORKLOAD_H_
