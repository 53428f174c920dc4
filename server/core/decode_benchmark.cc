// What the server spends on one metrics request before routing, per tier of
// the load generator's mix (bench/workload.h: tier 1 sends 1000 samples zstd,
// tier 2 100 gzip, tier 3 10 uncompressed):
//   BM_DecodeMetrics         DecodeMetrics alone (decompress, checksum,
//                            validate labels and timestamps);
//   BM_GrpcSerializeParse    the request serialized into a gRPC ByteBuffer
//                            and parsed back, with grpc++'s own serialization
//                            traits (what a sync or callback service does
//                            around the handler);
//   BM_GrpcParseDecode       parse from the received ByteBuffer, then
//                            DecodeMetrics: the legacy gRPC front end's
//                            whole share;
//   BM_DecodeMetricsWire     DecodeMetricsWire on the request's bytes: the
//                            front door's whole share (binary codec);
//   BM_ParseMetricSamples    MetricSamples::Parse alone on tier 1's
//                            decompressed batch, label entries in one order
//                            per series (as C++ protobuf writes a map) or in
//                            an order that changes from sample to sample (as
//                            Go's protobuf writes one).
// items/s are samples per second; bytes/s are request bytes on the wire
// (after in-message compression) per second.
//
//   build/bin/decode_benchmark --benchmark_filter=DecodeMetrics
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "bench/workload.h"
#include "benchmark/benchmark.h"
#include "fleetd/v1/sync.pb.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/support/byte_buffer.h"
#include "server/core/decode.h"
#include "server/model/batch.h"
#include "server/model/metric_samples.h"

