#include "server/core/decode.h"

#include <zstd.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec/codec.h"
#include "common/crypto/sha256.h"
#include "common/status/error_class.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::server {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::testing::HasSubstr;

const DeviceIdentity kDevice{"dev-1", "org-1", "key"};
const absl::Time kNow = absl::FromUnixSeconds(1'760'000'000);

v1::SyncMetricsRequest Request(int n) {
  v1::SyncMetricsRequest r;
  r.mutable_metadata()->set_device_id("dev-1");
  r.mutable_metadata()->set_sequence_number(42);
  for (int i = 0; i < n; ++i) {
    v1::Metric* m = r.mutable_batch()->add_metrics();
    m->set_name("cpu_usage");
    m->set_value(i);
    (*m->mutable_labels())["core"] = std::to_string(i);
  }
  return r;
}

v1::SyncMetricsRequest Compressed(v1::SyncMetricsRequest r, Compression c) {
  std::string raw = r.batch().SerializeAsString();
  auto packed = Compress(c, raw);
  EXPECT_THAT(packed, IsOk());
  r.mutable_batch()->clear_metrics();
  r.mutable_batch()->set_compression(std::string(CompressionName(c)));
  r.mutable_batch()->set_compressed_data(*packed);
  r.mutable_batch()->set_original_size(static_cast<int>(raw.size()));
  r.mutable_metadata()->set_checksum(Sha256(raw));
  return r;
}

TEST(DecodeTest, PlainBatchDecodesWithIdentityFromKey) {
  auto b = DecodeMetrics(Request(3), kDevice, {}, kNow);
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(b->kind, DataKind::kMetrics);
  EXPECT_EQ(b->stream, "metrics");
  EXPECT_EQ(b->sequence_number, 42);
  EXPECT_EQ(b->device.device_id, "dev-1");
  ASSERT_EQ(b->metrics.size(), 3);
  EXPECT_EQ(b->metrics.timestamp_seconds(0), 1'760'000'000) << "defaulted";
}

TEST(DecodeTest, CompressedBatchesOfEveryCodecDecode) {
  for (Compression c : {Compression::kGzip, Compression::kZstd}) {
    auto b = DecodeMetrics(Compressed(Request(50), c), kDevice, {}, kNow);
    ASSERT_THAT(b, IsOk()) << CompressionName(c);
    EXPECT_EQ(b->metrics.size(), 50);
    EXPECT_EQ(b->metrics.FindLabel(49, "core"), "49");
  }
}

// What a streaming encoder (e.g. Go's zstd writer) produces: no content size in
// the frame header and a window larger than the batch.
std::string StreamingZstd(const std::string& raw) {
  std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> cctx(ZSTD_createCCtx(),
                                                          ZSTD_freeCCtx);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_windowLog, 23);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_contentSizeFlag, 0);
  std::string out(ZSTD_compressBound(raw.size()) + 64, '\0');
  ZSTD_inBuffer in{raw.data(), raw.size(), 0};
  ZSTD_outBuffer ob{out.data(), out.size(), 0};
  size_t left = ZSTD_compressStream2(cctx.get(), &ob, &in, ZSTD_e_end);
  EXPECT_EQ(left, 0u);
  out.resize(ob.pos);
  return out;
}

TEST(DecodeTest, StreamingZstdFrameWithExactOriginalSizeDecodes) {
  v1::SyncMetricsRequest r = Request(100);
  std::string raw = r.batch().SerializeAsString();
  std::string frame = StreamingZstd(raw);
  ASSERT_EQ(ZSTD_getFrameContentSize(frame.data(), frame.size()),
            ZSTD_CONTENTSIZE_UNKNOWN);
  r.mutable_batch()->clear_metrics();
  r.mutable_batch()->set_compression("zstd");
  r.mutable_batch()->set_compressed_data(frame);
  r.mutable_batch()->set_original_size(static_cast<int>(raw.size()));
  r.mutable_metadata()->set_checksum(Sha256(raw));
  auto b = DecodeMetrics(r, kDevice, {}, kNow);
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(b->metrics.size(), 100);
  // One byte less declared than the frame holds is still refused, marked.
  r.mutable_batch()->set_original_size(static_cast<int>(raw.size()) - 1);
  auto lie = DecodeMetrics(r, kDevice, {}, kNow);
  EXPECT_THAT(lie, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(IsBatchRejected(lie.status()));
}

TEST(DecodeTest, ChecksumMismatchIsRejected) {
  auto r = Compressed(Request(5), Compression::kZstd);
  r.mutable_metadata()->set_checksum(std::string(32, 'x'));
  EXPECT_THAT(
      DecodeMetrics(r, kDevice, {}, kNow),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("checksum")));
}

