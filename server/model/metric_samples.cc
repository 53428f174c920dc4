#include "server/model/metric_samples.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/text/utf8.h"
#include "google/protobuf/io/coded_stream.h"

namespace fleetd::server {
namespace {

using google::protobuf::io::CodedInputStream;

// Wire types (protobuf encoding spec).
constexpr int kVarint = 0;
constexpr int kFixed64 = 1;
constexpr int kLengthDelimited = 2;
constexpr int kStartGroup = 3;
constexpr int kEndGroup = 4;
constexpr int kFixed32 = 5;

// Same depth as protobuf's default recursion limit would allow for our
// messages; deeper unknown groups are refused.
constexpr int kMaxGroupDepth = 64;

absl::Status Malformed(absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed metrics batch: ", what));
}

absl::Status SkipGroup(CodedInputStream& in, uint32_t start_tag, int depth);

// Skips the value of a field with `tag` (already read).
absl::Status SkipField(CodedInputStream& in, uint32_t tag, int depth) {
  switch (tag & 7) {
    case kVarint: {
      uint64_t v;
      if (!in.ReadVarint64(&v)) return Malformed("truncated varint");
      return absl::OkStatus();
    }
    case kFixed64:
      if (!in.Skip(8)) return Malformed("truncated fixed64");
      return absl::OkStatus();
    case kLengthDelimited: {
      uint32_t len;
      if (!in.ReadVarint32(&len) ||
          len > static_cast<uint32_t>(std::numeric_limits<int>::max()) ||
          !in.Skip(static_cast<int>(len))) {
        return Malformed("truncated length-delimited field");
      }
      return absl::OkStatus();
    }
    case kStartGroup:
      return SkipGroup(in, tag, depth + 1);
    case kFixed32:
      if (!in.Skip(4)) return Malformed("truncated fixed32");
      return absl::OkStatus();
    default:
      return Malformed("invalid wire type");
  }
}

absl::Status SkipGroup(CodedInputStream& in, uint32_t start_tag, int depth) {
  if (depth > kMaxGroupDepth) return Malformed("groups nested too deeply");
  const uint32_t end_tag = (start_tag & ~7u) | kEndGroup;
  while (true) {
    uint32_t tag = in.ReadTag();
    if (tag == 0) return Malformed("unterminated group");
    if (tag == end_tag) return absl::OkStatus();
    if ((tag >> 3) == 0) return Malformed("field number 0");
    if ((tag & 7) == kEndGroup) return Malformed("mismatched end of group");
    absl::Status s = SkipField(in, tag, depth);
    if (!s.ok()) return s;
  }
}

}  // namespace

// Reads the wire encoding into a MetricSamples whose `bytes_` holds it.
class MetricSamples::Parser {
 public:
  Parser(MetricSamples* out, int max_labels)
      : out_(out),
        in_(reinterpret_cast<const uint8_t*>(out->bytes_.data()),
            static_cast<int>(out->bytes_.size())),
        max_labels_(max_labels) {
    // The buffer's own size bounds every read.
    in_.SetTotalBytesLimit(std::numeric_limits<int>::max());
  }

  absl::Status Batch() {
    bool compressed_data = false;
    while (true) {
      const uint32_t tag = in_.ReadTag();
      if (tag == 0) break;
      const uint32_t field = tag >> 3;
      const int type = static_cast<int>(tag & 7);
      if (field == 0) return Malformed("field number 0");
      if (type == kEndGroup) return Malformed("unexpected end of group");
      if (field == 1 && type == kLengthDelimited) {
        absl::Status s = Metric();
        if (!s.ok()) return s;
      } else if (field == 2 && type == kLengthDelimited) {
        Span compression;
        if (!String(&compression)) return Malformed("truncated compression");
        if (!IsValidUtf8(out_->View(compression))) {
          return Malformed("compression is not UTF-8");
        }
      } else if (field == 3 && type == kLengthDelimited) {
        Span data;
        if (!String(&data)) return Malformed("truncated compressed_data");
        compressed_data = data.size > 0;  // the last occurrence counts
      } else {
        absl::Status s = SkipField(in_, tag, 0);
        if (!s.ok()) return s;
      }
    }
    if (!in_.ConsumedEntireMessage() ||
        in_.CurrentPosition() != static_cast<int>(out_->bytes_.size())) {
      return Malformed("trailing bytes");
    }
    if (compressed_data) {
      return absl::InvalidArgumentError(
          "nested compressed_data is not allowed");
    }
    return absl::OkStatus();
  }

 private:
  // The length of a length-delimited field, at most INT_MAX.
  bool Length(uint32_t* len) {
    return in_.ReadVarint32(len) &&
           *len <= static_cast<uint32_t>(std::numeric_limits<int>::max());
  }

  // A length-delimited value as a span of the buffer (no copy).
  bool String(Span* span) {
    uint32_t len;
    if (!Length(&len)) return false;
    const int at = in_.CurrentPosition();
    if (!in_.Skip(static_cast<int>(len))) return false;
    span->offset = static_cast<uint32_t>(at);
    span->size = len;
    return true;
  }