namespace fleetd::server {
namespace {

// A fixed instant, so every run decodes the same bytes.
absl::Time Start() { return absl::FromUnixSeconds(1'767'225'600); }

DeviceIdentity Device() { return {"rpi-0042", "bench", "key-0042"}; }

// The request a device of `tier` sends, as the load generator builds it.
v1::SyncMetricsRequest TierRequest(int tier) {
  bench::TierShape shape = bench::ShapeOfTier(tier);
  v1::SyncMetricsRequest request;
  *request.mutable_batch() = bench::MakeMetricsBatch(
      shape.samples, Start(), /*seed=*/static_cast<uint64_t>(tier),
      Device().device_id);
  v1::SyncMetadata* md = request.mutable_metadata();
  md->set_device_id(Device().device_id);
  md->set_org_id(Device().org_id);
  md->set_sequence_number(1);
  md->mutable_capability()->set_tier(tier);
  bench::PackForWire(shape.codec, request.mutable_batch(), md);
  return request;
}

// Reports a failed step as the benchmark's error; true if it succeeded.
bool Ok(benchmark::State& state, const absl::Status& status) {
  if (!status.ok()) state.SkipWithError(status.ToString().c_str());
  return status.ok();
}
bool Ok(benchmark::State& state, const grpc::Status& status) {
  if (!status.ok()) state.SkipWithError(status.error_message().c_str());
  return status.ok();
}

void SetRates(benchmark::State& state, const v1::SyncMetricsRequest& request,
              int samples) {
  state.SetItemsProcessed(state.iterations() * samples);
  state.SetBytesProcessed(state.iterations() *
                          static_cast<int64_t>(request.ByteSizeLong()));
  state.SetLabel(request.batch().compression().empty()
                     ? std::string("none")
                     : request.batch().compression());
}

void BM_DecodeMetrics(benchmark::State& state) {
  const int tier = static_cast<int>(state.range(0));
  const v1::SyncMetricsRequest request = TierRequest(tier);
  const DeviceIdentity device = Device();
  const DecodeLimits limits;
  for (auto _ : state) {
    absl::StatusOr<DecodedBatch> decoded =
        DecodeMetrics(request, device, limits, Start());
    if (!Ok(state, decoded.status())) break;
    benchmark::DoNotOptimize(decoded);
  }
  SetRates(state, request, bench::ShapeOfTier(tier).samples);
}
BENCHMARK(BM_DecodeMetrics)->ArgName("tier")->DenseRange(1, 3);

void BM_GrpcSerializeParse(benchmark::State& state) {
  const int tier = static_cast<int>(state.range(0));
  const v1::SyncMetricsRequest request = TierRequest(tier);
  using Traits = grpc::SerializationTraits<v1::SyncMetricsRequest>;
  for (auto _ : state) {
    grpc::ByteBuffer wire;
    bool own_buffer = false;
    grpc::Status status = Traits::Serialize(request, &wire, &own_buffer);
    v1::SyncMetricsRequest parsed;
    if (status.ok()) status = Traits::Deserialize(&wire, &parsed);
    if (!Ok(state, status)) break;
    benchmark::DoNotOptimize(parsed);
  }
  SetRates(state, request, bench::ShapeOfTier(tier).samples);
}
BENCHMARK(BM_GrpcSerializeParse)->ArgName("tier")->DenseRange(1, 3);

void BM_GrpcParseDecode(benchmark::State& state) {
  const int tier = static_cast<int>(state.range(0));
  const v1::SyncMetricsRequest request = TierRequest(tier);
  using Traits = grpc::SerializationTraits<v1::SyncMetricsRequest>;
  grpc::ByteBuffer received;
  bool own_buffer = false;
  if (!Ok(state, Traits::Serialize(request, &received, &own_buffer))) return;
  const DeviceIdentity device = Device();
  const DecodeLimits limits;
  for (auto _ : state) {
    // Deserialize consumes its buffer; a copy shares the slices.
    grpc::ByteBuffer wire(received);
    v1::SyncMetricsRequest parsed;
    if (!Ok(state, Traits::Deserialize(&wire, &parsed))) break;
    absl::StatusOr<DecodedBatch> decoded =
        DecodeMetrics(parsed, device, limits, Start());
    if (!Ok(state, decoded.status())) break;
    benchmark::DoNotOptimize(decoded);
  }
  SetRates(state, request, bench::ShapeOfTier(tier).samples);
}
BENCHMARK(BM_GrpcParseDecode)->ArgName("tier")->DenseRange(1, 3);

// What the front door does with a SyncMetrics request in the binary codec:
// DecodeMetricsWire on its bytes as received (no message objects), to set
// beside BM_GrpcParseDecode (parse into the message, then DecodeMetrics).
void BM_DecodeMetricsWire(benchmark::State& state) {
  const int tier = static_cast<int>(state.range(0));
  const v1::SyncMetricsRequest request = TierRequest(tier);
  const std::string bytes = request.SerializeAsString();
  const DeviceIdentity device = Device();
  const DecodeLimits limits;
  for (auto _ : state) {
    absl::StatusOr<DecodedBatch> decoded =
        DecodeMetricsWire(bytes, device, limits, Start());
    if (!Ok(state, decoded.status())) break;
    benchmark::DoNotOptimize(decoded);
  }
  SetRates(state, request, bench::ShapeOfTier(tier).samples);
}
BENCHMARK(BM_DecodeMetricsWire)->ArgName("tier")->DenseRange(1, 3);

void AppendVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void AppendField(int field, const std::string& bytes, std::string* out) {
  AppendVarint(static_cast<uint64_t>(field) << 3 | 2, out);
  AppendVarint(bytes.size(), out);
  out->append(bytes);
}

// Tier 1's batch, serialized; with `shuffled`, sample i's label entries are
// rotated by i, so consecutive samples of a series differ in entry order.
std::string TierOneBytes(bool shuffled) {
  const v1::MetricsBatch batch = bench::MakeMetricsBatch(
      bench::ShapeOfTier(1).samples, Start(), /*seed=*/1, Device().device_id);
  if (!shuffled) return batch.SerializeAsString();
  std::string out;
  for (int i = 0; i < batch.metrics_size(); ++i) {
    v1::Metric bare = batch.metrics(i);
    bare.clear_labels();
    std::string metric = bare.SerializeAsString();
    std::vector<std::pair<std::string, std::string>> labels(
        batch.metrics(i).labels().begin(), batch.metrics(i).labels().end());
    std::sort(labels.begin(), labels.end());
    std::rotate(labels.begin(), labels.begin() + i % labels.size(),
                labels.end());
    for (const auto& [key, value] : labels) {
      std::string entry;
      AppendField(1, key, &entry);
      AppendField(2, value, &entry);
      AppendField(4, entry, &metric);
    }
    AppendField(1, metric, &out);
  }
  return out;
}

void BM_ParseMetricSamples(benchmark::State& state) {
  const std::string bytes = TierOneBytes(state.range(0) != 0);
  const int samples = bench::ShapeOfTier(1).samples;
  for (auto _ : state) {
    absl::StatusOr<MetricSamples> parsed =
        MetricSamples::Parse(bytes, /*max_labels=*/64);
    if (!Ok(state, parsed.status())) break;
    if (parsed->size() != samples) {
      state.SkipWithError("wrong sample count");
      break;
    }
    benchmark::DoNotOptimize(parsed);
  }
  state.SetItemsProcessed(state.iterations() * samples);
  state.SetBytesProcessed(state.iterations() *
                          static_cast<int64_t>(bytes.size()));
}
BENCHMARK(BM_ParseMetricSamples)->ArgName("shuffled")->DenseRange(0, 1);

}  // namespace
}  // namespace fleetd::server
