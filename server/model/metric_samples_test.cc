#include "server/model/metric_samples.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "google/protobuf/stubs/logging.h"
#include "gtest/gtest.h"

namespace fleetd::server {
namespace {

using ::testing::HasSubstr;

constexpr int kMaxLabels = 64;

v1::MetricsBatch SampleBatch(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  v1::MetricsBatch batch;
  const char* names[] = {"system_cpu_usage_percent", "mem_free_bytes", "x"};
  for (int i = 0; i < n; ++i) {
    v1::Metric* m = batch.add_metrics();
    m->set_name(names[rng() % 3]);
    m->set_value(static_cast<double>(rng() % 100000) / 7.0);
    if (rng() % 4 != 0) {
      m->mutable_timestamp()->set_seconds(1'700'000'000 + i);
      m->mutable_timestamp()->set_nanos(
          static_cast<int32_t>(rng() % 1000000000));
    }
    const int labels = static_cast<int>(rng() % 5);
    for (int j = 0; j < labels; ++j) {
      (*m->mutable_labels())[absl::StrCat("label_", rng() % 7)] = absl::StrCat(
          "value \"", j, "\"\n\\ é ", std::string(rng() % 40, 'v'));
    }
  }
  return batch;
}

// What the generated parser makes of `bytes`, in our form; nullopt when it
// refuses them.
std::optional<MetricSamples> Reference(const std::string& bytes) {
  v1::MetricsBatch batch;
  if (!batch.ParseFromString(bytes)) return std::nullopt;
  return MetricSamples::FromProto(batch);
}

TEST(MetricSamplesTest, ParsesWhatTheGeneratedParserReads) {
  v1::MetricsBatch batch = SampleBatch(500, 1);
  absl::StatusOr<MetricSamples> parsed =
      MetricSamples::Parse(batch.SerializeAsString(), kMaxLabels);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->size(), 500);
  EXPECT_TRUE(*parsed == MetricSamples::FromProto(batch));
  // And back: the message round trip keeps every field.
  v1::MetricsBatch again = parsed->ToProto();
  EXPECT_EQ(again.SerializeAsString().size(), batch.ByteSizeLong());
  EXPECT_TRUE(MetricSamples::FromProto(again) == *parsed);
  EXPECT_EQ(parsed->wire_bytes(), batch.ByteSizeLong());
}

TEST(MetricSamplesTest, LabelsComeOutSortedByName) {
  v1::MetricsBatch batch;
  v1::Metric* m = batch.add_metrics();
  m->set_name("up");
  (*m->mutable_labels())["zone"] = "z";
  (*m->mutable_labels())["a"] = "1";
  (*m->mutable_labels())["mode"] = "idle";
  absl::StatusOr<MetricSamples> parsed =
      MetricSamples::Parse(batch.SerializeAsString(), kMaxLabels);
  ASSERT_TRUE(parsed.ok());
  ASSERT_EQ(parsed->label_count(0), 3);
  EXPECT_EQ(parsed->label(0, 0).name, "a");
  EXPECT_EQ(parsed->label(0, 1).name, "mode");
  EXPECT_EQ(parsed->label(0, 2).name, "zone");
  EXPECT_EQ(parsed->FindLabel(0, "mode"), "idle");
  EXPECT_EQ(parsed->FindLabel(0, "nope"), std::nullopt);
}

// Hand-made wire bytes for the cases the generated serializer never writes.
class Wire {
 public:
  Wire& Tag(int field, int type) {
    Varint(static_cast<uint64_t>(field) << 3 | type);
    return *this;
  }
  Wire& Varint(uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<char>(v | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<char>(v));
    return *this;
  }
  Wire& Bytes(int field, const std::string& s) {
    Tag(field, 2).Varint(s.size());
    out_ += s;
    return *this;
  }
  Wire& Fixed64(int field, double d) {
    Tag(field, 1);
    char b[8];
    std::memcpy(b, &d, 8);
    out_.append(b, 8);
    return *this;
  }
  Wire& Raw(const std::string& s) {
    out_ += s;
    return *this;
  }
  const std::string& str() const { return out_; }

