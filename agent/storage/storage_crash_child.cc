// Helper for storage_crash_test: appends to a SQLite store until killed.
//
//   storage_crash_child <data_dir> <seed>
//
// Records carry a global sequence number (metric value / log message). Before
// each append the child writes "B <kind> <first_seq> <count>" to stdout, and
// "A <kind> <first_seq> <count>" once the append returned OK, so the parent
// knows exactly which records the store promised to keep. Now and then it
// also acknowledges some metrics and saves a pending batch, so those paths are
// interrupted too.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/storage/sqlite_storage.h"
#include "agent/storage/storage.h"

namespace {

void Report(const std::string& line) {
  std::string out = line + "\n";
  const char* p = out.data();
  size_t left = out.size();
  while (left > 0) {
    ssize_t n = write(STDOUT_FILENO, p, left);
    if (n <= 0) std::_Exit(5);  // the parent went away
    p += n;
    left -= static_cast<size_t>(n);
  }
}

[[noreturn]] void Fail(const std::string& what) {
  Report("E " + what);
  std::_Exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  using fleetd::agent::IdRange;
  using fleetd::agent::RecordKind;
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <data_dir> <seed>\n", argv[0]);
    return 64;
  }
  fleetd::agent::SqliteStorageOptions options;
  options.data_dir = argv[1];
  options.max_bytes = 64 << 20;
  absl::StatusOr<std::unique_ptr<fleetd::agent::Storage>> opened =
      fleetd::agent::OpenSqliteStorage(options);
  if (!opened.ok()) Fail(opened.status().ToString());
  fleetd::agent::Storage& store = **opened;

  std::mt19937_64 rng(std::strtoull(argv[2], nullptr, 10));
  int64_t seq = 0;
  for (int64_t batch = 0;; ++batch) {
    const int n = 1 + static_cast<int>(rng() % 20);
    const bool metrics = rng() % 5 != 0;
    const char kind = metrics ? 'M' : 'L';
    const std::string line =
        absl::StrCat(" ", std::string(1, kind), " ", seq, " ", n);
    Report("B" + line);
    absl::StatusOr<IdRange> ids;
    if (metrics) {
      std::vector<fleetd::v1::Metric> records(n);
      for (int i = 0; i < n; ++i) {
        records[i].set_name("crash_test");
        records[i].set_value(static_cast<double>(seq + i));
        (*records[i].mutable_labels())["series"] =
            std::to_string((seq + i) % 7);
      }
      ids = store.AppendMetrics(records);
    } else {
      std::vector<fleetd::v1::LogEntry> records(n);
      for (int i = 0; i < n; ++i) {
        records[i].set_level("info");
        records[i].set_message(std::to_string(seq + i));
      }
      ids = store.AppendLogs(records);
    }
    if (!ids.ok()) Fail(ids.status().ToString());
    Report("A" + line);
    seq += n;

    if (batch % 7 == 3) {
      fleetd::agent::ReadOptions read;
      read.max_records = 30;
      auto unsynced = store.ReadMetrics(read);
      if (!unsynced.ok()) Fail(unsynced.status().ToString());
      if (!unsynced->empty()) {
        IdRange acked{unsynced->front().id, unsynced->back().id};
        absl::Status s = store.SavePendingBatch(
            {"metrics", RecordKind::kMetric, batch, acked,
             static_cast<int32_t>(unsynced->size()), 0});
        if (!s.ok()) Fail(s.ToString());
        if (!store.MarkSynced(RecordKind::kMetric, acked).ok()) Fail("mark");
        if (!store.ClearPendingBatch("metrics").ok()) Fail("clear");
      }
    }
  }
}
