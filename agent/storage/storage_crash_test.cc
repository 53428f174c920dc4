// Crash safety of the SQLite store, proven with real SIGKILLs.
//
// Each round starts storage_crash_child, which appends batches and reports
// every append that returned OK through a pipe. After a seeded, random number
// of reports the test kills the child with SIGKILL (while it keeps appending),
// reopens the store and checks that every acknowledged record is present
// exactly once, that the batch in flight is all there or not at all, that the
// counters match the data, and that SQLite's integrity check passes.
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "agent/storage/sqlite_api.h"
#include "agent/storage/sqlite_storage.h"
#include "agent/storage/storage_test_util.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#ifndef FLEETD_CRASH_CHILD_PATH
#error "FLEETD_CRASH_CHILD_PATH must name the storage_crash_child binary"
#endif

namespace fleetd::agent {
namespace {

using ::fleetd::agent::testing::LogCapture;
using ::fleetd::agent::testing::TempDir;
using ::fleetd::testing::IsOk;

constexpr int kRounds = 5;
constexpr absl::Duration kRoundDeadline = absl::Seconds(20);

struct Batch {
  char kind = 'M';
  int64_t first = 0;
  int64_t count = 0;
  bool acked = false;
};

// The child's reports, parsed line by line.
class Reports {
 public:
  // Consumes complete lines from `chunk`. Returns false on a malformed line.
  bool Feed(absl::string_view chunk) {
    pending_.append(chunk.data(), chunk.size());
    size_t nl;
    while ((nl = pending_.find('\n')) != std::string::npos) {
      std::string line = pending_.substr(0, nl);
      pending_.erase(0, nl + 1);
      if (!Parse(line)) return false;
    }
    return true;
  }
  int acked() const { return acked_; }
  int begun() const { return begun_; }
  const std::map<int64_t, Batch>& batches() const { return batches_; }
  const std::string& error() const { return error_; }

 private:
  bool Parse(const std::string& line) {
    if (line.rfind("E ", 0) == 0) {
      error_ = line;
      return true;
    }
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    Batch b;
    if (f.size() != 4 || (f[0] != "B" && f[0] != "A") || f[1].size() != 1 ||
        !absl::SimpleAtoi(f[2], &b.first) ||
        !absl::SimpleAtoi(f[3], &b.count)) {
      error_ = "malformed report: " + line;
      return false;
    }
    b.kind = f[1][0];
    if (f[0] == "B") {
      batches_[b.first] = b;
      ++begun_;
    } else {
      batches_[b.first].acked = true;
      ++acked_;
    }
    return true;
  }

  std::string pending_;
  std::map<int64_t, Batch> batches_;
  int acked_ = 0;
  int begun_ = 0;
  std::string error_;
};

// Reads from `fd` into `reports` until `until()` holds, EOF, or the deadline.
// Returns false on timeout.
template <typename Until>
bool ReadReports(int fd, Reports* reports, absl::Time deadline, Until until) {
  char buf[4096];
  while (!until()) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    pollfd p{fd, POLLIN, 0};
    int r = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return true;  // EOF: the child is gone
    if (!reports->Feed(absl::string_view(buf, static_cast<size_t>(n)))) {
      return true;
    }
  }
  return true;
}

std::string IntegrityCheck(const std::string& path) {
  sqlite3* db = nullptr;
  std::string result = "cannot open";
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) ==
      SQLITE_OK) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &stmt, nullptr) ==
            SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW) {
      result = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    } else {
      result = sqlite3_errmsg(db);
    }
    sqlite3_finalize(stmt);
  }
  sqlite3_close(db);
  return result;
}

// Every record in the store, by sequence number: how often it occurs.
template <typename ReadFn, typename SeqFn>
void CollectAll(ReadFn read, SeqFn seq_of, std::map<int64_t, int>* seen,
                int64_t* rows) {
  ReadOptions options;
  options.include_synced = true;
  options.max_records = 500;
  for (;;) {
    auto batch = read(options);
    ASSERT_THAT(batch, IsOk());
    if (batch->empty()) return;
    for (const auto& r : *batch) {
      ++(*seen)[seq_of(r.record)];
      ++*rows;
    }
    options.after_id = batch->back().id;
  }
}