 private:
  std::string out_;
};

std::string Entry(const std::string& k, const std::string& v) {
  return Wire().Bytes(1, k).Bytes(2, v).str();
}

TEST(MetricSamplesTest, RepeatedLabelKeyKeepsTheLastValueAsProtobufMapsDo) {
  std::string metric = Wire()
                           .Bytes(1, "up")
                           .Bytes(4, Entry("mode", "first"))
                           .Bytes(4, Entry("cpu", "0"))
                           .Bytes(4, Entry("mode", "last"))
                           .str();
  std::string bytes = Wire().Bytes(1, metric).str();
  absl::StatusOr<MetricSamples> parsed =
      MetricSamples::Parse(bytes, kMaxLabels);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->label_count(0), 2);
  EXPECT_EQ(parsed->FindLabel(0, "mode"), "last");
  EXPECT_TRUE(*parsed == *Reference(bytes));
}

TEST(MetricSamplesTest, RepeatedTimestampIsMergedFieldByField) {
  std::string metric = Wire()
                           .Bytes(3, Wire().Tag(1, 0).Varint(100).str())
                           .Bytes(3, Wire().Tag(2, 0).Varint(5).str())
                           .Bytes(1, "first")
                           .Bytes(1, "up")
                           .str();
  std::string bytes = Wire().Bytes(1, metric).str();
  absl::StatusOr<MetricSamples> parsed =
      MetricSamples::Parse(bytes, kMaxLabels);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->name(0), "up");
  EXPECT_EQ(parsed->timestamp_seconds(0), 100);
  EXPECT_EQ(parsed->timestamp_nanos(0), 5);
  EXPECT_TRUE(*parsed == *Reference(bytes));
}

TEST(MetricSamplesTest, SkipsUnknownFieldsGroupsAndMismatchedWireTypes) {
  std::string metric =
      Wire()
          .Bytes(1, "up")
          .Tag(2, 0)  // value as a varint: not a double, so unknown
          .Varint(7)
          .Fixed64(2, 1.5)
          .Tag(9, 5)
          .Raw("abcd")
          .Tag(10, 3)  // a group with a nested group inside
          .Tag(11, 0)
          .Varint(1)
          .Tag(12, 3)
          .Tag(12, 4)
          .Tag(10, 4)
          .str();
  std::string bytes =
      Wire().Bytes(1, metric).Tag(15, 1).Raw("12345678").Bytes(2, "").str();
  absl::StatusOr<MetricSamples> parsed =
      MetricSamples::Parse(bytes, kMaxLabels);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->value(0), 1.5);
  std::optional<MetricSamples> reference = Reference(bytes);
  ASSERT_TRUE(reference.has_value());
  EXPECT_TRUE(*parsed == *reference);
}

