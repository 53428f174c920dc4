#include "server/model/metric_samples.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/text/utf8.h"

namespace fleetd::server {
namespace {

// Wire types (protobuf encoding spec).
constexpr int kVarint = 0;
constexpr int kFixed64 = 1;
constexpr int kLengthDelimited = 2;
constexpr int kStartGroup = 3;
constexpr int kEndGroup = 4;
constexpr int kFixed32 = 5;

// Nesting the generated parser allows (its default recursion limit): each
// message or group entered below the top level takes one.
constexpr int kRecursionLimit = 100;

absl::Status Malformed(absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed metrics batch: ", what));
}

// Reads protobuf wire format from [p, end), with the generated parser's
// limits: varints of at most ten bytes (the excess bits of the tenth are
// dropped), tags and lengths of at most five (a tag keeps its low 32 bits, a
// length must be below 2 GiB). Inline and allocation-free: this is the
// per-sample hot path (protobuf's CodedInputStream spent about a third of the
// parse in out-of-line limit bookkeeping).
class Reader {
 public:
  Reader(const uint8_t* p, const uint8_t* end) : p_(p), end_(end) {}

  bool AtEnd() const { return p_ == end_; }
  const uint8_t* position() const { return p_; }
  size_t left() const { return static_cast<size_t>(end_ - p_); }

  bool Varint(uint64_t* out) {
    if (p_ != end_ && *p_ < 0x80) {
      *out = *p_++;
      return true;
    }
    return VarintSlow(10, out);
  }

  bool Tag(uint32_t* tag) {
    uint64_t v;
    if (p_ != end_ && *p_ < 0x80) {
      v = *p_++;
    } else if (!VarintSlow(5, &v)) {
      return false;
    }
    *tag = static_cast<uint32_t>(v);
    return (*tag >> 3) != 0;
  }

  bool Length(uint32_t* len) {
    uint64_t v;
    if (p_ != end_ && *p_ < 0x80) {
      v = *p_++;
    } else if (!VarintSlow(5, &v) ||
               v > static_cast<uint64_t>(std::numeric_limits<int>::max())) {
      return false;
    }
    *len = static_cast<uint32_t>(v);
    return true;
  }

  bool Fixed64(uint64_t* out) {
    if (left() < 8) return false;
    std::memcpy(out, p_, 8);  // little-endian hosts only (x86, arm64)
    p_ += 8;
    return true;
  }

  bool Skip(size_t n) {
    if (left() < n) return false;
    p_ += n;
    return true;
  }

  // The next `len` bytes as their own reader; this one moves past them.
  bool Sub(uint32_t len, Reader* sub) {
    if (left() < len) return false;
    *sub = Reader(p_, p_ + len);
    p_ += len;
    return true;
  }

 private:
  bool VarintSlow(int max_bytes, uint64_t* out) {
    uint64_t v = 0;
    for (int i = 0; i < max_bytes; ++i) {
      if (p_ == end_) return false;
      const uint8_t b = *p_++;
      v |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
      if (b < 0x80) {
        *out = v;
        return true;
      }
    }
    return false;
  }

  const uint8_t* p_;
  const uint8_t* end_;
};

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "Reader::Fixed64 reads doubles in host byte order");

// Skips the value of a field with `tag` (already read); `depth` is the
// recursion budget left.
bool SkipField(Reader& in, uint32_t tag, int depth) {
  switch (tag & 7) {
    case kVarint: {
      uint64_t v;
      return in.Varint(&v);
    }
    case kFixed64:
      return in.Skip(8);
    case kLengthDelimited: {
      uint32_t len;
      return in.Length(&len) && in.Skip(len);
    }
    case kStartGroup: {
      if (--depth < 0) return false;
      const uint32_t end_tag = (tag & ~7u) | kEndGroup;
      while (true) {
        uint32_t inner;
        if (in.AtEnd() || !in.Tag(&inner)) return false;
        if (inner == end_tag) return true;
        if ((inner & 7) == kEndGroup || !SkipField(in, inner, depth)) {
          return false;
        }
      }
    }
    case kFixed32:
      return in.Skip(4);
    default:
      return false;
  }
}

}  // namespace