  absl::Status Metric() {
    uint32_t len;
    if (!Length(&len)) return Malformed("truncated metric");
    const int index = out_->size();
    auto limit = in_.PushLimit(static_cast<int>(len));
    if (in_.BytesUntilLimit() != static_cast<int>(len)) {
      return Malformed(absl::StrCat("metric ", index, " is truncated"));
    }
    SampleRec sample;
    sample.labels_begin = static_cast<uint32_t>(out_->labels_.size());
    int label_entries = 0;
    while (true) {
      const uint32_t tag = in_.ReadTag();
      if (tag == 0) break;
      const uint32_t field = tag >> 3;
      const int type = static_cast<int>(tag & 7);
      if (field == 0) return Malformed("field number 0");
      if (type == kEndGroup) return Malformed("unexpected end of group");
      if (field == 1 && type == kLengthDelimited) {
        if (!String(&sample.name)) return Truncated(index);
      } else if (field == 2 && type == kFixed64) {
        uint64_t bits;
        if (!in_.ReadLittleEndian64(&bits)) return Truncated(index);
        static_assert(sizeof(double) == sizeof(uint64_t));
        std::memcpy(&sample.value, &bits, sizeof(bits));
      } else if (field == 3 && type == kLengthDelimited) {
        if (!Timestamp(&sample)) return Truncated(index);
      } else if (field == 4 && type == kLengthDelimited) {
        if (++label_entries > max_labels_) {
          return absl::InvalidArgumentError(absl::StrCat(
              "metric ", index, ": more than ", max_labels_, " labels"));
        }
        LabelRec label;
        if (!Label(&label)) return Truncated(index);
        out_->labels_.push_back(label);
      } else {
        absl::Status s = SkipField(in_, tag, 0);
        if (!s.ok()) return s;
      }
    }
    if (!in_.ConsumedEntireMessage() || in_.BytesUntilLimit() != 0) {
      return Truncated(index);
    }
    in_.PopLimit(limit);
    if (!IsValidUtf8(out_->View(sample.name))) {
      return absl::InvalidArgumentError(
          absl::StrCat("metric ", index, ": name is not UTF-8"));
    }
    for (size_t j = sample.labels_begin; j < out_->labels_.size(); ++j) {
      const LabelRec& l = out_->labels_[j];
      if (!IsValidUtf8(out_->View(l.name)) ||
          !IsValidUtf8(out_->View(l.value))) {
        return absl::InvalidArgumentError(
            absl::StrCat("metric ", index, ": label is not UTF-8"));
      }
    }
    sample.labels_count =
        static_cast<uint32_t>(out_->labels_.size()) - sample.labels_begin;
    out_->samples_.push_back(sample);
    out_->SortAndDedupeLast();
    return absl::OkStatus();
  }

  absl::Status Truncated(int index) {
    return Malformed(absl::StrCat("metric ", index, " is truncated"));
  }

  // google.protobuf.Timestamp, merged into what an earlier occurrence set.
  bool Timestamp(SampleRec* sample) {
    uint32_t len;
    if (!Length(&len)) return false;
    auto limit = in_.PushLimit(static_cast<int>(len));
    if (in_.BytesUntilLimit() != static_cast<int>(len)) return false;
    sample->has_timestamp = true;
    while (true) {
      const uint32_t tag = in_.ReadTag();
      if (tag == 0) break;
      const uint32_t field = tag >> 3;
      const int type = static_cast<int>(tag & 7);
      if (field == 0 || type == kEndGroup) return false;
      uint64_t v;
      if (field == 1 && type == kVarint) {
        if (!in_.ReadVarint64(&v)) return false;
        sample->seconds = static_cast<int64_t>(v);
      } else if (field == 2 && type == kVarint) {
        if (!in_.ReadVarint64(&v)) return false;
        sample->nanos = static_cast<int32_t>(v);
      } else if (!SkipField(in_, tag, 0).ok()) {
        return false;
      }
    }
    if (!in_.ConsumedEntireMessage() || in_.BytesUntilLimit() != 0) {
      return false;
    }
    in_.PopLimit(limit);
    return true;
  }

  // A map<string, string> entry: key = 1, value = 2, both default "".
  bool Label(LabelRec* label) {
    uint32_t len;
    if (!Length(&len)) return false;
    auto limit = in_.PushLimit(static_cast<int>(len));
    if (in_.BytesUntilLimit() != static_cast<int>(len)) return false;
    while (true) {
      const uint32_t tag = in_.ReadTag();
      if (tag == 0) break;
      const uint32_t field = tag >> 3;
      const int type = static_cast<int>(tag & 7);
      if (field == 0 || type == kEndGroup) return false;
      if (field == 1 && type == kLengthDelimited) {
        if (!String(&label->name)) return false;
      } else if (field == 2 && type == kLengthDelimited) {
        if (!String(&label->value)) return false;
      } else if (!SkipField(in_, tag, 0).ok()) {
        return false;
      }
    }
    if (!in_.ConsumedEntireMessage() || in_.BytesUntilLimit() != 0) {
      return false;
    }
    in_.PopLimit(limit);
    return true;
  }

  MetricSamples* const out_;
  CodedInputStream in_;
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
  for (const v1::Metric& m : batch.metrics()) {
    SampleRec s;
    s.name = out.Append(m.name());
    s.value = m.value();
    s.has_timestamp = m.has_timestamp();
    s.seconds = m.timestamp().seconds();
    s.nanos = m.timestamp().nanos();
    s.labels_begin = static_cast<uint32_t>(out.labels_.size());
    for (const auto& [k, v] : m.labels()) {
      out.labels_.push_back({out.Append(k), out.Append(v)});
    }
    s.labels_count = static_cast<uint32_t>(m.labels().size());
    out.samples_.push_back(s);
    out.SortAndDedupeLast();
  }
  return out;
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

MetricSamples::Span MetricSamples::Append(absl::string_view s) {
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