TEST(DecodeTest, BombsAndLiesAboutSizeAreRejected) {
  v1::SyncMetricsRequest r;
  auto zeros = Compress(Compression::kGzip, std::string(64 << 20, '\0'));
  ASSERT_THAT(zeros, IsOk());
  r.mutable_batch()->set_compression("gzip");
  r.mutable_batch()->set_compressed_data(*zeros);
  absl::StatusOr<DecodedBatch> bomb = DecodeMetrics(r, kDevice, {}, kNow);
  // A size limit of the batch itself: never passes, so it is the batch's
  // rejection (not the retryable RESOURCE_EXHAUSTED of an overload).
  EXPECT_THAT(bomb, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(IsBatchRejected(bomb.status()));
  r.mutable_batch()->set_original_size(100);  // claims small, expands huge
  EXPECT_THAT(
      DecodeMetrics(r, kDevice, {}, kNow),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("original_size")));
  r.mutable_batch()->set_original_size(1 << 30);  // declares too much
  EXPECT_THAT(
      DecodeMetrics(r, kDevice, {}, kNow),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("declared")));
}

TEST(DecodeTest, GarbageCompressedDataIsInvalid) {
  v1::SyncMetricsRequest r;
  r.mutable_batch()->set_compression("zstd");
  r.mutable_batch()->set_compressed_data("\x28\xb5\x2f\xfd garbage");
  EXPECT_THAT(DecodeMetrics(r, kDevice, {}, kNow),
              StatusIs(absl::StatusCode::kInvalidArgument));
  r.mutable_batch()->set_compression("lz4");
  EXPECT_THAT(DecodeMetrics(r, kDevice, {}, kNow),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("lz4")));
}

TEST(DecodeTest, AnotherDevicesIdentityIsPermissionDenied) {
  auto r = Request(1);
  r.mutable_metadata()->set_device_id("dev-2");
  EXPECT_THAT(DecodeMetrics(r, kDevice, {}, kNow),
              StatusIs(absl::StatusCode::kPermissionDenied));
  r = Request(1);
  r.mutable_metadata()->set_org_id("org-evil");
  EXPECT_THAT(DecodeMetrics(r, kDevice, {}, kNow),
              StatusIs(absl::StatusCode::kPermissionDenied));
  r = Request(1);
  (*r.mutable_batch()->mutable_metrics(0)->mutable_labels())["device_id"] =
      "dev-2";
  EXPECT_THAT(DecodeMetrics(r, kDevice, {}, kNow),
              StatusIs(absl::StatusCode::kPermissionDenied));
  r = Request(1);
  (*r.mutable_batch()->mutable_metrics(0)->mutable_labels())["device_id"] =
      "dev-1";
  auto ok = DecodeMetrics(r, kDevice, {}, kNow);
  ASSERT_THAT(ok, IsOk());
  EXPECT_EQ(ok->metrics.FindLabel(0, "device_id"), std::nullopt)
      << "writers add it";
}

