#include "agent/api/legacy_quarantine.h"

#include <filesystem>

#include "agent/storage/memory_storage.h"
#include "agent/storage/storage_test_util.h"
#include "common/clock/clock.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::agent {
namespace {

using ::fleetd::agent::testing::TempDir;
using ::fleetd::agent::testing::WriteWholeFile;
using ::fleetd::testing::IsOk;

class LegacyQuarantineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MemoryStorageOptions o;
    o.capacity_bytes = 1 << 20;
    o.clock = &clock_;
    auto s = NewMemoryStorage(o);
    ASSERT_THAT(s, IsOk());
    storage_ = *std::move(s);
    dir_ = tmp_.path() + "/quarantine";
    std::filesystem::create_directory(dir_);
  }

  SimulatedClock clock_;
  std::unique_ptr<Storage> storage_;
  TempDir tmp_;
  std::string dir_;
};

TEST_F(LegacyQuarantineTest, FilesBecomeSetAsideBatchesInTheStore) {
  v1::MetricsBatch metrics;
  for (int i = 0; i < 3; ++i) {
    v1::Metric* m = metrics.add_metrics();
    m->set_name("cpu");
    m->set_value(i);
    m->mutable_timestamp()->set_seconds(1'700'000'000 + i);
  }
  WriteWholeFile(dir_ + "/metrics-1700000000000000042.pb",
                 metrics.SerializeAsString());
  v1::LogsBatch logs;
  logs.add_logs()->set_message("hello");
  WriteWholeFile(dir_ + "/logs-7.pb", logs.SerializeAsString());

  absl::StatusOr<LegacyImport> imported =
      ImportLegacyQuarantine(dir_, storage_.get());
  ASSERT_THAT(imported, IsOk());
  EXPECT_EQ(imported->batches, 2);
  EXPECT_EQ(imported->records, 4);
  EXPECT_EQ(imported->skipped, 0);
  EXPECT_FALSE(std::filesystem::exists(dir_))
      << "no plaintext copy is left behind";

  auto listed = storage_->ListSetAside();
  ASSERT_THAT(listed, IsOk());
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_EQ(storage_->Info()->of(RecordKind::kMetric).set_aside, 3);
  EXPECT_EQ(storage_->Info()->of(RecordKind::kMetric).unsynced, 0);
  // Re-sendable like any set-aside batch.
  ASSERT_THAT(storage_->RetrySetAside("metrics", 1700000000000000042), IsOk());
  auto read = storage_->ReadMetrics({});
  ASSERT_THAT(read, IsOk());
  ASSERT_EQ(read->size(), 3u);
  EXPECT_EQ((*read)[2].record.value(), 2);
  EXPECT_EQ((*read)[2].record.timestamp().seconds(), 1'700'000'002)
      << "the records keep their own timestamps";
}

TEST_F(LegacyQuarantineTest, UnreadableFilesStayInPlace) {
  WriteWholeFile(dir_ + "/metrics-5.pb", "\xff\xff not a protobuf");
  WriteWholeFile(dir_ + "/notes.txt", "operator's notes");
  WriteWholeFile(dir_ + "/traces-9.pb", "");
  absl::StatusOr<LegacyImport> imported =
      ImportLegacyQuarantine(dir_, storage_.get());
  ASSERT_THAT(imported, IsOk());
  EXPECT_EQ(imported->batches, 0);
  EXPECT_EQ(imported->skipped, 3);
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/metrics-5.pb"));
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/notes.txt"));
  EXPECT_EQ(storage_->ListSetAside()->size(), 0u);
}

TEST_F(LegacyQuarantineTest, NoDirectoryIsNothingToDo) {
  absl::StatusOr<LegacyImport> imported =
      ImportLegacyQuarantine(tmp_.path() + "/absent", storage_.get());
  ASSERT_THAT(imported, IsOk());
  EXPECT_EQ(imported->batches, 0);
  EXPECT_EQ(imported->skipped, 0);
}

}  // namespace
}  // namespace fleetd::agent
