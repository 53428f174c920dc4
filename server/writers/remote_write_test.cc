#include "server/writers/remote_write.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "prometheus/remote.pb.h"
#include "snappy.h"

// Counts heap allocations, to check that encoding allocates nothing per
// sample.
std::atomic<int64_t> g_allocations{0};

void* operator new(size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
// GCC takes free() after an inlined operator new for a mismatch; it is the
// pair replaced here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace fleetd::server {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

DecodedBatch Metrics(const std::string& device) {
  DecodedBatch b;
  b.device = {device, "org-a", "k"};
  b.kind = DataKind::kMetrics;
  b.stream = "metrics";
  return b;
}

void Add(DecodedBatch& b, const std::string& name, double value,
         int64_t seconds, int32_t nanos,
         std::vector<std::pair<std::string, std::string>> labels) {
  v1::Metric m;
  m.set_name(name);
  m.set_value(value);
  m.mutable_timestamp()->set_seconds(seconds);
  m.mutable_timestamp()->set_nanos(nanos);
  for (auto& [k, v] : labels) (*m.mutable_labels())[k] = v;
  b.metrics.Append(m);
}

// Undoes snappy and parses the WriteRequest with the protobuf library.
prometheus::WriteRequest Decode(const std::string& body) {
  std::string raw;
  EXPECT_TRUE(snappy::Uncompress(body.data(), body.size(), &raw));
  prometheus::WriteRequest request;
  EXPECT_TRUE(request.ParseFromString(raw));
  return request;
}

// Encodes `batches` with `encoder` and decodes the body.
prometheus::WriteRequest EncodeAndDecode(
    RemoteWriteEncoder& encoder,
    absl::Span<const DecodedBatch* const> batches) {
  std::string body;
  const absl::Status encoded = encoder.Encode(batches, &body);
  EXPECT_THAT(encoded, IsOk());
  return Decode(body);
}

std::vector<std::pair<std::string, std::string>> LabelsOf(
    const prometheus::TimeSeries& ts) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const prometheus::Label& l : ts.labels()) {
    out.emplace_back(l.name(), l.value());
  }
  return out;
}

std::vector<std::pair<int64_t, double>> SamplesOf(
    const prometheus::TimeSeries& ts) {
  std::vector<std::pair<int64_t, double>> out;
  for (const prometheus::Sample& s : ts.samples()) {
    out.emplace_back(s.timestamp(), s.value());
  }
  return out;
}

TEST(RemoteWriteEncoderTest, LabelsAreSortedAndValuesVerbatim) {
  const std::string hostile = "a \"quoted\" \\back\\slash\nnew line";
  const std::string unicode = "Zürich 東京 \xF0\x9F\x93\x88";  // ü, CJK, emoji
  const std::string long_value(300, 'x');  // a two-byte length prefix
  DecodedBatch b = Metrics("dev-1");
  Add(b, "cpu_usage", 0.5, 1'700'000'000, 123'999'999,
      {{"site", hostile},
       {"city", unicode},
       {"Zone", "upper case sorts before __name__"},
       {"blob", long_value}});
  const DecodedBatch* batches[] = {&b};
  RemoteWriteEncoder encoder;
  prometheus::WriteRequest request = EncodeAndDecode(encoder, batches);
  ASSERT_EQ(request.timeseries_size(), 1);
  EXPECT_THAT(
      LabelsOf(request.timeseries(0)),
      ElementsAre(Pair("Zone", "upper case sorts before __name__"),
                  Pair("__name__", "cpu_usage"), Pair("blob", long_value),
                  Pair("city", unicode), Pair("device_id", "dev-1"),
                  Pair("org_id", "org-a"), Pair("site", hostile)));
  // Milliseconds, rounded down.
  EXPECT_THAT(SamplesOf(request.timeseries(0)),
              ElementsAre(Pair(1'700'000'000'123, 0.5)));
  EXPECT_EQ(encoder.series_count(), 1u);
  EXPECT_EQ(encoder.sample_count(), 1u);
}