TEST(MetricSamplesTest, RefusesWhatIsNotAValidBatch) {
  const std::string good = SampleBatch(3, 2).SerializeAsString();
  struct Case {
    std::string name;
    std::string bytes;
    std::string message;
  };
  std::vector<Case> cases = {
      {"truncated", good.substr(0, good.size() - 3), "malformed"},
      {"bad utf-8 in a name",
       Wire().Bytes(1, Wire().Bytes(1, "up\xff").str()).str(), "UTF-8"},
      {"bad utf-8 in a label value",
       Wire().Bytes(1, Wire().Bytes(4, Entry("a", "\xc3")).str()).str(),
       "UTF-8"},
      {"field number 0", Wire().Tag(0, 2).Varint(0).str(), "invalid tag"},
      {"tag 0", Wire().Tag(0, 0).Varint(1).str(), "invalid tag"},
      // Tags and lengths take at most five bytes; CodedInputStream alone
      // would read ten and drop the high bits.
      {"nine-byte tag",
       std::string("\xd0\xcf\xcf\xcf\xcf\xcf\xcf\xd6\x30", 9) + "\x01",
       "invalid tag"},
      {"six-byte length", std::string("\x0a\x80\x80\x80\x80\x80\x00", 7),
       "truncated"},
      {"stray end of group", Wire().Tag(5, 4).str(), "end of group"},
      {"unterminated group", Wire().Tag(5, 3).Tag(6, 0).Varint(1).str(),
       "invalid field"},
      {"invalid wire type", Wire().Tag(5, 7).Varint(1).str(), "invalid field"},
      {"nested compressed_data", Wire().Bytes(3, "xyz").str(), "nested"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<MetricSamples> parsed =
        MetricSamples::Parse(c.bytes, kMaxLabels);
    ASSERT_FALSE(parsed.ok()) << c.name;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument)
        << c.name;
    EXPECT_THAT(parsed.status().message(), HasSubstr(c.message)) << c.name;
  }
}

TEST(MetricSamplesTest, BoundsLabelEntriesPerSample) {
  Wire metric;
  metric.Bytes(1, "up");
  for (int i = 0; i < 5; ++i) metric.Bytes(4, Entry("same", "v"));
  std::string bytes = Wire().Bytes(1, metric.str()).str();
  EXPECT_TRUE(MetricSamples::Parse(bytes, 5).ok());
  absl::StatusOr<MetricSamples> refused = MetricSamples::Parse(bytes, 4);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr("more than 4 labels"));
}

// Mutated batches: whenever the generated parser accepts the bytes (and they
// stay within our documented differences), we read the same samples; when it
// refuses them, so do we.
TEST(MetricSamplesTest, AgreesWithTheGeneratedParserOnMutatedInput) {
  google::protobuf::LogSilencer quiet;  // the reference parser's UTF-8 errors
  std::mt19937 rng(42);
  const std::string good = SampleBatch(20, 3).SerializeAsString();
  int accepted = 0;
  int refused = 0;
  for (int round = 0; round < 20000; ++round) {
    std::string bytes = good;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t at = rng() % bytes.size();
      switch (rng() % 3) {
        case 0:
          bytes[at] = static_cast<char>(rng());
          break;
        case 1:
          bytes.erase(at, 1 + rng() % 3);
          break;
        default:
          bytes.insert(at, 1, static_cast<char>(rng()));
          break;
      }
      if (bytes.empty()) bytes = good;
    }
    v1::MetricsBatch reference;
    const bool reference_ok = reference.ParseFromString(bytes);
    absl::StatusOr<MetricSamples> ours =
        MetricSamples::Parse(bytes, kMaxLabels);
    if (!reference_ok) {
      EXPECT_FALSE(ours.ok())
          << "accepted what protobuf refuses, round " << round;
      ++refused;
      continue;
    }
    if (!reference.compressed_data().empty()) {
      EXPECT_FALSE(ours.ok());
      continue;
    }
    ASSERT_TRUE(ours.ok()) << "round " << round << ": " << ours.status();
    EXPECT_TRUE(*ours == MetricSamples::FromProto(reference))
        << "round " << round;
    ++accepted;
  }
  // Both outcomes were exercised.
  EXPECT_GT(accepted, 100);
  EXPECT_GT(refused, 100);
}

