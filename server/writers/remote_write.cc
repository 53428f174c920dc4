#include "server/writers/remote_write.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/base/casts.h"
#include "absl/hash/hash.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/text/utf8.h"
#include "snappy.h"

namespace fleetd::server {
namespace {

// Wire types and field numbers of prometheus.WriteRequest and its messages,
// as tag bytes.
constexpr char kTimeSeriesTag = 0x0a;   // WriteRequest.timeseries = 1, LEN
constexpr char kLabelsTag = 0x0a;       // TimeSeries.labels = 1, LEN
constexpr char kSamplesTag = 0x12;      // TimeSeries.samples = 2, LEN
constexpr char kLabelNameTag = 0x0a;    // Label.name = 1, LEN
constexpr char kLabelValueTag = 0x12;   // Label.value = 2, LEN
constexpr char kSampleValueTag = 0x09;  // Sample.value = 1, I64 (double)
constexpr char kTimestampTag = 0x10;    // Sample.timestamp = 2, VARINT

constexpr absl::string_view kNameLabel = "__name__";
constexpr absl::string_view kDeviceLabel = "device_id";
constexpr absl::string_view kOrgLabel = "org_id";

size_t VarintSize(uint64_t v) {
  // 7 bits a byte; v | 1 keeps clz defined for 0.
  return static_cast<size_t>(63 - __builtin_clzll(v | 1)) / 7 + 1;
}

char* PutVarint(char* p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = static_cast<char>(v | 0x80);
    v >>= 7;
  }
  *p++ = static_cast<char>(v);
  return p;
}

char* PutBytesField(char* p, char tag, absl::string_view bytes) {
  *p++ = tag;
  p = PutVarint(p, bytes.size());
  std::memcpy(p, bytes.data(), bytes.size());
  return p + bytes.size();
}

size_t LabelMessageSize(absl::string_view name, absl::string_view value) {
  return 1 + VarintSize(name.size()) + name.size() + 1 +
         VarintSize(value.size()) + value.size();
}

// The bytes of one TimeSeries.labels field.
size_t LabelFieldSize(absl::string_view name, absl::string_view value) {
  const size_t size = LabelMessageSize(name, value);
  return 1 + VarintSize(size) + size;
}

// Sample: value (tag and 8 bytes) and timestamp (tag and varint; negative
// int64 take 10 bytes, as protobuf encodes them).
size_t SampleMessageSize(int64_t ms) {
  return 1 + 8 + 1 + VarintSize(static_cast<uint64_t>(ms));
}

// The bytes of one TimeSeries.samples field (a Sample is at most 20 bytes, so
// its length is one byte).
size_t SampleFieldSize(int64_t ms) { return 2 + SampleMessageSize(ms); }

// Metric labels that are written: the identity and reserved names belong to
// the server, and an empty value means no label.
bool KeptLabel(absl::string_view name, absl::string_view value) {
  return !value.empty() && name != kDeviceLabel && name != kOrgLabel &&
         !absl::StartsWith(name, "__");
}

}  // namespace

