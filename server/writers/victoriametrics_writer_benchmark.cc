// What FLEET_VICTORIAMETRICS_FLUSH_ON_WRITE costs: coalesced writes of the
// VictoriaMetrics writer into a real VictoriaMetrics (started by the test
// fixture), with and without making each write durable (/snapshot/create and
// delete after the import). Arguments: samples per coalesced write (the group
// committer's flush: many device batches of 100 samples), flush on write (0 or
// 1); threads: concurrent flushes (FLEET_FLUSH_THREADS, default 2).
#include <atomic>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "bench/workload.h"
#include "benchmark/benchmark.h"
#include "server/writers/backends.h"
#include "tests/fixtures/victoria_metrics_fixture.h"

namespace fleetd::server {
namespace {

constexpr int kDeviceBatch = 100;

fleetd::testing::VictoriaMetricsFixture* Vm() {
  static auto* vm = [] {
    auto started = fleetd::testing::VictoriaMetricsFixture::Start();
    return started.ok() ? started->release() : nullptr;
  }();
  return vm;
}

// A flush of `samples` samples from samples / 100 devices; `round` moves the
// timestamps, so every write stores new samples as in production.
std::vector<DecodedBatch> Flush(int samples, int64_t round, int thread) {
  std::vector<DecodedBatch> out(samples / kDeviceBatch);
  const absl::Time start =
      absl::Now() - absl::Hours(1) + absl::Milliseconds(round);
  for (size_t i = 0; i < out.size(); ++i) {
    DecodedBatch& b = out[i];
    b.device = {absl::StrCat("bench-", thread, "-", i), "bench-org", "k"};
    b.kind = DataKind::kMetrics;
    b.stream = "metrics";
    b.sequence_number = round;
    b.metrics = fleetd::bench::MakeMetricsBatch(kDeviceBatch, start, i);
  }
  return out;
}

void BM_VictoriaMetricsWrite(benchmark::State& state) {
  auto* vm = Vm();
  if (vm == nullptr) {
    state.SkipWithError("cannot start VictoriaMetrics");
    return;
  }
  const int samples = static_cast<int>(state.range(0));
  auto writer = NewVictoriaMetricsWriter(
      {.url = vm->url(), .flush_on_write = state.range(1) != 0});
  if (!writer.ok()) {
    state.SkipWithError("cannot create the writer");
    return;
  }
  static std::atomic<int64_t> rounds{0};
  for (auto _ : state) {
    state.PauseTiming();
    std::vector<DecodedBatch> flush =
        Flush(samples, rounds.fetch_add(1), state.thread_index());
    std::vector<const DecodedBatch*> batches;
    for (const DecodedBatch& b : flush) batches.push_back(&b);
    state.ResumeTiming();
    absl::Status s = (*writer)->Write(batches);
    if (!s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      return;
    }
  }
  state.SetItemsProcessed(state.iterations() * samples);
  state.counters["samples_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * samples),
                         benchmark::Counter::kIsRate);
}
BENCHMARK(BM_VictoriaMetricsWrite)
    ->ArgNames({"samples", "flush"})
    ->ArgsProduct({{1000, 10000}, {0, 1}})
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace fleetd::server