TEST(MetricSamplesTest, EditsInPlace) {
  v1::MetricsBatch batch;
  v1::Metric* m = batch.add_metrics();
  m->set_name("up");
  (*m->mutable_labels())["device_id"] = "d";
  (*m->mutable_labels())["a"] = "1";
  (*m->mutable_labels())["z"] = "2";
  absl::StatusOr<MetricSamples> s =
      MetricSamples::Parse(batch.SerializeAsString(), kMaxLabels);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->has_timestamp(0));
  s->SetTimestamp(0, 1'700'000'000, 999'999'999);
  EXPECT_EQ(s->timestamp_millis(0), 1'700'000'000'999);
  EXPECT_TRUE(s->EraseSeriesLabel(s->series(0), "device_id"));
  EXPECT_FALSE(s->EraseSeriesLabel(s->series(0), "device_id"));
  ASSERT_EQ(s->label_count(0), 2);
  EXPECT_EQ(s->label(0, 0).name, "a");
  EXPECT_EQ(s->label(0, 1).name, "z");
  // Copies and moves keep pointing at their own bytes.
  MetricSamples copy = *s;
  MetricSamples moved = std::move(*s);
  EXPECT_TRUE(copy == moved);
  EXPECT_EQ(moved.label(0, 1).value, "2");
}

// A sample on the wire: name fields, then label entries (each the bytes of
// a map entry), then a value.
std::string MetricWire(const std::vector<std::string>& names,
                       const std::vector<std::string>& entries, double value) {
  Wire w;
  for (const std::string& n : names) w.Bytes(1, n);
  for (const std::string& e : entries) w.Bytes(4, e);
  w.Fixed64(2, value);
  return w.str();
}

// Equal series ids mean equal names and labels; ids are numbered in order of
// first appearance.
void ExpectSeriesConsistent(const MetricSamples& s) {
  int seen = 0;
  std::vector<int> first(s.series_count(), -1);
  for (int i = 0; i < s.size(); ++i) {
    const int id = s.series(i);
    ASSERT_GE(id, 0);
    ASSERT_LE(id, seen) << "sample " << i;
    if (id == seen) {
      ++seen;
      first[id] = i;
      continue;
    }
    const int f = first[id];
    EXPECT_EQ(s.name(i), s.name(f));
    ASSERT_EQ(s.label_count(i), s.label_count(f));
    for (int j = 0; j < s.label_count(i); ++j) {
      EXPECT_EQ(s.label(i, j).name, s.label(f, j).name);
      EXPECT_EQ(s.label(i, j).value, s.label(f, j).value);
    }
  }
  EXPECT_EQ(seen, s.series_count());
}

// The batch of `metrics` (each a serialized Metric), parsed, checked against
// the generated parser and for consistent series ids; empty if refused.
MetricSamples ParseAndCheck(const std::vector<std::string>& metrics) {
  Wire batch;
  for (const std::string& m : metrics) batch.Bytes(1, m);
  absl::StatusOr<MetricSamples> parsed =
      MetricSamples::Parse(batch.str(), kMaxLabels);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  if (!parsed.ok()) return MetricSamples();
  EXPECT_TRUE(*parsed == *Reference(batch.str()));
  ExpectSeriesConsistent(*parsed);
  return *std::move(parsed);
}