uint32_t RemoteWriteEncoder::FindOrAddSeries(const DecodedBatch& batch,
                                             int index) {
  const MetricSamples& metrics = batch.metrics;
  const std::string& device = batch.device.device_id;
  const std::string& org = batch.device.org_id;
  const absl::string_view name = metrics.name(index);
  const int count = metrics.label_count(index);
  // Labels come sorted and unique (metric_samples.h), so one pass hashes
  // them and a pairwise walk compares two sets.
  size_t hash = absl::HashOf(name, device, org);
  uint32_t labels = 1 + (device.empty() ? 0 : 1) + (org.empty() ? 0 : 1);
  for (int j = 0; j < count; ++j) {
    const LabelView l = metrics.label(index, j);
    if (!KeptLabel(l.name, l.value)) continue;
    hash = absl::HashOf(hash, l.name, l.value);
    ++labels;
  }

  const size_t mask = slots_.size() - 1;
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    const uint32_t slot = slots_[i];
    if (slot == 0) {
      slots_[i] = static_cast<uint32_t>(series_.size()) + 1;
      break;
    }
    const Series& s = series_[slot - 1];
    const MetricSamples& other = s.batch->metrics;
    if (s.hash != hash || s.labels != labels || other.name(s.index) != name) {
      continue;
    }
    if (s.batch != &batch && (s.batch->device.device_id != device ||
                              s.batch->device.org_id != org)) {
      continue;
    }
    // Both kept-label lists in name order: equal element by element.
    const int other_count = other.label_count(s.index);
    int j = 0;
    int k = 0;
    bool same = true;
    while (same) {
      while (j < count && !KeptLabel(metrics.label(index, j).name,
                                     metrics.label(index, j).value)) {
        ++j;
      }
      while (k < other_count && !KeptLabel(other.label(s.index, k).name,
                                           other.label(s.index, k).value)) {
        ++k;
      }
      if (j == count || k == other_count) {
        same = j == count && k == other_count;
        break;
      }
      const LabelView a = metrics.label(index, j++);
      const LabelView b = other.label(s.index, k++);
      same = a.name == b.name && a.value == b.value;
    }
    if (same) return slot - 1;
  }

  Series s{};
  s.batch = &batch;
  s.index = index;
  s.hash = hash;
  s.labels = labels;
  s.label_bytes = LabelFieldSize(kNameLabel, name);
  if (!device.empty()) s.label_bytes += LabelFieldSize(kDeviceLabel, device);
  if (!org.empty()) s.label_bytes += LabelFieldSize(kOrgLabel, org);
  for (int j = 0; j < count; ++j) {
    const LabelView l = metrics.label(index, j);
    if (KeptLabel(l.name, l.value))
      s.label_bytes += LabelFieldSize(l.name, l.value);
  }
  series_.push_back(s);
  return static_cast<uint32_t>(series_.size() - 1);
}

absl::Status RemoteWriteEncoder::SortedLabels(const Series& series) {
  const MetricSamples& metrics = series.batch->metrics;
  const absl::string_view name = metrics.name(series.index);
  const DeviceIdentity& device = series.batch->device;
  labels_.clear();
  labels_.emplace_back(kNameLabel, name);
  if (!device.device_id.empty()) {
    labels_.emplace_back(kDeviceLabel, device.device_id);
  }
  if (!device.org_id.empty()) labels_.emplace_back(kOrgLabel, device.org_id);
  for (int j = 0; j < metrics.label_count(series.index); ++j) {
    const LabelView l = metrics.label(series.index, j);
    if (KeptLabel(l.name, l.value)) labels_.emplace_back(l.name, l.value);
  }
  for (const auto& [label, value] : labels_) {
    if (!IsValidUtf8(label) || !IsValidUtf8(value)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "metric \"", absl::CEscape(name), "\" of device \"",
          absl::CEscape(device.device_id), "\": label \"", absl::CEscape(label),
          "\" or its value is not valid UTF-8"));
    }
  }
  // The metric's own labels are in order already; the three added ones
  // (__name__, device_id, org_id) find their places.
  std::sort(labels_.begin(), labels_.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  return absl::OkStatus();
}

void RemoteWriteEncoder::Clear() {
  raw_size_ = 0;
  samples_.clear();
  series_.clear();
}

