// What FLEET_VICTORIAMETRICS_FLUSH_ON_WRITE (opt-in) costs, and what the group
// committer's replay window (the default protection) costs: coalesced writes of
// the VictoriaMetrics writer into a real VictoriaMetrics (started by the test
// fixture), with and without making each write durable (/snapshot/create and
// delete after the import). Arguments: samples per coalesced write (the group
// committer's flush: many device batches of 100 samples), flush on write (0 or
// 1); threads: concurrent flushes (FLEET_FLUSH_THREADS, default 2).
//
// BM_RemoteWriteEncode measures encoding alone (no backend): what a write costs
// the server's CPU before it goes on the wire (~0.08 ms per 1,000 samples, in
// device batches of 100 with 23 series each, read from the wire so that
// the samples of a series share it as in decoded batches; 0.14 ms when every
// sample was looked up on its own; the JSON import body remote write replaced
// took ~1.6 ms, measured the same way).
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "bench/workload.h"
#include "benchmark/benchmark.h"
#include "server/router/group_commit.h"
#include "server/writers/backends.h"
#include "server/writers/remote_write.h"
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
    // Read from the wire form, as decoding does for compressed batches (the
    // load generator's tiers 1 and 2), so samples of a series share labels.
    b.metrics = MetricSamples::Parse(
                    fleetd::bench::MakeMetricsBatch(kDeviceBatch, start, i)
                        .SerializeAsString(),
                    /*max_labels=*/64)
                    .value();  // aborts if the workload does not parse
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

// The default path in the server: the same flushes through a GroupCommitter
// with its replay window on (each device batch enqueued, then all awaited), so
// what keeping the window costs shows next to the writer alone.
void BM_VictoriaMetricsCommitterWithReplayWindow(benchmark::State& state) {
  auto* vm = Vm();
  if (vm == nullptr) {
    state.SkipWithError("cannot start VictoriaMetrics");
    return;
  }
  const int samples = static_cast<int>(state.range(0));
  auto writer = NewVictoriaMetricsWriter({.url = vm->url()});
  if (!writer.ok()) {
    state.SkipWithError("cannot create the writer");
    return;
  }
  GroupCommitter committer(writer->get(), Clock::Real(), nullptr, {});
  static std::atomic<int64_t> rounds{1'000'000};
  for (auto _ : state) {
    state.PauseTiming();
    std::vector<std::shared_ptr<const DecodedBatch>> flush;
    for (DecodedBatch& b : Flush(samples, rounds.fetch_add(1), 0)) {
      flush.push_back(std::make_shared<const DecodedBatch>(std::move(b)));
    }
    state.ResumeTiming();
    std::vector<GroupCommitter::Ticket> tickets;
    for (const auto& b : flush) {
      absl::StatusOr<GroupCommitter::Ticket> t = committer.Enqueue(b);
      if (!t.ok()) {
        state.SkipWithError(std::string(t.status().message()).c_str());
        return;
      }
      tickets.push_back(*t);
    }
    for (const auto& t : tickets) {
      absl::Status s = committer.Wait(t, absl::InfiniteFuture());
      if (!s.ok()) {
        state.SkipWithError(std::string(s.message()).c_str());
        return;
      }
    }
  }
  state.counters["samples_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * samples),
                         benchmark::Counter::kIsRate);
  state.counters["window_batches"] =
      static_cast<double>(committer.replay_window_batches());
}
BENCHMARK(BM_VictoriaMetricsCommitterWithReplayWindow)
    ->ArgNames({"samples"})
    ->Arg(1000)
    ->Arg(10000)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Encoding a flush of `samples` samples (device batches of 100: one for 100,
// ten for 1,000) with one encoder kept across writes, as the writer does:
// the remote-write protobuf and its snappy compression.
void BM_RemoteWriteEncode(benchmark::State& state) {
  const int samples = static_cast<int>(state.range(0));
  std::vector<DecodedBatch> flush = Flush(samples, 0, 0);
  std::vector<const DecodedBatch*> batches;
  for (const DecodedBatch& b : flush) batches.push_back(&b);
  RemoteWriteEncoder encoder;
  std::string body;
  for (auto _ : state) {
    absl::Status s = encoder.Encode(batches, &body);
    if (!s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(body.data());
  }
  state.counters["samples_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * samples),
                         benchmark::Counter::kIsRate);
  state.counters["body_bytes"] = static_cast<double>(body.size());
  state.counters["raw_bytes"] =
      static_cast<double>(encoder.uncompressed().size());
  state.counters["series"] = static_cast<double>(encoder.series_count());
}
BENCHMARK(BM_RemoteWriteEncode)->ArgNames({"samples"})->Arg(100)->Arg(1000);

}  // namespace
}  // namespace fleetd::server
