// Realistic telemetry for benchmarks and the load generator: the system metrics
// an agent collects on a Raspberry-Pi-class device, with the label sets and
// value patterns real collectors produce. Deterministic for a given seed.
#ifndef FLEETD_BENCH_WORKLOAD_H_
#define FLEETD_BENCH_WORKLOAD_H_

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "common/codec/codec.h"
#include "fleetd/v1/sync.pb.h"

namespace fleetd::bench {

// A batch of `count` metric samples from one device starting at `start`,
// cycling through CPU, memory, disk, network, load and temperature series.
v1::MetricsBatch MakeMetricsBatch(int count, absl::Time start, uint64_t seed,
                                  const std::string& device_id = "rpi-0042");

// A batch of `count` log entries with realistic levels, sources and messages.
v1::LogsBatch MakeLogsBatch(int count, absl::Time start, uint64_t seed);

// The metrics batch of each device tier in the load generator's mix: tier 1
// sends 1000 samples zstd, tier 2 100 gzip, tier 3 (and anything else) 10
// uncompressed.
struct TierShape {
  int samples;
  Compression codec;
};
TierShape ShapeOfTier(int tier);

// Puts `batch` in the form the agent sends it: sets `metadata`'s checksum
// (SHA-256 of the serialized uncompressed batch) and record count, then
// compresses it in-message with `codec` (compression, compressed_data,
// original_size) when that saves at least 10 %; otherwise, or when `codec` is
// kNone or fails, the records stay as they are.
void PackForWire(Compression codec, v1::MetricsBatch* batch,
                 v1::SyncMetadata* metadata);
void PackForWire(Compression codec, v1::LogsBatch* batch,
                 v1::SyncMetadata* metadata);

}  // namespace fleetd::bench

#endif  // FLEETD_BENCH_WORKLOAD_H_