TEST(DecodeTest, InjectionInNamesIsRejectedButValuesPassThrough) {
  for (const char* bad :
       {"up{job=\"x\"}", "a b", "1abc", "x\"; DROP TABLE devices;--", ""}) {
    auto r = Request(1);
    r.mutable_batch()->mutable_metrics(0)->set_name(bad);
    EXPECT_THAT(DecodeMetrics(r, kDevice, {}, kNow),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << bad;
    r = Request(1);
    (*r.mutable_batch()->mutable_metrics(0)->mutable_labels())[bad] = "v";
    EXPECT_THAT(DecodeMetrics(r, kDevice, {}, kNow),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << bad;
  }
  auto r = Request(1);
  const std::string hostile = "\"} or vector(1) # '; DROP TABLE x; --\n\\";
  (*r.mutable_batch()->mutable_metrics(0)->mutable_labels())["site"] = hostile;
  auto b = DecodeMetrics(r, kDevice, {}, kNow);
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(b->metrics.FindLabel(0, "site"), hostile);
}

TEST(DecodeTest, LimitsAreEnforced) {
  DecodeLimits limits;
  limits.max_records = 10;
  absl::StatusOr<DecodedBatch> big =
      DecodeMetrics(Request(11), kDevice, limits, kNow);
  EXPECT_THAT(big, StatusIs(absl::StatusCode::kInvalidArgument,
                            HasSubstr("exceeds the limit")));
  EXPECT_TRUE(IsBatchRejected(big.status()));
  auto r = Request(1);
  r.mutable_batch()->mutable_metrics(0)->set_value(std::nan(""));
  EXPECT_THAT(
      DecodeMetrics(r, kDevice, {}, kNow),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("finite")));
  r = Request(2);
  r.mutable_metadata()->set_record_count(3);
  EXPECT_THAT(
      DecodeMetrics(r, kDevice, {}, kNow),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("record_count")));
  r = Request(1);
  r.mutable_batch()->mutable_metrics(0)->mutable_timestamp()->set_seconds(
      int64_t{1} << 40);
  EXPECT_THAT(
      DecodeMetrics(r, kDevice, {}, kNow),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("timestamp")));
}

// Samples of one series are validated once, at their first sample; the
// identity labels go from all of them.
TEST(DecodeTest, IdentityLabelsLeaveEverySampleOfASeries) {
  auto r = Request(0);
  for (int i = 0; i < 4; ++i) {
    v1::Metric* m = r.mutable_batch()->add_metrics();
    m->set_name(i == 2 ? "other" : "cpu_usage");
    m->set_value(i);
    (*m->mutable_labels())["device_id"] = "dev-1";
    (*m->mutable_labels())["org_id"] = "org-1";
    (*m->mutable_labels())["core"] = "0";
  }
  auto b = DecodeMetrics(Compressed(r, Compression::kZstd), kDevice, {}, kNow);
  ASSERT_THAT(b, IsOk());
  const MetricSamples& s = b->metrics;
  EXPECT_EQ(s.series(3), s.series(0)) << "shared";
  for (int i = 0; i < s.size(); ++i) {
    ASSERT_EQ(s.label_count(i), 1) << i;
    EXPECT_EQ(s.label(i, 0).name, "core");
    EXPECT_EQ(s.value(i), i);
  }
}