TEST(StorageCrashTest, AcknowledgedAppendsSurviveSigkill) {
  uint64_t base_seed = 0x5eed2024;
  if (const char* s = std::getenv("FLEETD_CRASH_SEED")) {
    ASSERT_TRUE(absl::SimpleAtoi(s, &base_seed)) << s;
  }
  for (int round = 0; round < kRounds; ++round) {
    const uint64_t seed = base_seed + round;
    std::mt19937_64 rng(seed);
    const int kill_after = 20 + static_cast<int>(rng() % 400);
    // Kill right after the child announced an append (so most likely inside
    // it) or right after one returned.
    const bool on_begin = rng() % 2 == 0;
    std::printf(
        "crash round %d: seed %llu, SIGKILL after the %s of append "
        "%d (FLEETD_CRASH_SEED=%llu reproduces the run)\n",
        round, static_cast<unsigned long long>(seed),
        on_begin ? "start" : "end", kill_after,
        static_cast<unsigned long long>(base_seed));
    SCOPED_TRACE(::testing::Message() << "round " << round << " seed " << seed);
    TempDir dir;

    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const std::string seed_arg = std::to_string(seed);
    const char* child_path = FLEETD_CRASH_CHILD_PATH;
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      dup2(fds[1], STDOUT_FILENO);
      close(fds[0]);
      close(fds[1]);
      execl(child_path, child_path, dir.path().c_str(), seed_arg.c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
    close(fds[1]);

    Reports reports;
    const absl::Time deadline = absl::Now() + kRoundDeadline;
    const bool in_time = ReadReports(fds[0], &reports, deadline, [&] {
      return (on_begin ? reports.begun() : reports.acked()) >= kill_after ||
             !reports.error().empty();
    });
    kill(pid, SIGKILL);
    // Reports written before the kill landed count too: read to EOF.
    ReadReports(fds[0], &reports, deadline, [] { return false; });
    close(fds[0]);
    int wstatus = 0;
    ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
    ASSERT_TRUE(in_time) << "child reported only " << reports.acked()
                         << " appends in time";
    ASSERT_EQ(reports.error(), "");
    ASSERT_TRUE(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL)
        << "child exited on its own, status " << wstatus;

    const std::string db_path = dir.File("fleetd.db");
    EXPECT_EQ(IntegrityCheck(db_path), "ok");

    LogCapture log;
    SqliteStorageOptions options;
    options.data_dir = dir.path();
    options.max_bytes = 64 << 20;
    options.log = log.Fn();
    absl::StatusOr<std::unique_ptr<Storage>> store = OpenSqliteStorage(options);
    ASSERT_THAT(store, IsOk());
    absl::StatusOr<StorageInfo> info = (*store)->Info();
    ASSERT_THAT(info, IsOk());
    EXPECT_EQ(info->details.count("recovered_from"), 0u) << log.All();

    std::map<int64_t, int> metrics;
    std::map<int64_t, int> logs;
    int64_t metric_rows = 0;
    int64_t log_rows = 0;
    CollectAll(
        [&](const ReadOptions& o) { return (*store)->ReadMetrics(o); },
        [](const v1::Metric& m) { return static_cast<int64_t>(m.value()); },
        &metrics, &metric_rows);
    CollectAll([&](const ReadOptions& o) { return (*store)->ReadLogs(o); },
               [](const v1::LogEntry& l) { return std::stoll(l.message()); },
               &logs, &log_rows);

    // The counters agree with the rows, as they were committed together.
    const KindInfo& mk = info->of(RecordKind::kMetric);
    const KindInfo& lk = info->of(RecordKind::kLog);
    EXPECT_EQ(mk.unsynced + mk.synced, metric_rows);
    EXPECT_EQ(lk.unsynced + lk.synced, log_rows);

    int64_t acked_records = 0;
    int64_t in_flight = 0;
    for (const auto& [first, b] : reports.batches()) {
      const std::map<int64_t, int>& seen = b.kind == 'M' ? metrics : logs;
      int present = 0;
      for (int64_t s = first; s < first + b.count; ++s) {
        auto it = seen.find(s);
        const int n = it == seen.end() ? 0 : it->second;
        ASSERT_LE(n, 1) << "record " << s << " stored " << n << " times";
        present += n;
      }
      if (b.acked) {
        ASSERT_EQ(present, b.count)
            << "acknowledged batch at " << first << " lost records";
        acked_records += b.count;
      } else {
        // The batch in flight at the kill: all or nothing.
        ASSERT_TRUE(present == 0 || present == b.count)
            << "batch at " << first << " half there: " << present << "/"
            << b.count;
        ++in_flight;
      }
    }
    EXPECT_LE(in_flight, 1);
    // Nothing the child never began is there.
    for (const auto* seen : {&metrics, &logs}) {
      for (const auto& [s, n] : *seen) {
        auto it = reports.batches().upper_bound(s);
        ASSERT_NE(it, reports.batches().begin()) << "unknown record " << s;
        --it;
        ASSERT_LT(s, it->first + it->second.count) << "unknown record " << s;
      }
    }
    EXPECT_GE(reports.acked(), kill_after - 1);
    std::printf(
        "crash round %d: %lld acknowledged records intact, %lld batch "
        "in flight\n",
        round, static_cast<long long>(acked_records),
        static_cast<long long>(in_flight));
  }
}

}  // namespace
}  // namespace fleetd::agent
