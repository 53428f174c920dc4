#include "agent/storage/record_codec.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace fleetd::agent::storage_internal {
namespace {

constexpr int64_t kNanosPerSecond = 1'000'000'000;
// Seconds representable as int64 nanoseconds, leaving room for the nanos part.
constexpr int64_t kMaxSeconds =
    std::numeric_limits<int64_t>::max() / kNanosPerSecond - 1;
constexpr int64_t kMinSeconds =
    std::numeric_limits<int64_t>::min() / kNanosPerSecond + 1;

absl::Status Malformed(absl::string_view what) {
  return absl::DataLossError(absl::StrCat("stored ", what, " is malformed"));
}

template <typename Map>
void PutStringMap(std::string* out, const Map& map) {
  PutVarint(out, map.size());
  for (const auto& [k, v] : map) {
    PutString(out, k);
    PutString(out, v);
  }
}

bool GetStringMap(Reader* r,
                  google::protobuf::Map<std::string, std::string>* map) {
  uint64_t n;
  if (!r->GetVarint(&n)) return false;
  for (uint64_t i = 0; i < n; ++i) {
    absl::string_view k;
    absl::string_view v;
    if (!r->GetString(&k) || !r->GetString(&v)) return false;
    (*map)[std::string(k)] = std::string(v);
  }
  return true;
}

}  // namespace

absl::StatusOr<int64_t> TimestampToNanos(
    const google::protobuf::Timestamp& ts) {
  if (ts.seconds() > kMaxSeconds || ts.seconds() < kMinSeconds ||
      ts.nanos() < 0 || ts.nanos() >= kNanosPerSecond) {
    return absl::InvalidArgumentError(
        absl::StrCat("timestamp ", ts.seconds(), "s ", ts.nanos(),
                     "ns is outside the storable range (years 1678-2262)"));
  }
  return ts.seconds() * kNanosPerSecond + ts.nanos();
}

void NanosToTimestamp(int64_t nanos, google::protobuf::Timestamp* ts) {
  int64_t seconds = nanos / kNanosPerSecond;
  int64_t rem = nanos % kNanosPerSecond;
  if (rem < 0) {
    rem += kNanosPerSecond;
    --seconds;
  }
  ts->set_seconds(seconds);
  ts->set_nanos(static_cast<int32_t>(rem));
}

int64_t DoubleBits(double v) {
  int64_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits;
}

double BitsToDouble(int64_t bits) {
  double v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

void PutVarint(std::string* out, uint64_t v) {
  char buf[10];
  int n = 0;
  while (v >= 0x80) {
    buf[n++] = static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  buf[n++] = static_cast<char>(v);
  out->append(buf, n);
}

void PutString(std::string* out, absl::string_view s) {
  PutVarint(out, s.size());
  out->append(s.data(), s.size());
}

void PutDouble(std::string* out, double v) {
  uint64_t bits = static_cast<uint64_t>(DoubleBits(v));
  char buf[8];
  for (int i = 0; i < 8; ++i) buf[i] = static_cast<char>(bits >> (8 * i));
  out->append(buf, 8);
}

bool Reader::GetVarint(uint64_t* v) {
  uint64_t result = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (in_.empty()) return false;
    auto byte = static_cast<uint8_t>(in_.front());
    in_.remove_prefix(1);
    result |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) {
      *v = result;
      return true;
    }
  }
  in_ = {};
  return false;
}

bool Reader::GetString(absl::string_view* s) {
  uint64_t n;
  if (!GetVarint(&n) || n > in_.size()) {
    in_ = {};
    return false;
  }
  *s = in_.substr(0, n);
  in_.remove_prefix(n);
  return true;
}

bool Reader::GetDouble(double* v) {
  if (in_.size() < 8) {
    in_ = {};
    return false;
  }
  uint64_t bits = 0;
  for (int i = 0; i < 8; ++i) {
    bits |= static_cast<uint64_t>(static_cast<uint8_t>(in_[i])) << (8 * i);
  }
  in_.remove_prefix(8);
  *v = BitsToDouble(static_cast<int64_t>(bits));
  return true;
}