// The compressed path shares series between samples (MetricSamples::Parse);
// the plain one gives every sample a series of its own, which is checking
// every sample. Random batches from a few series, valid and not, decode to
// the same samples or fail with the same error, naming the same sample.
TEST(DecodeTest, CheckingOncePerSeriesDecidesAsCheckingEverySample) {
  std::mt19937 rng(11);
  DecodeLimits limits;
  limits.max_labels = 3;
  limits.max_label_value_bytes = 8;
  const char* names[] = {"cpu_usage", "mem:free", "1bad", "ok_name"};
  const char* keys[] = {"core",     "device_id",  "org_id",
                        "bad name", "__reserved", "zone"};
  const char* values[] = {"dev-1", "dev-2", "org-1", "x", "too long a value"};
  int ok = 0;
  int failed = 0;
  int shared = 0;
  for (int round = 0; round < 2000; ++round) {
    std::vector<v1::Metric> pool(3);
    for (v1::Metric& m : pool) {
      // Mostly valid, so that errors come late in the batch too.
      const bool valid = rng() % 3 != 0;
      m.set_name(valid ? "cpu_usage" : names[rng() % 4]);
      const int n = static_cast<int>(rng() % 4);
      for (int j = 0; j < n; ++j) {
        if (valid) {
          (*m.mutable_labels())[absl::StrCat("k", rng() % 4)] =
              absl::StrCat(rng() % 3);
        } else {
          (*m.mutable_labels())[keys[rng() % 6]] = values[rng() % 5];
        }
      }
    }
    auto r = Request(0);
    const int samples = 1 + static_cast<int>(rng() % 10);
    for (int i = 0; i < samples; ++i) {
      v1::Metric* m = r.mutable_batch()->add_metrics();
      *m = pool[rng() % pool.size()];
      m->set_value(rng() % 16 == 0 ? std::nan("") : i);
      if (rng() % 3 != 0) {
        m->mutable_timestamp()->set_seconds(
            rng() % 16 == 0 ? int64_t{1} << 40 : 1'700'000'000 + i);
      }
    }
    auto plain = DecodeMetrics(r, kDevice, limits, kNow);
    auto compressed =
        DecodeMetrics(Compressed(r, Compression::kZstd), kDevice, limits, kNow);
    // The same requests read from their bytes (DecodeMetricsWire), which
    // shares series in both forms.
    auto wire_plain =
        DecodeMetricsWire(r.SerializeAsString(), kDevice, limits, kNow);
    auto wire_compressed =
        DecodeMetricsWire(Compressed(r, Compression::kZstd).SerializeAsString(),
                          kDevice, limits, kNow);
    ASSERT_EQ(plain.status(), compressed.status()) << "round " << round;
    ASSERT_EQ(plain.status(), wire_plain.status()) << "round " << round;
    ASSERT_EQ(plain.status(), wire_compressed.status()) << "round " << round;
    if (!plain.ok()) {
      ++failed;
      continue;
    }
    ++ok;
    EXPECT_TRUE(plain->metrics == compressed->metrics) << "round " << round;
    EXPECT_TRUE(plain->metrics == wire_plain->metrics) << "round " << round;
    EXPECT_TRUE(plain->metrics == wire_compressed->metrics)
        << "round " << round;
    EXPECT_EQ(wire_plain->payload_bytes, plain->payload_bytes);
    shared += compressed->metrics.size() - compressed->metrics.series_count();
  }
  EXPECT_GT(ok, 300);
  EXPECT_GT(failed, 300);
  EXPECT_GT(shared, 1000);
}

// Protobuf wire helpers for requests the generated serializer does not
// write: a field split in two, unknown fields, a group, wrong wire types.
void PutVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}
void PutBytes(int field, absl::string_view bytes, std::string* out) {
  PutVarint(static_cast<uint64_t>(field) << 3 | 2, out);
  PutVarint(bytes.size(), out);
  out->append(bytes.data(), bytes.size());
}

// What DecodeMetrics says of `bytes` after the generated parser, or the
// front end's answer when they do not parse (the batch's rejection).
absl::StatusOr<DecodedBatch> ViaMessage(const std::string& bytes) {
  v1::SyncMetricsRequest parsed;
  if (!parsed.ParseFromString(bytes)) {
    return MarkBatchRejected(absl::InvalidArgumentError("does not parse"));
  }
  return DecodeMetrics(parsed, kDevice, {}, kNow);
}

void ExpectSameDecoding(const std::string& bytes, const std::string& what) {
  absl::StatusOr<DecodedBatch> message = ViaMessage(bytes);
  absl::StatusOr<DecodedBatch> wire =
      DecodeMetricsWire(bytes, kDevice, {}, kNow);
  ASSERT_EQ(message.status().code(), wire.status().code())
      << what << ": " << message.status() << " / " << wire.status();
  EXPECT_EQ(IsBatchRejected(message.status()), IsBatchRejected(wire.status()))
      << what;
  if (!message.ok()) return;
  EXPECT_TRUE(message->metrics == wire->metrics) << what;
  EXPECT_EQ(message->stream, wire->stream) << what;
  EXPECT_EQ(message->sequence_number, wire->sequence_number) << what;
  EXPECT_EQ(message->payload_bytes, wire->payload_bytes) << what;
}

