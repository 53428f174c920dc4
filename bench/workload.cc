#include "bench/workload.h"

#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/crypto/sha256.h"
#include "google/protobuf/util/time_util.h"

namespace fleetd::bench {
namespace {

struct Series {
  const char* name;
  const char* label_key;
  const char* label_values[4];
  double base;
  double spread;
};

constexpr Series kSeries[] = {
    {"system_cpu_usage_percent",
     "cpu",
     {"cpu0", "cpu1", "cpu2", "cpu3"},
     20,
     30},
    {"system_memory_used_bytes",
     "kind",
     {"used", "cached", "buffers", "free"},
     4e8,
     1e7},
    {"system_disk_io_bytes_total",
     "device",
     {"mmcblk0", "mmcblk0p1", "mmcblk0p2", "sda"},
     1e9,
     1e5},
    {"system_network_receive_bytes_total",
     "interface",
     {"eth0", "wlan0", "lo", "usb0"},
     5e8,
     1e4},
    {"system_load_average", "period", {"1m", "5m", "15m", "1m"}, 0.8, 0.5},
    {"system_temperature_celsius",
     "zone",
     {"cpu-thermal", "gpu", "soc", "board"},
     48,
     4},
};

void SetTime(google::protobuf::Timestamp* ts, absl::Time t) {
  int64_t nanos = absl::ToUnixNanos(t);
  ts->set_seconds(nanos / 1'000'000'000);
  ts->set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
}

template <typename Batch>
void Pack(Compression codec, int records, Batch* batch,
          v1::SyncMetadata* metadata) {
  std::string raw = batch->SerializeAsString();
  metadata->set_checksum(Sha256(raw));
  metadata->set_record_count(records);
  if (codec == Compression::kNone) return;
  absl::StatusOr<std::string> packed = Compress(codec, raw);
  if (!packed.ok() || packed->size() * 10 > raw.size() * 9) return;
  Batch wire;
  wire.set_compression(std::string(CompressionName(codec)));
  wire.set_compressed_data(*std::move(packed));
  wire.set_original_size(static_cast<int32_t>(raw.size()));
  *batch = std::move(wire);
}

}  // namespace

TierShape ShapeOfTier(int tier) {
  switch (tier) {
    case 1:
      return {1000, Compression::kZstd};
    case 2:
      return {100, Compression::kGzip};
    default:
      return {10, Compression::kNone};
  }
}

void PackForWire(Compression codec, v1::MetricsBatch* batch,
                 v1::SyncMetadata* metadata) {
  Pack(codec, batch->metrics_size(), batch, metadata);
}

void PackForWire(Compression codec, v1::LogsBatch* batch,
                 v1::SyncMetadata* metadata) {
  Pack(codec, batch->logs_size(), batch, metadata);
}

v1::MetricsBatch MakeMetricsBatch(int count, absl::Time start, uint64_t seed,
                                  const std::string& device_id) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> noise(0, 1);
  v1::MetricsBatch batch;
  batch.set_compression("none");
  constexpr int kNumSeries = sizeof(kSeries) / sizeof(kSeries[0]);
  for (int i = 0; i < count; ++i) {
    const Series& s = kSeries[i % kNumSeries];
    v1::Metric* m = batch.add_metrics();
    m->set_name(s.name);
    // Collectors sample every series once per 10 s scrape.
    int scrape = i / (kNumSeries * 4);
    double value = s.base + s.spread * noise(rng);
    m->set_value(value < 0 ? -value : value);
    SetTime(m->mutable_timestamp(), start + absl::Seconds(10 * scrape));
    auto& labels = *m->mutable_labels();
    labels["host"] = device_id;
    labels[s.label_key] = s.label_values[(i / kNumSeries) % 4];
    labels["job"] = "fleetd";
  }
  return batch;
}

v1::LogsBatch MakeLogsBatch(int count, absl::Time start, uint64_t seed) {
  static constexpr const char* kLevels[] = {"info",  "info", "info",
                                            "debug", "warn", "error"};
  static constexpr const char* kSources[] = {"sensord", "kernel", "systemd",
                                             "app"};
  std::mt19937_64 rng(seed);
  v1::LogsBatch batch;
  batch.set_compression("none");
  for (int i = 0; i < count; ++i) {
    v1::LogEntry* e = batch.add_logs();
    e->set_level(kLevels[rng() % 6]);
    e->set_source(kSources[rng() % 4]);
    e->set_message(absl::StrCat("reading ", i, " from sensor ", rng() % 16,
                                " completed in ", rng() % 900,
                                "ms, status=ok"));
    SetTime(e->mutable_timestamp(), start + absl::Milliseconds(250 * i));
    (*e->mutable_fields())["request_id"] = absl::StrCat(rng() % 1000000);
  }
  return batch;
}

}  // namespace fleetd::bench
