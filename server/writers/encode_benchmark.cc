// What each backend's encoding costs the server's CPU, without a backend: the
// body of one coalesced write (a flush of device batches) as the writers make
// it. Items/s are records (log entries, events, metric samples) per second.
//
//   BM_LokiPush          EncodeLokiPush, format 0: snappy protobuf (the
//                        default), 1: JSON; device batches of 50 entries.
//   BM_ClickHouseRows    EncodeClickHouseRows for logs (0), events (1) and
//                        metrics (2, the analytics copy); device batches of 50
//                        logs or events, or 100 samples.
//
// Remote write to VictoriaMetrics: BM_RemoteWriteEncode in
// victoriametrics_writer_benchmark.
//
//   build/bin/encode_benchmark
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "bench/workload.h"
#include "benchmark/benchmark.h"
#include "server/model/batch.h"
#include "server/model/metric_samples.h"
#include "server/writers/clickhouse_rows.h"
#include "server/writers/loki_push.h"

namespace fleetd::server {
namespace {

constexpr int kDevices = 20;

absl::Time Start() { return absl::FromUnixSeconds(1'767'225'600); }

DecodedBatch Identity(int device, DataKind kind) {
  DecodedBatch b;
  b.device = {absl::StrCat("bench-", device), "bench-org", "k"};
  b.kind = kind;
  b.stream = std::string(DataKindName(kind));
  b.sequence_number = 1;
  return b;
}

// A flush of kDevices device batches of `kind`.
std::vector<DecodedBatch> Flush(DataKind kind) {
  std::vector<DecodedBatch> out;
  for (int d = 0; d < kDevices; ++d) {
    DecodedBatch b = Identity(d, kind);
    switch (kind) {
      case DataKind::kLogs:
        b.logs = bench::MakeLogsBatch(50, Start(), static_cast<uint64_t>(d));
        break;
      case DataKind::kEvents:
        for (int i = 0; i < 50; ++i) {
          v1::Event* e = b.events.add_events();
          e->set_name(i % 2 == 0 ? "door_opened" : "battery_low");
          e->set_event_id(absl::StrCat("ev-", d, "-", i));
          e->mutable_timestamp()->set_seconds(absl::ToUnixSeconds(Start()) + i);
          (*e->mutable_properties())["zone"] = absl::StrCat("z", i % 4);
          (*e->mutable_properties())["firmware"] = "1.4.2";
          (*e->mutable_values())["voltage"] = 3.3 - 0.01 * i;
        }
        break;
      case DataKind::kMetrics:
        b.metrics =
            MetricSamples::Parse(
                bench::MakeMetricsBatch(100, Start(), static_cast<uint64_t>(d))
                    .SerializeAsString(),
                /*max_labels=*/64)
                .value();  // aborts if the workload does not parse
        break;
    }
    out.push_back(std::move(b));
  }
  return out;
}

std::vector<const DecodedBatch*> Pointers(const std::vector<DecodedBatch>& v) {
  std::vector<const DecodedBatch*> out;
  for (const DecodedBatch& b : v) out.push_back(&b);
  return out;
}

void BM_LokiPush(benchmark::State& state) {
  const LokiFormat format =
      state.range(0) == 0 ? LokiFormat::kProtobuf : LokiFormat::kJson;
  const std::vector<DecodedBatch> flush = Flush(DataKind::kLogs);
  const std::vector<const DecodedBatch*> batches = Pointers(flush);
  size_t bytes = 0;
  for (auto _ : state) {
    absl::StatusOr<std::string> body = EncodeLokiPush(batches, format);
    if (!body.ok()) {
      state.SkipWithError(std::string(body.status().message()).c_str());
      return;
    }
    bytes = body->size();
    benchmark::DoNotOptimize(body->data());
  }
  state.SetItemsProcessed(state.iterations() * kDevices * 50);
  state.counters["body_bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_LokiPush)->ArgName("json")->Arg(0)->Arg(1);

void BM_ClickHouseRows(benchmark::State& state) {
  const DataKind kinds[] = {DataKind::kLogs, DataKind::kEvents,
                            DataKind::kMetrics};
  const DataKind kind = kinds[state.range(0)];
  const std::vector<DecodedBatch> flush = Flush(kind);
  const std::vector<const DecodedBatch*> batches = Pointers(flush);
  size_t bytes = 0;
  for (auto _ : state) {
    auto bodies = EncodeClickHouseRows(batches);
    if (!bodies.ok()) {
      state.SkipWithError(std::string(bodies.status().message()).c_str());
      return;
    }
    bytes = 0;
    for (const auto& [table, body] : *bodies) bytes += body.size();
    benchmark::DoNotOptimize(bodies->size());
  }
  int records = 0;
  for (const DecodedBatch& b : flush) records += b.record_count();
  state.SetItemsProcessed(state.iterations() * records);
  state.counters["body_bytes"] = static_cast<double>(bytes);
  state.SetLabel(std::string(DataKindName(kind)));
}
BENCHMARK(BM_ClickHouseRows)->ArgName("kind")->DenseRange(0, 2);

}  // namespace
}  // namespace fleetd::server
