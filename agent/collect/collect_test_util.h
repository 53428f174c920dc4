// Helpers shared by the agent/collect tests.
#ifndef FLEETD_AGENT_COLLECT_COLLECT_TEST_UTIL_H_
#define FLEETD_AGENT_COLLECT_COLLECT_TEST_UTIL_H_

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "agent/storage/memory_storage.h"
#include "agent/storage/storage.h"
#include "agent/storage/storage_wrapper.h"
#include "common/clock/clock.h"
#include "gtest/gtest.h"

namespace fleetd::agent::collect_testing {

// A fresh directory under /tmp, removed with its contents at the end.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/fleetd-collect-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(const std::string& rel) const { return path_ + "/" + rel; }

  // Writes (replacing) `rel` below the directory, creating parents.
  void Write(const std::string& rel, const std::string& data) const {
    std::filesystem::path p(File(rel));
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary | std::ios::trunc) << data;
  }
  void Append(const std::string& rel, const std::string& data) const {
    std::ofstream(File(rel), std::ios::binary | std::ios::app) << data;
  }
  std::string Read(const std::string& rel) const {
    std::ifstream in(File(rel), std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

 private:
  std::string path_;
};

// The memory ring, on `clock`.
inline std::unique_ptr<Storage> NewTestStorage(Clock* clock) {
  MemoryStorageOptions options;
  options.capacity_bytes = int64_t{16} << 20;
  options.clock = clock;
  auto storage = NewMemoryStorage(options);
  EXPECT_TRUE(storage.ok()) << storage.status();
  return storage.ok() ? *std::move(storage) : nullptr;
}

// A store that forwards to another one, except that appends fail with
// `fail_with` while it is set.
class FlakyStorage final : public StorageWrapper {
 public:
  explicit FlakyStorage(Storage* base) : StorageWrapper(base) {}

  void FailAppends(absl::Status s) {
    absl::MutexLock lock(&mu_);
    fail_with_ = std::move(s);
  }
  int appends() {
    absl::MutexLock lock(&mu_);
    return appends_;
  }

  absl::StatusOr<IdRange> AppendMetrics(
      absl::Span<const v1::Metric> metrics) override {
    if (absl::Status s = Check(); !s.ok()) return s;
    return StorageWrapper::AppendMetrics(metrics);
  }
  absl::StatusOr<IdRange> AppendLogs(
      absl::Span<const v1::LogEntry> logs) override {
    if (absl::Status s = Check(); !s.ok()) return s;
    return StorageWrapper::AppendLogs(logs);
  }
  absl::StatusOr<IdRange> AppendEvents(
      absl::Span<const v1::Event> events) override {
    if (absl::Status s = Check(); !s.ok()) return s;
    return StorageWrapper::AppendEvents(events);
  }

 private:
  absl::Status Check() {
    absl::MutexLock lock(&mu_);
    ++appends_;
    return fail_with_;
  }

  absl::Mutex mu_;
  absl::Status fail_with_ ABSL_GUARDED_BY(mu_);
  int appends_ ABSL_GUARDED_BY(mu_) = 0;
};

// Everything stored, oldest first.
inline std::vector<v1::Metric> AllMetrics(Storage& storage) {
  ReadOptions options;
  options.max_records = 100000;
  options.include_synced = true;
  std::vector<v1::Metric> out;
  auto read = storage.ReadMetrics(options);
  EXPECT_TRUE(read.ok()) << read.status();
  if (read.ok()) {
    for (auto& r : *read) out.push_back(std::move(r.record));
  }
  return out;
}

inline std::vector<v1::LogEntry> AllLogs(Storage& storage) {
  ReadOptions options;
  options.max_records = 100000;
  options.include_synced = true;
  std::vector<v1::LogEntry> out;
  auto read = storage.ReadLogs(options);
  EXPECT_TRUE(read.ok()) << read.status();
  if (read.ok()) {
    for (auto& r : *read) out.push_back(std::move(r.record));
  }
  return out;
}

inline std::vector<std::string> Messages(Storage& storage) {
  std::vector<std::string> out;
  for (const v1::LogEntry& e : AllLogs(storage)) out.push_back(e.message());
  return out;
}

// The value of the sample named `name` with exactly `labels`, if present.
inline std::optional<double> Find(
    const std::vector<v1::Metric>& metrics, const std::string& name,
    const std::vector<std::pair<std::string, std::string>>& labels = {}) {
  for (const v1::Metric& m : metrics) {
    if (m.name() != name ||
        m.labels_size() != static_cast<int>(labels.size())) {
      continue;
    }
    bool match = true;
    for (const auto& [k, v] : labels) {
      auto it = m.labels().find(k);
      match = match && it != m.labels().end() && it->second == v;
    }
    if (match) return m.value();
  }
  return std::nullopt;
}

}  // namespace fleetd::agent::collect_testing

#endif  // FLEETD_AGENT_COLLECT_COLLECT_TEST_UTIL_H_