TEST(MetricSamplesTest, SamplesOfOneSeriesShareOneSeries) {
  const std::string a = Entry("a", "1");
  const std::string b = Entry("b", "2");
  const std::string c = Entry("c", "3");
  // An entry with an unknown field: the same label, other bytes.
  const std::string a_extra = Wire()
                                  .Bytes(1, "a")
                                  .Bytes(2, "1")
                                  .Raw(Wire().Tag(7, 0).Varint(1).str())
                                  .str();
  const std::vector<std::string> metrics = {
      MetricWire({"up"}, {a, b, c}, 1),  // 0: series 0
      MetricWire({"up"}, {c, a, b}, 2),  // 1: same set, other order
      MetricWire({"up"}, {a, Entry("b", "9"), c}, 3),  // 2: another value
      MetricWire({"down"}, {a, b, c}, 4),              // 3: another name
      MetricWire({"up"}, {a, b, c, a}, 5),             // 4: repeated key
      MetricWire({"up"}, {a, b, c, a}, 6),     // 5: the same, not shared
      MetricWire({"x", "up"}, {a, b, c}, 7),   // 6: repeated name field
      MetricWire({"up"}, {a_extra, b, c}, 8),  // 7: other entry bytes
      MetricWire({"up"}, {b, c, a}, 9),        // 8: series 0 again
      MetricWire({"up"}, {a, b}, 10),          // 9: a subset
      MetricWire({"up"}, {a, b, b}, 11),       // 10: same count as 0
      MetricWire({}, {}, 12),                  // 11: nothing
      MetricWire({}, {}, 13),                  // 12: nothing again
  };
  const MetricSamples s = ParseAndCheck(metrics);
  ASSERT_EQ(s.size(), static_cast<int>(metrics.size()));
  EXPECT_EQ(s.series(1), s.series(0));
  EXPECT_EQ(s.series(8), s.series(0));
  EXPECT_EQ(s.series(12), s.series(11));
  for (int i : {2, 3, 4, 5, 6, 7, 9, 10, 11}) {
    EXPECT_NE(s.series(i), s.series(0)) << i;
  }
  // Label sets with a repeated key are never shared: which entry wins
  // depends on the order.
  EXPECT_NE(s.series(5), s.series(4));
  EXPECT_EQ(s.series_count(), 10);
  // Values stay per sample.
  EXPECT_EQ(s.value(1), 2);
  EXPECT_EQ(s.value(8), 9);
}

TEST(MetricSamplesTest, RepeatedKeysKeepTheLastValueWhateverWasSharedBefore) {
  const std::vector<std::string> metrics = {
      MetricWire({"up"}, {Entry("a", "1"), Entry("b", "2")}, 1),
      MetricWire({"up"}, {Entry("a", "1"), Entry("b", "2"), Entry("a", "7")},
                 2),
      MetricWire({"up"}, {Entry("a", "7"), Entry("b", "2"), Entry("a", "1")},
                 3),
  };
  Wire batch;
  for (const std::string& m : metrics) batch.Bytes(1, m);
  absl::StatusOr<MetricSamples> parsed =
      MetricSamples::Parse(batch.str(), kMaxLabels);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->FindLabel(0, "a"), "1");
  EXPECT_EQ(parsed->FindLabel(1, "a"), "7");
  EXPECT_EQ(parsed->FindLabel(2, "a"), "1");
  EXPECT_TRUE(*parsed == *Reference(batch.str()));
  ExpectSeriesConsistent(*parsed);
}

// Samples written the usual way, name, value and timestamp first and label
// entries last: a sample whose name and trailing label bytes repeat an
// earlier sample's takes its series without its labels being read again;
// anything after the labels (here a value) is still read.
TEST(MetricSamplesTest, SamplesEndingInTheSameLabelBytesShareTheirSeries) {
  const std::string a = Entry("host", "rpi-1");
  const std::string b = Entry("cpu", "0");
  const std::string a2 = Entry("host", "rpi-2");
  const auto labels_last = [](const std::vector<std::string>& names,
                              double value,
                              const std::vector<std::string>& entries) {
    Wire w;
    for (const std::string& n : names) w.Bytes(1, n);
    w.Fixed64(2, value);
    for (const std::string& e : entries) w.Bytes(4, e);
    return w.str();
  };
  const std::vector<std::string> metrics = {
      labels_last({"up"}, 1, {a, b}),       // 0: series 0
      labels_last({"up"}, 2, {a, b}),       // 1: the same tail
      labels_last({"down"}, 3, {a, b}),     // 2: same tail, other name
      labels_last({"up"}, 4, {b, a}),       // 3: series 0, other order
      labels_last({"up"}, 5, {a2, b}),      // 4: another value of host
      labels_last({"up"}, 6, {a, b, a2}),   // 5: repeated key, host=rpi-2
      labels_last({"up"}, 7, {a, b, a2}),   // 6: the same bytes
      labels_last({"up"}, 8, {a2, b, a}),   // 7: repeated key, host=rpi-1
      labels_last({"x", "up"}, 9, {a, b}),  // 8: repeated name field
      // 9 and 10: a value after the labels, so the tail is not all labels;
      // the second must not be taken for the first (its value is 11).
      Wire().Bytes(1, "up").Bytes(4, a).Bytes(4, b).Fixed64(2, 11).str(),
      Wire()
          .Bytes(1, "up")
          .Fixed64(2, 10)
          .Bytes(4, a)
          .Bytes(4, b)
          .Fixed64(2, 11)
          .str(),
      labels_last({"up"}, 12, {a, b}),  // 11: series 0 again
  };
  const MetricSamples s = ParseAndCheck(metrics);
  ASSERT_EQ(s.size(), static_cast<int>(metrics.size()));
  for (int i : {1, 3, 9, 10, 11}) EXPECT_EQ(s.series(i), s.series(0)) << i;
  for (int i : {2, 4, 5, 7}) EXPECT_NE(s.series(i), s.series(0)) << i;
  EXPECT_EQ(s.series(6), s.series(5));
  EXPECT_EQ(s.FindLabel(6, "host"), "rpi-2");
  EXPECT_EQ(s.FindLabel(7, "host"), "rpi-1");
  EXPECT_EQ(s.name(8), "up");
  for (int i = 0; i < s.size(); ++i) {
    EXPECT_EQ(s.value(i), i == 9 || i == 10 ? 11 : i + 1) << i;
  }
}