TEST(DecodeTest, WireDecodingDecidesAsTheGeneratedParser) {
  const v1::SyncMetricsRequest plain = Request(4);
  const v1::SyncMetricsRequest zstd =
      Compressed(Request(40), Compression::kZstd);
  const v1::SyncMetricsRequest gzip =
      Compressed(Request(40), Compression::kGzip);
  ExpectSameDecoding(plain.SerializeAsString(), "plain");
  ExpectSameDecoding(zstd.SerializeAsString(), "zstd");
  ExpectSameDecoding(gzip.SerializeAsString(), "gzip");
  ExpectSameDecoding("", "empty request");

  // Metadata and batch each split in two: protobuf merges the pieces.
  for (const v1::SyncMetricsRequest* r : {&plain, &zstd}) {
    const std::string md = r->metadata().SerializeAsString();
    const std::string batch = r->batch().SerializeAsString();
    std::string split;
    PutBytes(1, md.substr(0, md.size() / 2), &split);
    PutBytes(2, batch.substr(0, batch.size() / 3), &split);
    PutBytes(1, md.substr(md.size() / 2), &split);
    PutBytes(2, batch.substr(batch.size() / 3), &split);
    // A cut may fall inside a field: then neither side parses.
    ExpectSameDecoding(split, "split at a third");
    std::string whole_fields;
    v1::SyncMetricsRequest head = *r;
    head.mutable_batch()->clear_metrics();
    v1::MetricsBatch tail;
    *tail.mutable_metrics() = r->batch().metrics();
    PutBytes(1, md, &whole_fields);
    PutBytes(2, head.batch().SerializeAsString(), &whole_fields);
    PutBytes(2, tail.SerializeAsString(), &whole_fields);
    ExpectSameDecoding(whole_fields, "batch in two messages");
  }

  // Unknown fields of every wire type, a group, and known field numbers with
  // the wrong wire type, in the request and in the batch.
  std::string unknown;
  PutVarint(9 << 3 | 0, &unknown);
  PutVarint(300, &unknown);
  PutVarint(10 << 3 | 1, &unknown);
  unknown.append(8, 'x');
  PutBytes(11, "opaque", &unknown);
  PutVarint(12 << 3 | 3, &unknown);  // group 12 { field 1 = 5 }
  PutVarint(1 << 3 | 0, &unknown);
  PutVarint(5, &unknown);
  PutVarint(12 << 3 | 4, &unknown);
  PutVarint(13 << 3 | 5, &unknown);
  unknown.append(4, 'y');
  PutVarint(2 << 3 | 0, &unknown);  // field 2 as a varint: unknown
  PutVarint(7, &unknown);
  for (const v1::SyncMetricsRequest* r : {&plain, &gzip}) {
    std::string batch = r->batch().SerializeAsString() + unknown;
    std::string bytes = unknown;
    PutBytes(1, r->metadata().SerializeAsString(), &bytes);
    bytes += unknown;
    PutBytes(2, batch, &bytes);
    ExpectSameDecoding(bytes, "unknown fields");
  }

  // Malformed: truncated anywhere, a stray end of group, compression that is
  // not UTF-8, compressed data with records beside it.
  const std::string whole = zstd.SerializeAsString();
  for (size_t cut :
       {size_t{1}, size_t{3}, whole.size() / 2, whole.size() - 1}) {
    ExpectSameDecoding(whole.substr(0, cut), absl::StrCat("cut at ", cut));
  }
  std::string stray;
  PutVarint(7 << 3 | 4, &stray);
  ExpectSameDecoding(stray, "end of group");
  std::string bad_batch;
  PutBytes(2, "\xff", &bad_batch);  // compression
  std::string bad;
  PutBytes(1, plain.metadata().SerializeAsString(), &bad);
  PutBytes(2, bad_batch, &bad);
  absl::StatusOr<DecodedBatch> not_utf8 =
      DecodeMetricsWire(bad, kDevice, {}, kNow);
  EXPECT_THAT(not_utf8, StatusIs(absl::StatusCode::kInvalidArgument,
                                 HasSubstr("compression is not UTF-8")));
  EXPECT_TRUE(IsBatchRejected(not_utf8.status()));
  v1::SyncMetricsRequest both = zstd;
  *both.mutable_batch()->add_metrics() = plain.batch().metrics(0);
  ExpectSameDecoding(both.SerializeAsString(), "records and compressed_data");
  v1::SyncMetricsRequest other = plain;
  other.mutable_metadata()->set_device_id("dev-2");
  ExpectSameDecoding(other.SerializeAsString(), "another device");
  // Another device's request that does not parse (a record cut short, with
  // and without compressed_data beside it) is refused as not parsing, as the
  // front door refuses it before any identity check.
  for (v1::SyncMetricsRequest* r : {&other, &both}) {
    r->mutable_metadata()->set_device_id("dev-2");
    std::string bytes;
    PutBytes(1, r->metadata().SerializeAsString(), &bytes);
    std::string batch = r->batch().SerializeAsString();
    PutBytes(1, "\x0a\x05cpu", &batch);  // a metric whose name is cut
    PutBytes(2, batch, &bytes);
    ExpectSameDecoding(bytes, "another device, malformed");
    EXPECT_TRUE(absl::IsInvalidArgument(
        DecodeMetricsWire(bytes, kDevice, {}, kNow).status()));
  }
}

