// Agent storage throughput: appending metrics (one per call and in batches)
// and draining them (read a batch, mark it synced), for the SQLite store and
// the memory ring. items_per_second counts metrics.
//
//   build/bin/storage_benchmark --benchmark_filter=Sqlite
//
// Workload: bench/workload.h system metrics (24 series, 3 labels each). The
// SQLite store runs with its defaults (WAL, synchronous=NORMAL) in a temporary
// directory under /tmp and a quota large enough that no eviction happens,
// except in BM_SqliteAppendAtQuota, which measures the steady state of a full
// store. Rates are per wall-clock second (UseRealTime), so the fsyncs of WAL
// checkpoints count. The ring runs full, overwriting its oldest records, as on
// a device.
#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/storage/memory_storage.h"
#include "agent/storage/sqlite_storage.h"
#include "agent/storage/storage.h"
#include "bench/workload.h"
#include "benchmark/benchmark.h"

namespace fleetd::bench {
namespace {

using agent::IdRange;
using agent::ReadOptions;
using agent::RecordKind;
using agent::Storage;

const absl::Time kStart = absl::FromUnixSeconds(1'760'000'000);

class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/fleetd-storage-bench-XXXXXX";
    if (mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::vector<v1::Metric> Metrics(int n) {
  v1::MetricsBatch batch = MakeMetricsBatch(n, kStart, 42);
  return {batch.metrics().begin(), batch.metrics().end()};
}

std::unique_ptr<Storage> OpenSqlite(benchmark::State& state,
                                    const std::string& dir,
                                    int64_t max_bytes = int64_t{4} << 30) {
  agent::SqliteStorageOptions options;
  options.data_dir = dir;
  options.max_bytes = max_bytes;
  absl::StatusOr<std::unique_ptr<Storage>> s =
      agent::OpenSqliteStorage(options);
  if (!s.ok()) {
    state.SkipWithError(std::string(s.status().message()).c_str());
    return nullptr;
  }
  return *std::move(s);
}

std::unique_ptr<Storage> OpenRing(benchmark::State& state, int64_t capacity) {
  agent::MemoryStorageOptions options;
  options.capacity_bytes = capacity;
  options.log = [](absl::LogSeverity, absl::string_view) {};
  absl::StatusOr<std::unique_ptr<Storage>> s = agent::NewMemoryStorage(options);
  if (!s.ok()) {
    state.SkipWithError(std::string(s.status().message()).c_str());
    return nullptr;
  }
  return *std::move(s);
}

// Appends `range(0)` metrics per call.
void Append(benchmark::State& state, Storage& store) {
  const int batch = static_cast<int>(state.range(0));
  const std::vector<v1::Metric> metrics = Metrics(batch);
  for (auto _ : state) {
    absl::StatusOr<IdRange> ids = store.AppendMetrics(metrics);
    if (!ids.ok()) {
      state.SkipWithError(std::string(ids.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(ids->last);
  }
  state.SetItemsProcessed(state.iterations() * batch);
}

// Reads `range(0)` unsynced metrics and marks them synced, per iteration;
// refills the store (untimed) whenever it runs dry.
void ReadAndMark(benchmark::State& state, Storage& store) {
  const std::vector<v1::Metric> chunk = Metrics(1000);
  ReadOptions options;
  options.max_records = static_cast<int32_t>(state.range(0));
  int64_t items = 0;
  for (auto _ : state) {
    absl::StatusOr<std::vector<agent::StoredMetric>> batch =
        store.ReadMetrics(options);
    if (!batch.ok()) {
      state.SkipWithError(std::string(batch.status().message()).c_str());
      return;
    }
    if (batch->empty()) {
      state.PauseTiming();
      for (int i = 0; i < 50; ++i) {
        if (!store.AppendMetrics(chunk).ok()) {
          state.SkipWithError("refill failed");
          return;
        }
      }
      state.ResumeTiming();
      continue;
    }
    absl::StatusOr<int64_t> n = store.MarkSynced(
        RecordKind::kMetric, {batch->front().id, batch->back().id});
    if (!n.ok()) {
      state.SkipWithError(std::string(n.status().message()).c_str());
      return;
    }
    items += *n;
  }
  state.SetItemsProcessed(items);
}

void BM_SqliteAppend(benchmark::State& state) {
  TempDir dir;
  std::unique_ptr<Storage> store = OpenSqlite(state, dir.path());
  if (store) Append(state, *store);
}
BENCHMARK(BM_SqliteAppend)
    ->Arg(1)
    ->Arg(100)
    ->Arg(1000)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// An 8 MB store that is full of synced data: appends also evict.
void BM_SqliteAppendAtQuota(benchmark::State& state) {
  TempDir dir;
  std::unique_ptr<Storage> store = OpenSqlite(state, dir.path(), 8 << 20);
  if (!store) return;
  const std::vector<v1::Metric> metrics = Metrics(1000);
  for (;;) {
    absl::StatusOr<IdRange> ids = store->AppendMetrics(metrics);
    if (!ids.ok() || !store->MarkSynced(RecordKind::kMetric, *ids).ok()) {
      state.SkipWithError("fill failed");
      return;
    }
    absl::StatusOr<agent::StorageInfo> info = store->Info();
    if (!info.ok() || info->of(RecordKind::kMetric).evicted_synced > 0) break;
  }
  Append(state, *store);
}
BENCHMARK(BM_SqliteAppendAtQuota)
    ->Arg(1000)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

void BM_SqliteReadAndMark(benchmark::State& state) {
  TempDir dir;
  std::unique_ptr<Storage> store = OpenSqlite(state, dir.path());
  if (store) ReadAndMark(state, *store);
}
BENCHMARK(BM_SqliteReadAndMark)
    ->Arg(100)
    ->Arg(1000)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

void BM_RingAppend(benchmark::State& state) {
  std::unique_ptr<Storage> store = OpenRing(state, 16 << 20);
  if (store) Append(state, *store);
}
BENCHMARK(BM_RingAppend)
    ->Arg(1)
    ->Arg(100)
    ->Arg(1000)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

void BM_RingReadAndMark(benchmark::State& state) {
  // Large enough to hold a whole refill without overwriting.
  std::unique_ptr<Storage> store = OpenRing(state, 64 << 20);
  if (store) ReadAndMark(state, *store);
}
BENCHMARK(BM_RingReadAndMark)
    ->Arg(100)
    ->Arg(1000)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace
}  // namespace fleetd::bench
