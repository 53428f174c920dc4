// Router coalescing: how many device batches per second one GroupCommitter
// moves into a backend, and how many it coalesces per backend write, with 1 to
// 64 concurrent callers. The writer is an in-memory stand-in that takes a fixed
// time per write (a backend round trip), so the figure is the committer's own
// overhead and its coalescing.
#include <atomic>
#include <memory>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench/workload.h"
#include "benchmark/benchmark.h"
#include "server/router/group_commit.h"

namespace fleetd::bench {
namespace {

class TimedWriter final : public server::Writer {
 public:
  explicit TimedWriter(absl::Duration per_write) : per_write_(per_write) {}
  absl::string_view name() const override { return "bench"; }
  absl::Status Write(
      absl::Span<const server::DecodedBatch* const> batches) override {
    writes_.fetch_add(1, std::memory_order_relaxed);
    absl::SleepFor(per_write_);  // stands in for the backend round trip
    return absl::OkStatus();
  }
  absl::Status Ping() override { return absl::OkStatus(); }
  int64_t writes() const { return writes_.load(); }

 private:
  const absl::Duration per_write_;
  std::atomic<int64_t> writes_{0};
};

std::shared_ptr<const server::DecodedBatch> Batch(int samples) {
  auto b = std::make_shared<server::DecodedBatch>();
  b->device = {"bench-device", "bench-org", "k"};
  b->kind = server::DataKind::kMetrics;
  b->stream = "metrics";
  b->metrics = server::MetricSamples::FromProto(
      MakeMetricsBatch(samples, absl::FromUnixSeconds(1'760'000'000), 3));
  return b;
}

// state.range(0): device batch size in samples. Threads: concurrent callers.
void BM_GroupCommit(benchmark::State& state) {
  static TimedWriter* writer = nullptr;
  static server::GroupCommitter* committer = nullptr;
  if (state.thread_index() == 0) {
    writer = new TimedWriter(absl::Microseconds(500));
    committer = new server::GroupCommitter(writer, Clock::Real(), nullptr, {});
  }
  auto batch = Batch(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    absl::Status s = committer->Submit(batch, absl::InfiniteFuture());
    if (!s.ok()) state.SkipWithError("submit failed");
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  if (state.thread_index() == 0) {
    state.counters["batches_per_write"] = benchmark::Counter(
        static_cast<double>(state.iterations() * state.threads()) /
        static_cast<double>(std::max<int64_t>(1, writer->writes())));
    delete committer;
    delete writer;
  }
}
BENCHMARK(BM_GroupCommit)
    ->Arg(10)
    ->Arg(100)
    ->Threads(1)
    ->Threads(8)
    ->Threads(64)
    ->UseRealTime();

}  // namespace
}  // namespace fleetd::bench