TEST(DecodeTest, NameRules) {
  // The rules spelled out: [a-zA-Z_:][a-zA-Z0-9_:]* for metrics,
  // [a-zA-Z_][a-zA-Z0-9_]* not starting with "__" for labels.
  const auto letter = [](int c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  };
  const auto digit = [](int c) { return c >= '0' && c <= '9'; };
  for (int c = 0; c < 256; ++c) {
    const std::string one(1, static_cast<char>(c));
    const std::string second = "a" + one;
    EXPECT_EQ(IsValidMetricName(one), letter(c) || c == ':') << c;
    EXPECT_EQ(IsValidMetricName(second), letter(c) || c == ':' || digit(c))
        << c;
    EXPECT_EQ(IsValidLabelName(one), letter(c)) << c;
    EXPECT_EQ(IsValidLabelName(second), letter(c) || digit(c)) << c;
  }
  EXPECT_FALSE(IsValidMetricName(""));
  EXPECT_FALSE(IsValidLabelName(""));
  EXPECT_TRUE(IsValidMetricName("__name__"));
  EXPECT_FALSE(IsValidLabelName("__name__"));
  EXPECT_TRUE(IsValidLabelName("_x"));
  EXPECT_FALSE(IsValidLabelName("a:b"));
}

TEST(DecodeTest, LogLevelsAreNormalisedOrRejected) {
  v1::SyncLogsRequest r;
  r.mutable_batch()->add_logs()->set_level("WARNING");
  r.mutable_batch()->add_logs()->set_level("");
  auto b = DecodeLogs(r, kDevice, {}, kNow);
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(b->logs.logs(0).level(), "warn");
  EXPECT_EQ(b->logs.logs(1).level(), "info");
  r.mutable_batch()->add_logs()->set_level("catastrophic");
  EXPECT_THAT(DecodeLogs(r, kDevice, {}, kNow),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(DecodeTest, EventsAreValidated) {
  v1::SyncEventsRequest r;
  v1::Event* e = r.mutable_batch()->add_events();
  e->set_name("door_opened");
  e->set_event_id("e-1");
  (*e->mutable_values())["duration_s"] = 2.5;
  auto b = DecodeEvents(r, kDevice, {}, kNow);
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(b->stream, "events");
  (*e->mutable_values())["bad name"] = 1;
  EXPECT_THAT(DecodeEvents(r, kDevice, {}, kNow),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(DecodeTest, ContentErrorsAreMarkedAsTheBatchsRejection) {
  auto r = Request(1);
  (*r.mutable_batch()->mutable_metrics(0)->mutable_labels())["bad name"] = "v";
  absl::StatusOr<DecodedBatch> b = DecodeMetrics(r, kDevice, {}, kNow);
  EXPECT_THAT(b, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(IsBatchRejected(b.status()));
  EXPECT_EQ(ClassifyError(b.status()), ErrorClass::kSetAside);

  // Naming another device is about the key, not the batch: no verdict.
  auto other = Request(1);
  other.mutable_metadata()->set_device_id("someone-else");
  b = DecodeMetrics(other, kDevice, {}, kNow);
  EXPECT_THAT(b, StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_FALSE(IsBatchRejected(b.status()));
}

TEST(DecodeTest, BatchVerdictLeavesFaultsOfOursUnmarked) {
  EXPECT_FALSE(IsBatchRejected(BatchVerdict(absl::InternalError("x"))));
  EXPECT_FALSE(IsBatchRejected(BatchVerdict(absl::UnavailableError("x"))));
  EXPECT_FALSE(IsBatchRejected(BatchVerdict(absl::UnauthenticatedError("x"))));
  EXPECT_TRUE(IsBatchRejected(BatchVerdict(absl::DataLossError("x"))));
  EXPECT_TRUE(BatchVerdict(absl::OkStatus()).ok());
}

}  // namespace
}  // namespace fleetd::server