// Reads the wire encoding into a MetricSamples whose `bytes_` holds it.
class MetricSamples::Parser {
 public:
  Parser(MetricSamples* out, int max_labels)
      : out_(out),
        base_(reinterpret_cast<const uint8_t*>(out->bytes_.data())),
        max_labels_(max_labels) {}

  absl::Status Batch() {
    Reader in(base_, base_ + out_->bytes_.size());
    bool compressed_data = false;
    while (!in.AtEnd()) {
      uint32_t tag;
      if (!in.Tag(&tag)) return Malformed("invalid tag");
      const uint32_t field = tag >> 3;
      const int type = static_cast<int>(tag & 7);
      if (type == kEndGroup) return Malformed("unexpected end of group");
      if (field == 1 && type == kLengthDelimited) {
        absl::Status s = Metric(in);
        if (!s.ok()) return s;
      } else if (field == 2 && type == kLengthDelimited) {
        Span compression;
        if (!String(in, &compression)) {
          return Malformed("truncated compression");
        }
        if (!IsValidUtf8(out_->View(compression))) {
          return Malformed("compression is not UTF-8");
        }
      } else if (field == 3 && type == kLengthDelimited) {
        Span data;
        if (!String(in, &data)) return Malformed("truncated compressed_data");
        compressed_data = data.size > 0;  // the last occurrence counts
      } else if (!SkipField(in, tag, kRecursionLimit)) {
        return Malformed("truncated or invalid field");
      }
    }
    if (compressed_data) {
      return absl::InvalidArgumentError(
          "nested compressed_data is not allowed");
    }
    return absl::OkStatus();
  }

 private:
  // A length-delimited value as a span of the buffer (no copy).
  bool String(Reader& in, Span* span) {
    uint32_t len;
    if (!in.Length(&len)) return false;
    const uint8_t* at = in.position();
    if (!in.Skip(len)) return false;
    span->offset = static_cast<uint32_t>(at - base_);
    span->size = len;
    return true;
  }

  absl::Status Metric(Reader& outer) {
    const int index = out_->size();
    uint32_t len;
    Reader in(nullptr, nullptr);
    if (!outer.Length(&len) || !outer.Sub(len, &in)) return Truncated(index);
    SampleRec sample;
    sample.labels_begin = static_cast<uint32_t>(out_->labels_.size());
    int label_entries = 0;
    while (!in.AtEnd()) {
      uint32_t tag;
      if (!in.Tag(&tag)) return Truncated(index);
      const uint32_t field = tag >> 3;
      const int type = static_cast<int>(tag & 7);
      if (type == kEndGroup) return Truncated(index);
      if (field == 1 && type == kLengthDelimited) {
        if (!String(in, &sample.name)) return Truncated(index);
        if (!IsValidUtf8(out_->View(sample.name))) return NotUtf8(index);
      } else if (field == 2 && type == kFixed64) {
        uint64_t bits;
        if (!in.Fixed64(&bits)) return Truncated(index);
        static_assert(sizeof(double) == sizeof(uint64_t));
        std::memcpy(&sample.value, &bits, sizeof(bits));
      } else if (field == 3 && type == kLengthDelimited) {
        if (!Timestamp(in, &sample)) return Truncated(index);
      } else if (field == 4 && type == kLengthDelimited) {
        if (++label_entries > max_labels_) {
          return absl::InvalidArgumentError(absl::StrCat(
              "metric ", index, ": more than ", max_labels_, " labels"));
        }
        LabelRec label;
        bool utf8 = true;
        if (!Label(in, &label, &utf8)) return Truncated(index);
        if (!utf8) return NotUtf8(index);
        out_->labels_.push_back(label);
      } else if (!SkipField(in, tag, kRecursionLimit - 1)) {
        return Truncated(index);
      }
    }
    sample.labels_count =
        static_cast<uint32_t>(out_->labels_.size()) - sample.labels_begin;
    out_->samples_.push_back(sample);
    out_->SortAndDedupeLast();
    return absl::OkStatus();
  }

  // Every occurrence of a string field is checked, as the generated parser
  // does, not only the one that is kept.
  static absl::Status NotUtf8(int index) {
    return absl::InvalidArgumentError(
        absl::StrCat("metric ", index, ": a string is not UTF-8"));
  }

  static absl::Status Truncated(int index) {
    return Malformed(
        absl::StrCat("metric ", index, " is truncated or invalid"));
  }

