#include "server/model/metric_samples.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <string>

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
  EXPECT_TRUE(s->EraseLabel(0, "device_id"));
  EXPECT_FALSE(s->EraseLabel(0, "device_id"));
  ASSERT_EQ(s->label_count(0), 2);
  EXPECT_EQ(s->label(0, 0).name, "a");
  EXPECT_EQ(s->label(0, 1).name, "z");
  // Copies and moves keep pointing at their own bytes.
  MetricSamples copy = *s;
  MetricSamples moved = std::move(*s);
  EXPECT_TRUE(copy == moved);
  EXPECT_EQ(moved.label(0, 1).value, "2");
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