void AppendSeriesKey(const v1::Metric& metric, EncodeScratch* scratch,
                     std::string* out) {
  PutString(out, metric.name());
  const auto& labels = metric.labels();
  PutVarint(out, labels.size());
  if (labels.empty()) return;
  auto& pairs = scratch->pairs;
  pairs.clear();
  for (const auto& kv : labels) pairs.push_back(&kv);
  std::sort(pairs.begin(), pairs.end(),
            [](const auto* a, const auto* b) { return a->first < b->first; });
  for (const auto* kv : pairs) {
    PutString(out, kv->first);
    PutString(out, kv->second);
  }
}

absl::Status DecodeSeriesKey(absl::string_view key, v1::Metric* metric) {
  Reader r(key);
  absl::string_view name;
  if (!r.GetString(&name)) return Malformed("series key");
  metric->set_name(std::string(name));
  if (!GetStringMap(&r, metric->mutable_labels()) || !r.done()) {
    return Malformed("series key");
  }
  return absl::OkStatus();
}

void AppendMetricPayload(const v1::Metric& metric, std::string* out) {
  PutDouble(out, metric.value());
  PutString(out, metric.name());
  PutStringMap(out, metric.labels());
}

absl::Status DecodeMetricPayload(absl::string_view payload,
                                 v1::Metric* metric) {
  Reader r(payload);
  double value;
  absl::string_view name;
  if (!r.GetDouble(&value) || !r.GetString(&name)) {
    return Malformed("metric");
  }
  metric->set_value(value);
  metric->set_name(std::string(name));
  if (!GetStringMap(&r, metric->mutable_labels()) || !r.done()) {
    return Malformed("metric");
  }
  return absl::OkStatus();
}

void AppendLogBody(const v1::LogEntry& log, std::string* out) {
  PutString(out, log.level());
  PutString(out, log.message());
  PutString(out, log.source());
  PutStringMap(out, log.fields());
}

absl::Status DecodeLogBody(absl::string_view body, v1::LogEntry* log) {
  Reader r(body);
  absl::string_view level;
  absl::string_view message;
  absl::string_view source;
  if (!r.GetString(&level) || !r.GetString(&message) || !r.GetString(&source)) {
    return Malformed("log entry");
  }
  log->set_level(std::string(level));
  log->set_message(std::string(message));
  log->set_source(std::string(source));
  if (!GetStringMap(&r, log->mutable_fields()) || !r.done()) {
    return Malformed("log entry");
  }
  return absl::OkStatus();
}

void AppendEventBody(const v1::Event& event, std::string* out) {
  PutString(out, event.name());
  PutString(out, event.event_id());
  PutStringMap(out, event.properties());
  PutVarint(out, event.values().size());
  for (const auto& [k, v] : event.values()) {
    PutString(out, k);
    PutDouble(out, v);
  }
}

absl::Status DecodeEventBody(absl::string_view body, v1::Event* event) {
  Reader r(body);
  absl::string_view name;
  absl::string_view event_id;
  if (!r.GetString(&name) || !r.GetString(&event_id)) {
    return Malformed("event");
  }
  event->set_name(std::string(name));
  event->set_event_id(std::string(event_id));
  if (!GetStringMap(&r, event->mutable_properties())) {
    return Malformed("event");
  }
  uint64_t n;
  if (!r.GetVarint(&n)) return Malformed("event");
  auto* values = event->mutable_values();
  for (uint64_t i = 0; i < n; ++i) {
    absl::string_view k;
    double v;
    if (!r.GetString(&k) || !r.GetDouble(&v)) return Malformed("event");
    (*values)[std::string(k)] = v;
  }
  if (!r.done()) return Malformed("event");
  return absl::OkStatus();
}

}  // namespace fleetd::agent::storage_internal