  // google.protobuf.Timestamp, merged into what an earlier occurrence set.
  bool Timestamp(Reader& outer, SampleRec* sample) {
    uint32_t len;
    Reader in(nullptr, nullptr);
    if (!outer.Length(&len) || !outer.Sub(len, &in)) return false;
    sample->has_timestamp = true;
    while (!in.AtEnd()) {
      uint32_t tag;
      if (!in.Tag(&tag)) return false;
      const uint32_t field = tag >> 3;
      const int type = static_cast<int>(tag & 7);
      if (type == kEndGroup) return false;
      uint64_t v;
      if (field == 1 && type == kVarint) {
        if (!in.Varint(&v)) return false;
        sample->seconds = static_cast<int64_t>(v);
      } else if (field == 2 && type == kVarint) {
        if (!in.Varint(&v)) return false;
        sample->nanos = static_cast<int32_t>(v);
      } else if (!SkipField(in, tag, kRecursionLimit - 2)) {
        return false;
      }
    }
    return true;
  }

  // A map<string, string> entry: key = 1, value = 2, both default "".
  // Clears `*utf8` if any occurrence of either is not UTF-8.
  bool Label(Reader& outer, LabelRec* label, bool* utf8) {
    uint32_t len;
    Reader in(nullptr, nullptr);
    if (!outer.Length(&len) || !outer.Sub(len, &in)) return false;
    while (!in.AtEnd()) {
      uint32_t tag;
      if (!in.Tag(&tag)) return false;
      const uint32_t field = tag >> 3;
      const int type = static_cast<int>(tag & 7);
      if (type == kEndGroup) return false;
      if (field == 1 && type == kLengthDelimited) {
        if (!String(in, &label->name)) return false;
        *utf8 = *utf8 && IsValidUtf8(out_->View(label->name));
      } else if (field == 2 && type == kLengthDelimited) {
        if (!String(in, &label->value)) return false;
        *utf8 = *utf8 && IsValidUtf8(out_->View(label->value));
      } else if (!SkipField(in, tag, kRecursionLimit - 2)) {
        return false;
      }
    }
    return true;
  }

  MetricSamples* const out_;
  const uint8_t* const base_;
  const int max_labels_;
};

absl::StatusOr<MetricSamples> MetricSamples::Parse(std::string bytes,
                                                   int max_labels) {
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return absl::InvalidArgumentError("metrics batch over 2 GiB");
  }
  MetricSamples out;
  out.wire_bytes_ = bytes.size();
  out.bytes_ = std::move(bytes);
  // A sample takes at least 2 bytes on the wire (an empty Metric).
  out.samples_.reserve(out.bytes_.size() / 64);
  out.labels_.reserve(out.bytes_.size() / 16);
  Parser parser(&out, max_labels);
  absl::Status s = parser.Batch();
  if (!s.ok()) return s;
  return out;
}

MetricSamples MetricSamples::FromProto(const v1::MetricsBatch& batch) {
  MetricSamples out;
  out.wire_bytes_ = batch.ByteSizeLong();
  size_t text = 0;
  size_t labels = 0;
  for (const v1::Metric& m : batch.metrics()) {
    text += m.name().size();
    labels += m.labels().size();
    for (const auto& [k, v] : m.labels()) text += k.size() + v.size();
  }
  out.bytes_.reserve(text);
  out.samples_.reserve(batch.metrics_size());
  out.labels_.reserve(labels);
  for (const v1::Metric& m : batch.metrics()) out.Append(m);
  return out;
}

void MetricSamples::Append(const v1::Metric& metric) {
  SampleRec s;
  s.name = AppendBytes(metric.name());
  s.value = metric.value();
  s.has_timestamp = metric.has_timestamp();
  s.seconds = metric.timestamp().seconds();
  s.nanos = metric.timestamp().nanos();
  s.labels_begin = static_cast<uint32_t>(labels_.size());
  for (const auto& [k, v] : metric.labels()) {
    labels_.push_back({AppendBytes(k), AppendBytes(v)});
  }
  s.labels_count = static_cast<uint32_t>(metric.labels().size());
  samples_.push_back(s);
  SortAndDedupeLast();
}