// One TimeSeries per label set across all batches of the flush, in the order
// of first appearance, samples in timestamp order.
TEST(RemoteWriteEncoderTest, GroupsSeriesAcrossBatchesInTimestampOrder) {
  DecodedBatch a = Metrics("dev-1");
  Add(a, "temp", 3, 300, 0, {{"core", "0"}});
  Add(a, "temp", 10, 100, 0, {{"core", "1"}});
  Add(a, "temp", 1, 100, 0, {{"core", "0"}});
  DecodedBatch other_device = Metrics("dev-2");
  Add(other_device, "temp", 7, 100, 0, {{"core", "0"}});
  DecodedBatch b = Metrics("dev-1");  // a later batch of the same device
  Add(b, "temp", 2, 200, 0, {{"core", "0"}});
  Add(b, "temp", 20, 50, 0, {{"core", "1"}});
  DecodedBatch logs;
  logs.kind = DataKind::kLogs;
  logs.logs.add_logs()->set_message("skipped");
  const DecodedBatch* batches[] = {&a, &other_device, &logs, &b};
  RemoteWriteEncoder encoder;
  prometheus::WriteRequest request = EncodeAndDecode(encoder, batches);
  ASSERT_EQ(request.timeseries_size(), 3);
  EXPECT_THAT(LabelsOf(request.timeseries(0)),
              ElementsAre(Pair("__name__", "temp"), Pair("core", "0"),
                          Pair("device_id", "dev-1"), Pair("org_id", "org-a")));
  EXPECT_THAT(
      SamplesOf(request.timeseries(0)),
      ElementsAre(Pair(100'000, 1), Pair(200'000, 2), Pair(300'000, 3)));
  EXPECT_THAT(LabelsOf(request.timeseries(1)),
              ElementsAre(Pair("__name__", "temp"), Pair("core", "1"),
                          Pair("device_id", "dev-1"), Pair("org_id", "org-a")));
  EXPECT_THAT(SamplesOf(request.timeseries(1)),
              ElementsAre(Pair(50'000, 20), Pair(100'000, 10)));
  EXPECT_THAT(LabelsOf(request.timeseries(2)),
              ElementsAre(Pair("__name__", "temp"), Pair("core", "0"),
                          Pair("device_id", "dev-2"), Pair("org_id", "org-a")));
  EXPECT_THAT(SamplesOf(request.timeseries(2)), ElementsAre(Pair(100'000, 7)));
  EXPECT_EQ(encoder.sample_count(), 6u);
}

// Equal timestamps keep the order of the flush (a retried write is the same).
TEST(RemoteWriteEncoderTest, EqualTimestampsKeepTheirOrder) {
  DecodedBatch b = Metrics("dev-1");
  Add(b, "up", 2, 100, 0, {});
  Add(b, "up", 1, 100, 0, {});
  Add(b, "up", 0, 50, 0, {});
  const DecodedBatch* batches[] = {&b};
  RemoteWriteEncoder encoder;
  prometheus::WriteRequest request = EncodeAndDecode(encoder, batches);
  ASSERT_EQ(request.timeseries_size(), 1);
  EXPECT_THAT(SamplesOf(request.timeseries(0)),
              ElementsAre(Pair(50'000, 0), Pair(100'000, 2), Pair(100'000, 1)));
}

TEST(RemoteWriteEncoderTest, BatchIdentityWinsAndEmptyValuesAreLeftOut) {
  DecodedBatch b = Metrics("dev-1");
  Add(b, "up", 1, 100, 0,
      {{"device_id", "forged"},
       {"org_id", "forged"},
       {"__name__", "forged"},
       {"__meta", "x"},
       {"empty", ""},
       {"kept", "y"}});
  const DecodedBatch* batches[] = {&b};
  RemoteWriteEncoder encoder;
  prometheus::WriteRequest request = EncodeAndDecode(encoder, batches);
  ASSERT_EQ(request.timeseries_size(), 1);
  EXPECT_THAT(LabelsOf(request.timeseries(0)),
              ElementsAre(Pair("__name__", "up"), Pair("device_id", "dev-1"),
                          Pair("kept", "y"), Pair("org_id", "org-a")));
}

// The same content gives the same bytes whatever order the label maps were
// filled in, so a retried write is identical.
TEST(RemoteWriteEncoderTest, OutputDoesNotDependOnMapOrder) {
  std::vector<std::pair<std::string, std::string>> labels;
  for (int i = 0; i < 20; ++i) {
    labels.emplace_back(absl::StrCat("l", i), absl::StrCat("v", i));
  }
  DecodedBatch forward = Metrics("dev-1");
  Add(forward, "m", 1, 100, 0, labels);
  Add(forward, "m", 2, 101, 0, labels);
  std::reverse(labels.begin(), labels.end());
  DecodedBatch backward = Metrics("dev-1");
  Add(backward, "m", 1, 100, 0, labels);
  Add(backward, "m", 2, 101, 0, labels);
  RemoteWriteEncoder encoder;
  std::string first;
  std::string second;
  const DecodedBatch* f[] = {&forward};
  const DecodedBatch* r[] = {&backward};
  ASSERT_THAT(encoder.Encode(f, &first), IsOk());
  const std::string raw_first(encoder.uncompressed());
  ASSERT_THAT(encoder.Encode(r, &second), IsOk());
  EXPECT_EQ(raw_first, encoder.uncompressed());
  EXPECT_EQ(first, second);
  EXPECT_EQ(encoder.series_count(), 1u);
}

// Scratch space is reused: a smaller request after a larger one is exact.
TEST(RemoteWriteEncoderTest, ReusedEncoderWritesOnlyTheNewRequest) {
  DecodedBatch big = Metrics("dev-1");
  for (int i = 0; i < 500; ++i) {
    Add(big, "m", i, 1000 + i, 0, {{"i", absl::StrCat(i % 50)}});
  }
  DecodedBatch small = Metrics("dev-2");
  // Before 1970: a negative timestamp is a 10-byte varint.
  Add(small, "n", -1.5, -3, 500'000'000, {});
  RemoteWriteEncoder encoder;
  std::string body;
  const DecodedBatch* b1[] = {&big};
  ASSERT_THAT(encoder.Encode(b1, &body), IsOk());
  EXPECT_EQ(Decode(body).timeseries_size(), 50);
  const DecodedBatch* b2[] = {&small};
  ASSERT_THAT(encoder.Encode(b2, &body), IsOk());
  prometheus::WriteRequest request = Decode(body);
  ASSERT_EQ(request.timeseries_size(), 1);
  EXPECT_THAT(SamplesOf(request.timeseries(0)),
              ElementsAre(Pair(-2'500, -1.5)));
}

// After a first request of its size, an encoder allocates once for 10 samples
// as for 1,000 (snappy's working memory), never per sample.
TEST(RemoteWriteEncoderTest, AllocatesNothingPerSample) {
  auto allocations = [](int samples) {
    DecodedBatch b = Metrics("dev-1");
    for (int i = 0; i < samples; ++i) {
      Add(b, "m", i, 1000 + i / 10, 0,
          {{"core", absl::StrCat(i % 10)}, {"host", "h"}});
    }
    const DecodedBatch* batches[] = {&b};
    RemoteWriteEncoder encoder;
    std::string body;
    EXPECT_THAT(encoder.Encode(batches, &body), IsOk());  // grows the buffers
    const int64_t before = g_allocations.load();
    const absl::Status second = encoder.Encode(batches, &body);
    const int64_t allocated = g_allocations.load() - before;
    EXPECT_THAT(second, IsOk());
    return allocated;
  };
  const int64_t for_10 = allocations(10);
  const int64_t for_1000 = allocations(1000);
  EXPECT_EQ(for_10, for_1000);
  EXPECT_LE(for_1000, 1);
}

// What a request must hold, computed the slow way: every sample's label list
// built and sorted, series found by comparing whole lists.
prometheus::WriteRequest Reference(
    absl::Span<const DecodedBatch* const> batches) {
  using Labels = std::vector<std::pair<std::string, std::string>>;
  struct Series {
    Labels labels;
    std::vector<std::pair<int64_t, double>> samples;  // in flush order
  };
  std::vector<Series> series;
  for (const DecodedBatch* b : batches) {
    if (b->kind != DataKind::kMetrics) continue;
    const MetricSamples& m = b->metrics;
    for (int i = 0; i < m.size(); ++i) {
      Labels labels = {{"__name__", std::string(m.name(i))}};
      if (!b->device.device_id.empty()) {
        labels.emplace_back("device_id", b->device.device_id);
      }
      if (!b->device.org_id.empty()) {
        labels.emplace_back("org_id", b->device.org_id);
      }
      for (int j = 0; j < m.label_count(i); ++j) {
        const LabelView l = m.label(i, j);
        if (l.value.empty() || l.name == "device_id" || l.name == "org_id" ||
            absl::StartsWith(l.name, "__")) {
          continue;
        }
        labels.emplace_back(std::string(l.name), std::string(l.value));
      }
      std::sort(labels.begin(), labels.end());
      auto it =
          std::find_if(series.begin(), series.end(),
                       [&](const Series& s) { return s.labels == labels; });
      if (it == series.end()) {
        series.push_back({labels, {}});
        it = series.end() - 1;
      }
      it->samples.emplace_back(m.timestamp_millis(i), m.value(i));
    }
  }
  prometheus::WriteRequest request;
  for (Series& s : series) {
    std::stable_sort(
        s.samples.begin(), s.samples.end(),
        [](const auto& a, const auto& b) { return a.first < b.first; });
    prometheus::TimeSeries* ts = request.add_timeseries();
    for (const auto& [name, value] : s.labels) {
      prometheus::Label* l = ts->add_labels();
      l->set_name(name);
      l->set_value(value);
    }
    for (const auto& [ms, value] : s.samples) {
      prometheus::Sample* sample = ts->add_samples();
      sample->set_timestamp(ms);
      sample->set_value(value);
    }
  }
  return request;
}

// Random flushes of batches read from the wire (whose samples share series,
// as decoded batches' do): the request is the reference's, and byte for byte
// what the same samples give when every sample is a series of its own (each
// sample looked up on its own, as before series were shared).
TEST(RemoteWriteEncoderTest, SharedSeriesEncodeAsTheReferenceAndAsUnshared) {
  std::mt19937 rng(5);
  const char* names[] = {"up", "temp", "Zed"};
  const char* keys[] = {"core",   "host", "device_id", "org_id",
                        "__meta", "Zone", "empty"};
  const char* values[] = {"0", "1", "", "x"};
  const char* devices[] = {"dev-1", "dev-2", ""};
  RemoteWriteEncoder shared_encoder;
  RemoteWriteEncoder unshared_encoder;
  int merged = 0;
  for (int round = 0; round < 500; ++round) {
    std::vector<v1::Metric> pool(4);
    for (v1::Metric& m : pool) {
      m.set_name(names[rng() % 3]);
      const int n = static_cast<int>(rng() % 5);
      for (int j = 0; j < n; ++j) {
        (*m.mutable_labels())[keys[rng() % 7]] = values[rng() % 4];
      }
    }
    const int count = 1 + static_cast<int>(rng() % 4);
    std::vector<DecodedBatch> shared(count);
    std::vector<DecodedBatch> unshared(count);
    std::vector<const DecodedBatch*> shared_ptrs;
    std::vector<const DecodedBatch*> unshared_ptrs;
    for (int k = 0; k < count; ++k) {
      v1::MetricsBatch batch;
      const int samples = static_cast<int>(rng() % 30);
      for (int i = 0; i < samples; ++i) {
        v1::Metric* m = batch.add_metrics();
        *m = pool[rng() % pool.size()];
        m->set_value(static_cast<double>(rng() % 5));
        m->mutable_timestamp()->set_seconds(100 * (1 + rng() % 3));
        m->mutable_timestamp()->set_nanos(
            static_cast<int32_t>(rng() % 3 * 1'000'000));
      }
      shared[k] = Metrics(devices[rng() % 3]);
      if (rng() % 4 == 0) shared[k].device.org_id.clear();
      unshared[k] = Metrics(shared[k].device.device_id);
      unshared[k].device.org_id = shared[k].device.org_id;
      absl::StatusOr<MetricSamples> parsed =
          MetricSamples::Parse(batch.SerializeAsString(), 64);
      ASSERT_THAT(parsed.status(), IsOk());
      shared[k].metrics = *std::move(parsed);
      unshared[k].metrics = MetricSamples::FromProto(batch);
      ASSERT_EQ(unshared[k].metrics.series_count(), samples);
      merged += samples - shared[k].metrics.series_count();
      shared_ptrs.push_back(&shared[k]);
      unshared_ptrs.push_back(&unshared[k]);
    }
    std::string shared_body;
    std::string unshared_body;
    ASSERT_THAT(shared_encoder.Encode(shared_ptrs, &shared_body), IsOk());
    ASSERT_THAT(unshared_encoder.Encode(unshared_ptrs, &unshared_body), IsOk());
    ASSERT_EQ(shared_encoder.uncompressed(), unshared_encoder.uncompressed())
        << "round " << round;
    ASSERT_EQ(shared_body, unshared_body);
    if (shared_body.empty()) continue;
    const prometheus::WriteRequest expected = Reference(shared_ptrs);
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(
        Decode(shared_body), expected))
        << "round " << round << "\n"
        << Decode(shared_body).DebugString() << "\nexpected\n"
        << expected.DebugString();
  }
  EXPECT_GT(merged, 1000);
}

TEST(RemoteWriteEncoderTest, NoSamplesIsAnEmptyBody) {
  DecodedBatch empty = Metrics("dev-1");
  DecodedBatch events;
  events.kind = DataKind::kEvents;
  const DecodedBatch* batches[] = {&empty, &events};
  RemoteWriteEncoder encoder;
  std::string body = "stale";
  ASSERT_THAT(encoder.Encode(batches, &body), IsOk());
  EXPECT_TRUE(body.empty());
  EXPECT_EQ(encoder.series_count(), 0u);
}

TEST(RemoteWriteEncoderTest, InvalidUtf8IsRefusedNamingTheSample) {
  DecodedBatch b = Metrics("dev-1");
  Add(b, "good", 1, 100, 0, {{"a", "fine"}});
  Add(b, "bad", 1, 100, 0, {{"site", "\xC3\x28"}});
  const DecodedBatch* batches[] = {&b};
  RemoteWriteEncoder encoder;
  std::string body;
  EXPECT_THAT(encoder.Encode(batches, &body),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("metric \"bad\" of device \"dev-1\": label "
                                 "\"site\"")));
  EXPECT_TRUE(body.empty());
}

}  // namespace
}  // namespace fleetd::server
