#include <memory>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/writers/backends.h"
#include "tests/fixtures/victoria_metrics_fixture.h"

namespace fleetd::server {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::SizeIs;

class VictoriaMetricsWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto vm = fleetd::testing::VictoriaMetricsFixture::Shared();
    ASSERT_THAT(vm, IsOk());
    vm_ = *vm;
    auto w = NewVictoriaMetricsWriter({.url = vm_->url()});
    ASSERT_THAT(w, IsOk());
    writer_ = *std::move(w);
  }

  static DecodedBatch Batch(const std::string& device, int64_t seq,
                            const std::string& metric, int n, absl::Time t0) {
    DecodedBatch b;
    b.device = {device, "org-a", "k"};
    b.kind = DataKind::kMetrics;
    b.stream = "metrics";
    b.sequence_number = seq;
    for (int i = 0; i < n; ++i) {
      v1::Metric* m = b.metrics.add_metrics();
      m->set_name(metric);
      m->set_value(i);
      int64_t ms = absl::ToUnixMillis(t0) + i * 1000;
      m->mutable_timestamp()->set_seconds(ms / 1000);
      (*m->mutable_labels())["core"] = std::to_string(i % 2);
    }
    return b;
  }

  fleetd::testing::VictoriaMetricsFixture* vm_ = nullptr;
  std::unique_ptr<Writer> writer_;
};

TEST_F(VictoriaMetricsWriterTest,
       WritesSamplesWithIdentityLabelsAndReadsThemBack) {
  absl::Time t0 = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()) - 600);
  DecodedBatch a = Batch("dev-a", 1, "vmw_cpu", 4, t0);
  DecodedBatch b = Batch("dev-b", 1, "vmw_cpu", 2, t0);
  std::vector<const DecodedBatch*> both = {&a, &b};
  ASSERT_THAT(writer_->Write(both), IsOk());
  ASSERT_THAT(vm_->ForceFlush(), IsOk());
  auto lines =
      vm_->WaitForSeries("{__name__=\"vmw_cpu\"}", 4, absl::Seconds(30));
  ASSERT_THAT(lines, IsOk());
  ASSERT_THAT(*lines, SizeIs(4));  // 2 devices x 2 cores
  size_t samples = 0;
  for (const std::string& line : *lines) {
    nlohmann::json j = nlohmann::json::parse(line);
    EXPECT_EQ(j["metric"]["org_id"], "org-a");
    std::string device = j["metric"]["device_id"];
    EXPECT_TRUE(device == "dev-a" || device == "dev-b") << device;
    samples += j["values"].size();
  }
  EXPECT_EQ(samples, 6u);
}

TEST_F(VictoriaMetricsWriterTest, HostileLabelValuesAreStoredVerbatim) {
  absl::Time t0 = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()) - 300);
  DecodedBatch b = Batch("dev-x", 1, "vmw_hostile", 1, t0);
  const std::string hostile = "\"} or vector(1) # '; DROP TABLE x;--\\n";
  (*b.metrics.mutable_metrics(0)->mutable_labels())["site"] = hostile;
  std::vector<const DecodedBatch*> one = {&b};
  ASSERT_THAT(writer_->Write(one), IsOk());
  ASSERT_THAT(vm_->ForceFlush(), IsOk());
  auto lines =
      vm_->WaitForSeries("{__name__=\"vmw_hostile\"}", 1, absl::Seconds(30));
  ASSERT_THAT(lines, IsOk());
  ASSERT_THAT(*lines, SizeIs(1));
  // The export is JSON: the value comes back intact, in its own label.
  nlohmann::json j = nlohmann::json::parse((*lines)[0]);
  EXPECT_EQ(j["metric"]["site"], hostile);
  EXPECT_EQ(j["metric"].size(), 5u);  // __name__, core, site, device_id, org_id
}

TEST_F(VictoriaMetricsWriterTest, UnreachableBackendIsUnavailable) {
  auto w = NewVictoriaMetricsWriter(
      {.url = "http://127.0.0.1:1", .timeout = absl::Seconds(5)});
  ASSERT_THAT(w, IsOk());
  DecodedBatch b = Batch("dev-y", 1, "vmw_down", 1, absl::Now());
  std::vector<const DecodedBatch*> one = {&b};
  EXPECT_THAT((*w)->Write(one), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT((*w)->Ping(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(writer_->Ping(), IsOk());
}

}  // namespace
}  // namespace fleetd::server