v1::MetricsBatch MetricSamples::ToProto() const {
  v1::MetricsBatch batch;
  for (int i = 0; i < size(); ++i) {
    v1::Metric* m = batch.add_metrics();
    m->set_name(std::string(name(i)));
    m->set_value(value(i));
    if (has_timestamp(i)) {
      m->mutable_timestamp()->set_seconds(timestamp_seconds(i));
      m->mutable_timestamp()->set_nanos(timestamp_nanos(i));
    }
    for (int j = 0; j < label_count(i); ++j) {
      LabelView l = label(i, j);
      (*m->mutable_labels())[std::string(l.name)] = std::string(l.value);
    }
  }
  return batch;
}

int64_t MetricSamples::timestamp_millis(int i) const {
  const SampleRec& s = samples_[i];
  // Floor division, so that times before 1970 round down as well.
  int64_t ms = s.seconds * 1000;
  int64_t sub = s.nanos / 1'000'000;
  if (s.nanos < 0 && s.nanos % 1'000'000 != 0) --sub;
  return ms + sub;
}

std::optional<absl::string_view> MetricSamples::FindLabel(
    int i, absl::string_view name) const {
  for (int j = 0; j < label_count(i); ++j) {
    LabelView l = label(i, j);
    if (l.name == name) return l.value;
  }
  return std::nullopt;
}

void MetricSamples::SetTimestamp(int i, int64_t seconds, int32_t nanos) {
  SampleRec& s = samples_[i];
  s.has_timestamp = true;
  s.seconds = seconds;
  s.nanos = nanos;
}

bool MetricSamples::EraseLabel(int i, absl::string_view name) {
  SampleRec& s = samples_[i];
  auto begin = labels_.begin() + s.labels_begin;
  auto end = begin + s.labels_count;
  auto it = std::find_if(
      begin, end, [&](const LabelRec& l) { return View(l.name) == name; });
  if (it == end) return false;
  // The sample's range shrinks; the freed slot stays unused at its end.
  std::move(it + 1, end, it);
  --s.labels_count;
  return true;
}

size_t MetricSamples::MemoryBytes() const {
  return bytes_.capacity() + samples_.capacity() * sizeof(SampleRec) +
         labels_.capacity() * sizeof(LabelRec);
}

MetricSamples::Span MetricSamples::AppendBytes(absl::string_view s) {
  Span span{static_cast<uint32_t>(bytes_.size()),
            static_cast<uint32_t>(s.size())};
  bytes_.append(s.data(), s.size());
  return span;
}

void MetricSamples::SortAndDedupeLast() {
  SampleRec& s = samples_.back();
  if (s.labels_count < 2) return;
  auto begin = labels_.begin() + s.labels_begin;
  auto end = begin + s.labels_count;
  // Insertion sort: a handful of labels, often already in order, no
  // allocation. Stable, so equal names keep their wire order and the last one
  // wins below.
  for (auto it = begin + 1; it != end; ++it) {
    LabelRec moving = *it;
    const absl::string_view key = View(moving.name);
    auto hole = it;
    while (hole != begin && key < View((hole - 1)->name)) {
      *hole = *(hole - 1);
      --hole;
    }
    *hole = moving;
  }
  auto out = begin;
  for (auto it = begin; it != end; ++it) {
    if (it + 1 != end && View((it + 1)->name) == View(it->name)) continue;
    *out++ = *it;
  }
  s.labels_count = static_cast<uint32_t>(out - begin);
  labels_.resize(s.labels_begin + s.labels_count);
}

bool operator==(const MetricSamples& a, const MetricSamples& b) {
  if (a.size() != b.size()) return false;
  for (int i = 0; i < a.size(); ++i) {
    const double av = a.value(i);
    const double bv = b.value(i);
    if (a.name(i) != b.name(i) || std::memcmp(&av, &bv, sizeof(av)) != 0 ||
        a.has_timestamp(i) != b.has_timestamp(i) ||
        a.timestamp_seconds(i) != b.timestamp_seconds(i) ||
        a.timestamp_nanos(i) != b.timestamp_nanos(i) ||
        a.label_count(i) != b.label_count(i)) {
      return false;
    }
    for (int j = 0; j < a.label_count(i); ++j) {
      LabelView x = a.label(i, j);
      LabelView y = b.label(i, j);
      if (x.name != y.name || x.value != y.value) return false;
    }
  }
  return true;
}

}  // namespace fleetd::server
