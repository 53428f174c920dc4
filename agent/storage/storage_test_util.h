// Helpers shared by the storage tests.
#ifndef FLEETD_AGENT_STORAGE_STORAGE_TEST_UTIL_H_
#define FLEETD_AGENT_STORAGE_STORAGE_TEST_UTIL_H_

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/storage/storage.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace fleetd::agent::testing {

// A fresh directory under /tmp, removed with its contents at the end.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/fleetd-storage-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp failed";
    }
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void WriteWholeFile(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

// Collects what a store logs.
class LogCapture {
 public:
  StorageLogFn Fn() {
    return [this](absl::LogSeverity severity, absl::string_view message) {
      absl::MutexLock lock(&mu_);
      lines_.emplace_back(severity, std::string(message));
    };
  }
  // Messages at `severity` containing `needle`.
  int Count(absl::LogSeverity severity, absl::string_view needle) const {
    absl::MutexLock lock(&mu_);
    int n = 0;
    for (const auto& [s, m] : lines_) {
      if (s == severity && absl::StrContains(m, needle)) ++n;
    }
    return n;
  }
  std::string All() const {
    absl::MutexLock lock(&mu_);
    std::string out;
    for (const auto& [s, m] : lines_) {
      out += std::string(absl::LogSeverityName(s)) + ": " + m + "\n";
    }
    return out;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<std::pair<absl::LogSeverity, std::string>> lines_
      ABSL_GUARDED_BY(mu_);
};

inline google::protobuf::Timestamp Ts(absl::Time t) {
  google::protobuf::Timestamp ts;
  const int64_t nanos = absl::ToUnixNanos(t);
  ts.set_seconds(nanos / 1'000'000'000);
  ts.set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
  return ts;
}

inline v1::Metric MakeMetric(
    const std::string& name, double value, absl::Time t,
    std::vector<std::pair<std::string, std::string>> labels = {}) {
  v1::Metric m;
  m.set_name(name);
  m.set_value(value);
  *m.mutable_timestamp() = Ts(t);
  for (auto& [k, v] : labels) (*m.mutable_labels())[k] = v;
  return m;
}

inline v1::LogEntry MakeLog(const std::string& message, absl::Time t,
                            std::string level = "info") {
  v1::LogEntry l;
  l.set_level(std::move(level));
  l.set_message(message);
  l.set_source("test");
  (*l.mutable_fields())["k"] = message;
  *l.mutable_timestamp() = Ts(t);
  return l;
}

inline v1::Event MakeEvent(const std::string& name, absl::Time t) {
  v1::Event e;
  e.set_name(name);
  e.set_event_id(name + "-id");
  (*e.mutable_properties())["door"] = "front";
  (*e.mutable_values())["duration_s"] = 1.5;
  *e.mutable_timestamp() = Ts(t);
  return e;
}

MATCHER_P(EqualsProto, expected, "equals " + expected.ShortDebugString()) {
  if (google::protobuf::util::MessageDifferencer::Equals(arg, expected)) {
    return true;
  }
  *result_listener << "which is " << arg.ShortDebugString();
  return false;
}

template <typename T>
std::vector<int64_t> Ids(const std::vector<StoredRecord<T>>& records) {
  std::vector<int64_t> ids;
  for (const auto& r : records) ids.push_back(r.id);
  return ids;
}

}  // namespace fleetd::agent::testing

#endif  // FLEETD_AGENT_STORAGE_STORAGE_TEST_UTIL_H_