TEST(MetricSamplesTest, EraseSeriesLabelChangesEverySampleOfTheSeries) {
  const std::string id = Entry("device_id", "d");
  const std::string z = Entry("z", "1");
  Wire batch;
  batch.Bytes(1, MetricWire({"up"}, {id, z}, 1))
      .Bytes(1, MetricWire({"up"}, {z, id}, 2))
      .Bytes(1, MetricWire({"down"}, {id, z}, 3));
  absl::StatusOr<MetricSamples> s =
      MetricSamples::Parse(batch.str(), kMaxLabels);
  ASSERT_TRUE(s.ok());
  ASSERT_EQ(s->series(0), s->series(1));
  EXPECT_TRUE(s->EraseSeriesLabel(s->series(1), "device_id"));
  EXPECT_EQ(s->FindLabel(0, "device_id"), std::nullopt);
  EXPECT_EQ(s->FindLabel(1, "device_id"), std::nullopt);
  EXPECT_EQ(s->label_count(0), 1);
  EXPECT_EQ(s->label(1, 0).name, "z");
  EXPECT_EQ(s->FindLabel(2, "device_id"), "d") << "another series";
}

// UTF-8 checks are deferred to the end of a sample (a shared sample skips
// them); the error reported is still the first on the wire.
TEST(MetricSamplesTest, ErrorsAreTheFirstOnTheWire) {
  const std::string bad = Entry("a", "\xc3");
  const std::string good = Entry("b", "2");
  struct Case {
    std::string name;
    std::string metric;
    int max_labels;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"bad value then truncated field",
       Wire().Bytes(4, bad).Tag(9, 2).Varint(50).str(), 8, "UTF-8"},
      {"bad value then too many labels",
       Wire().Bytes(4, bad).Bytes(4, good).str(), 1, "UTF-8"},
      {"bad name then too many labels",
       Wire().Bytes(1, "\xff").Bytes(4, good).Bytes(4, good).str(), 1, "UTF-8"},
      {"too many labels then a bad value",
       Wire().Bytes(4, good).Bytes(4, bad).str(), 1, "more than 1 labels"},
      {"truncated entry after a bad key in it",
       Wire().Bytes(4, Wire().Bytes(1, "\xff").Tag(2, 2).Varint(9).str()).str(),
       8, "truncated"},
      {"bad key in an earlier entry, then a truncated one",
       Wire()
           .Bytes(4, Entry("\xff", "v"))
           .Bytes(4, Wire().Tag(2, 2).Varint(9).str())
           .str(),
       8, "UTF-8"},
      {"truncated field then a bad value",
       Wire().Tag(9, 2).Varint(50).Bytes(4, bad).str(), 8, "truncated"},
  };
  for (const Case& c : cases) {
    // The sample comes second, after a valid one sharing nothing with it.
    const std::string bytes =
        Wire().Bytes(1, MetricWire({"ok"}, {good}, 1)).Bytes(1, c.metric).str();
    absl::StatusOr<MetricSamples> parsed =
        MetricSamples::Parse(bytes, c.max_labels);
    ASSERT_FALSE(parsed.ok()) << c.name;
    EXPECT_THAT(parsed.status().message(), HasSubstr("metric 1")) << c.name;
    EXPECT_THAT(parsed.status().message(), HasSubstr(c.message)) << c.name;
  }
}