absl::Status RemoteWriteEncoder::Encode(
    absl::Span<const DecodedBatch* const> batches, std::string* body) {
  body->clear();
  Clear();
  size_t count = 0;
  size_t batch_series = 0;
  for (const DecodedBatch* b : batches) {
    if (b->kind != DataKind::kMetrics) continue;
    count += b->metrics.size();
    batch_series += b->metrics.series_count();
  }
  if (count == 0) return absl::OkStatus();
  if (count > std::numeric_limits<uint32_t>::max() / 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(count, " samples are too many for one request"));
  }

  // Group samples by label set: a hash table at most half full. Samples of
  // one series of a batch have the same labels (metric_samples.h), so the
  // table is asked once per series of each batch; equal series of different
  // batches meet there.
  size_t slots = 16;
  while (slots < 2 * batch_series) slots *= 2;
  slots_.assign(slots, 0);
  uint32_t position = 0;
  for (const DecodedBatch* b : batches) {
    if (b->kind != DataKind::kMetrics) continue;
    batch_series_.assign(b->metrics.series_count(), kNoSeries);
    for (int i = 0; i < b->metrics.size(); ++i) {
      uint32_t& s = batch_series_[b->metrics.series(i)];
      if (s == kNoSeries) s = FindOrAddSeries(*b, i);
      const int64_t ms = b->metrics.timestamp_millis(i);
      series_[s].samples++;
      series_[s].sample_bytes += SampleFieldSize(ms);
      samples_.push_back({b->metrics.value(i), ms, s, position++});
    }
  }
  uint32_t first = 0;
  for (Series& s : series_) {
    s.first = first;
    first += s.samples;
    s.samples = 0;  // counts again while placing
  }
  grouped_.resize(samples_.size());
  for (const Sample& sample : samples_) {
    Series& s = series_[sample.series];
    grouped_[s.first + s.samples++] = sample;
  }
  size_t total = 0;
  for (const Series& s : series_) {
    auto begin = grouped_.begin() + s.first;
    auto end = begin + s.samples;
    auto by_time = [](const Sample& a, const Sample& b) {
      return a.ms < b.ms || (a.ms == b.ms && a.position < b.position);
    };
    if (!std::is_sorted(begin, end, by_time)) std::sort(begin, end, by_time);
    const size_t size = s.label_bytes + s.sample_bytes;
    total += 1 + VarintSize(size) + size;
  }

  // Sizes are known, so every length prefix is written before its content.
  // raw_ only grows (resizing a string writes zeros over it first), so a
  // steady stream of flushes writes each byte once.
  if (raw_.size() < total) raw_.resize(total);
  raw_size_ = total;
  char* p = raw_.data();
  for (const Series& s : series_) {
    absl::Status sorted = SortedLabels(s);
    if (!sorted.ok()) {
      Clear();
      return sorted;
    }
    *p++ = kTimeSeriesTag;
    p = PutVarint(p, s.label_bytes + s.sample_bytes);
    for (const auto& [name, value] : labels_) {
      *p++ = kLabelsTag;
      p = PutVarint(p, LabelMessageSize(name, value));
      p = PutBytesField(p, kLabelNameTag, name);
      p = PutBytesField(p, kLabelValueTag, value);
    }
    for (uint32_t i = 0; i < s.samples; ++i) {
      const Sample& sample = grouped_[s.first + i];
      *p++ = kSamplesTag;
      *p++ = static_cast<char>(SampleMessageSize(sample.ms));
      *p++ = kSampleValueTag;
      const uint64_t bits = absl::bit_cast<uint64_t>(sample.value);
      for (int byte = 0; byte < 8; ++byte) {  // little-endian
        *p++ = static_cast<char>(bits >> (8 * byte));
      }
      *p++ = kTimestampTag;
      p = PutVarint(p, static_cast<uint64_t>(sample.ms));
    }
  }
  if (p != raw_.data() + raw_size_) {
    Clear();
    return absl::InternalError("remote write: encoded size differs from plan");
  }
  // Into scratch that only grows, then copied: snappy::Compress into a
  // std::string would zero its worst-case size on every call first.
  const size_t bound = snappy::MaxCompressedLength(raw_size_);
  if (compressed_.size() < bound) compressed_.resize(bound);
  size_t compressed_size = 0;
  snappy::RawCompress(raw_.data(), raw_size_, compressed_.data(),
                      &compressed_size);
  body->assign(compressed_.data(), compressed_size);
  return absl::OkStatus();
}

}  // namespace fleetd::server
