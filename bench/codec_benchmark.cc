// Codec throughput and ratio on serialized MetricsBatches of the three tiers'
// batch sizes (10, 100 and 1000 metrics). Throughput counts uncompressed bytes
// per second for both directions, so the compress and decompress figures
// compare directly.
#include <string>

#include "absl/time/time.h"
#include "bench/workload.h"
#include "benchmark/benchmark.h"
#include "common/codec/codec.h"

namespace fleetd::bench {
namespace {

std::string SerializedBatch(int n) {
  return MakeMetricsBatch(n, absl::FromUnixSeconds(1'760'000'000), 17)
      .SerializeAsString();
}

void BM_Compress(benchmark::State& state, Compression codec) {
  const std::string input = SerializedBatch(static_cast<int>(state.range(0)));
  size_t compressed = 0;
  for (auto _ : state) {
    auto out = Compress(codec, input);
    if (!out.ok()) {
      state.SkipWithError(std::string(out.status().message()).c_str());
      return;
    }
    compressed = out->size();
    benchmark::DoNotOptimize(out->data());
  }
  state.SetBytesProcessed(
      static_cast<int64_t>(state.iterations() * input.size()));
  state.counters["input_bytes"] = static_cast<double>(input.size());
  state.counters["output_bytes"] = static_cast<double>(compressed);
  state.counters["ratio"] = static_cast<double>(input.size()) / compressed;
}

void BM_Decompress(benchmark::State& state, Compression codec) {
  const std::string input = SerializedBatch(static_cast<int>(state.range(0)));
  auto packed = Compress(codec, input);
  if (!packed.ok()) {
    state.SkipWithError("compress failed");
    return;
  }
  for (auto _ : state) {
    auto out = Decompress(codec, *packed, input.size());
    if (!out.ok()) {
      state.SkipWithError(std::string(out.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(out->data());
  }
  state.SetBytesProcessed(
      static_cast<int64_t>(state.iterations() * input.size()));
  state.counters["ratio"] = static_cast<double>(input.size()) / packed->size();
}

void BM_EncodeBatch(benchmark::State& state) {
  v1::MetricsBatch batch =
      MakeMetricsBatch(static_cast<int>(state.range(0)),
                       absl::FromUnixSeconds(1'760'000'000), 17);
  size_t bytes = 0;
  for (auto _ : state) {
    std::string out = batch.SerializeAsString();
    bytes = out.size();
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
}

void BM_DecodeBatch(benchmark::State& state) {
  const std::string input = SerializedBatch(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    v1::MetricsBatch batch;
    if (!batch.ParseFromString(input)) {
      state.SkipWithError("parse failed");
      return;
    }
    benchmark::DoNotOptimize(batch.metrics_size());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.SetBytesProcessed(
      static_cast<int64_t>(state.iterations() * input.size()));
}

BENCHMARK_CAPTURE(BM_Compress, gzip, Compression::kGzip)
    ->Arg(10)
    ->Arg(100)
    ->Arg(1000);
BENCHMARK_CAPTURE(BM_Compress, zstd, Compression::kZstd)
    ->Arg(10)
    ->Arg(100)
    ->Arg(1000);
BENCHMARK_CAPTURE(BM_Decompress, gzip, Compression::kGzip)
    ->Arg(10)
    ->Arg(100)
    ->Arg(1000);
BENCHMARK_CAPTURE(BM_Decompress, zstd, Compression::kZstd)
    ->Arg(10)
    ->Arg(100)
    ->Arg(1000);
BENCHMARK(BM_EncodeBatch)->Arg(10)->Arg(100)->Arg(1000);
BENCHMARK(BM_DecodeBatch)->Arg(10)->Arg(100)->Arg(1000);

}  // namespace
}  // namespace fleetd::bench