// Batches from a small pool of series, each sample with its entries shuffled
// and sometimes a repeated key or name field, then often mutated: whatever
// the generated parser accepts we read the same, with consistent series.
TEST(MetricSamplesTest, AgreesWithTheGeneratedParserOnShuffledEntries) {
  google::protobuf::LogSilencer quiet;
  std::mt19937 rng(7);
  int accepted = 0;
  int shared = 0;
  for (int round = 0; round < 3000; ++round) {
    std::vector<std::pair<std::string, std::vector<std::string>>> pool;
    for (int p = 0; p < 4; ++p) {
      std::vector<std::string> entries;
      const int n = static_cast<int>(rng() % 4);
      for (int j = 0; j < n; ++j) {
        entries.push_back(
            Entry(absl::StrCat("k", rng() % 5), absl::StrCat("v", rng() % 3)));
      }
      pool.emplace_back(rng() % 2 ? "up" : "down", entries);
    }
    Wire batch;
    const int samples = 1 + static_cast<int>(rng() % 12);
    for (int i = 0; i < samples; ++i) {
      auto [name, entries] = pool[rng() % pool.size()];
      std::shuffle(entries.begin(), entries.end(), rng);
      if (!entries.empty() && rng() % 6 == 0) {
        entries.push_back(entries[rng() % entries.size()]);
      }
      std::vector<std::string> names = {name};
      if (rng() % 8 == 0) names.insert(names.begin(), "first");
      batch.Bytes(1, MetricWire(names, entries, i));
    }
    std::string bytes = batch.str();
    if (rng() % 2 == 0) {
      const size_t at = rng() % bytes.size();
      bytes[at] = static_cast<char>(rng());
    }
    v1::MetricsBatch reference;
    const bool reference_ok = reference.ParseFromString(bytes);
    absl::StatusOr<MetricSamples> ours = MetricSamples::Parse(bytes, 8);
    if (!reference_ok || !reference.compressed_data().empty()) {
      EXPECT_FALSE(ours.ok()) << "round " << round;
      continue;
    }
    if (!ours.ok()) {
      EXPECT_THAT(ours.status().message(), HasSubstr("labels"));
      continue;
    }
    EXPECT_TRUE(*ours == MetricSamples::FromProto(reference))
        << "round " << round;
    ExpectSeriesConsistent(*ours);
    ++accepted;
    shared += ours->size() - ours->series_count();
  }
  EXPECT_GT(accepted, 1000);
  EXPECT_GT(shared, 1000);
}

TEST(MetricSamplesTest, MillisecondsRoundDownBeforeTheEpoch) {
  v1::MetricsBatch batch;
  v1::Metric* m = batch.add_metrics();
  m->mutable_timestamp()->set_seconds(-1);
  m->mutable_timestamp()->set_nanos(500'000'000);
  MetricSamples s = MetricSamples::FromProto(batch);
  EXPECT_EQ(s.timestamp_millis(0), -500);
}

}  // namespace
}  // namespace fleetd::server
