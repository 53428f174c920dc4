#include "server/core/decode.h"

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/codec/codec.h"
#include "common/crypto/sha256.h"
#include "common/status/error_class.h"
#include "common/status/status_macros.h"
#include "server/model/metric_samples.h"

namespace fleetd::server {
namespace {

void SetTimestamp(google::protobuf::Timestamp* ts, absl::Time t) {
  int64_t nanos = absl::ToUnixNanos(t);
  ts->set_seconds(nanos / 1'000'000'000);
  ts->set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
}

// Names a record in error messages ("metric 3"); built only on errors.
struct Where {
  absl::string_view kind;
  int index;

  std::string str() const { return absl::StrCat(kind, " ", index); }
};

absl::Status CheckTimestamp(int64_t seconds, int32_t nanos, const Where& what) {
  // The range google.protobuf.Timestamp allows: years 0001..9999.
  if (seconds < -62135596800 || seconds > 253402300799 || nanos < 0 ||
      nanos > 999'999'999) {
    return absl::InvalidArgumentError(
        absl::StrCat(what.str(), ": timestamp out of range"));
  }
  return absl::OkStatus();
}

absl::Status CheckTimestamp(const google::protobuf::Timestamp& ts,
                            const Where& what) {
  return CheckTimestamp(ts.seconds(), ts.nanos(), what);
}

// Validates a label set: names, counts and sizes, and the reserved identity
// labels. Removes the identity labels once checked against `device`.
absl::Status CheckLabels(
    google::protobuf::Map<std::string, std::string>* labels,
    const DeviceIdentity& device, const DecodeLimits& limits,
    const Where& what) {
  if (labels->size() > static_cast<size_t>(limits.max_labels)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what.str(), ": ", labels->size(),
                     " labels, over the limit of ", limits.max_labels));
  }
  for (const auto& [name, value] : *labels) {
    if (!IsValidLabelName(name) || name.size() > limits.max_name_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          what.str(), ": invalid label name \"", absl::CEscape(name), "\""));
    }
    if (value.size() > limits.max_label_value_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(what.str(), ": label ", name, " value of ", value.size(),
                       " bytes is too long"));
    }
  }
  auto dev = labels->find("device_id");
  if (dev != labels->end() && dev->second != device.device_id) {
    return absl::PermissionDeniedError(absl::StrCat(
        what.str(),
        ": label device_id names another device than the API key's"));
  }
  auto org = labels->find("org_id");
  if (org != labels->end() && org->second != device.org_id) {
    return absl::PermissionDeniedError(absl::StrCat(
        what.str(), ": label org_id names another org than the API key's"));
  }
  const bool has_dev = dev != labels->end();
  const bool has_org = org != labels->end();
  if (has_dev) labels->erase("device_id");
  if (has_org) labels->erase("org_id");
  return absl::OkStatus();
}

// Undoes in-message compression: the decompressed bytes of `compressed`
// (the batch's compressed_data, in `compression`), checked against its
// declared size and the metadata's checksum, or nullopt when the records
// travel uncompressed (`compressed` empty). `wire_records` is how many records
// the wire batch carries uncompressed.
absl::StatusOr<std::optional<std::string>> Inflate(
    absl::string_view compression, absl::string_view compressed,
    const v1::SyncMetadata& metadata, int declared_size, int wire_records,
    const DecodeLimits& limits) {
  if (compressed.empty()) {
    if (!metadata.checksum().empty() &&
        metadata.checksum().size() != kSha256Size) {
      return absl::InvalidArgumentError("checksum must be a 32-byte SHA-256");
    }
    return std::nullopt;
  }
  if (wire_records > 0) {
    return absl::InvalidArgumentError(
        "batch has both records and compressed_data; send one or the other");
  }
  ASSIGN_OR_RETURN(Compression codec, ParseCompression(compression));
  if (declared_size < 0) {
    return absl::InvalidArgumentError("original_size must not be negative");
  }
  if (static_cast<size_t>(declared_size) > limits.max_decompressed_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "declared original_size ", declared_size, " exceeds the limit of ",
        limits.max_decompressed_bytes, " bytes"));
  }
  size_t limit = declared_size > 0 ? static_cast<size_t>(declared_size)
                                   : limits.max_decompressed_bytes;
  absl::StatusOr<std::string> raw = Decompress(codec, compressed, limit);
  if (!raw.ok()) {
    if (absl::IsResourceExhausted(raw.status()) && declared_size > 0) {
      return absl::InvalidArgumentError(
          "compressed_data expands beyond its declared original_size");
    }
    return raw.status();
  }
  if (declared_size > 0 && raw->size() != static_cast<size_t>(declared_size)) {
    return absl::InvalidArgumentError(
        absl::StrCat("original_size says ", declared_size, " bytes, data has ",
                     raw->size()));
  }
  if (!metadata.checksum().empty() && metadata.checksum() != Sha256(*raw)) {
    return absl::InvalidArgumentError(
        "checksum does not match the uncompressed batch");
  }
  return *std::move(raw);
}

// Inflate for a generated batch message (MetricsBatch, LogsBatch or
// EventsBatch).
template <typename Batch>
absl::StatusOr<std::optional<std::string>> Inflate(
    const Batch& wire, const v1::SyncMetadata& metadata, int declared_size,
    int wire_records, const DecodeLimits& limits) {
  return Inflate(wire.compression(), wire.compressed_data(), metadata,
                 declared_size, wire_records, limits);
}

// Inflate, then the generated parser (logs and events). Sets `*payload_bytes`
// to the decompressed size when there was compression (0 otherwise).
template <typename Batch>
absl::StatusOr<Batch> Unpack(const Batch& wire,
                             const v1::SyncMetadata& metadata,
                             int declared_size, int wire_records,
                             const DecodeLimits& limits,
                             size_t* payload_bytes) {
  *payload_bytes = 0;
  ASSIGN_OR_RETURN(
      std::optional<std::string> raw,
      Inflate(wire, metadata, declared_size, wire_records, limits));
  if (!raw.has_value()) return wire;
  *payload_bytes = raw->size();
  Batch inner;
  if (!inner.ParseFromString(*raw)) {
    return absl::InvalidArgumentError(
        "compressed_data is not a valid serialized batch");
  }
  if (!inner.compressed_data().empty()) {
    return absl::InvalidArgumentError("nested compressed_data is not allowed");
  }
  return inner;
}

absl::Status CheckEnvelope(const v1::SyncMetadata& metadata, int records,
                           const DecodeLimits& limits) {
  if (records > limits.max_records) {
    return absl::ResourceExhaustedError(
        absl::StrCat("batch of ", records, " records exceeds the limit of ",
                     limits.max_records));
  }
  if (metadata.record_count() != 0 && metadata.record_count() != records) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata.record_count says ", metadata.record_count(),
                     ", batch has ", records));
  }
  return absl::OkStatus();
}

DecodedBatch NewBatch(DataKind kind, const v1::SyncMetadata& metadata,
                      const DeviceIdentity& device) {
  DecodedBatch b;
  b.device = device;
  b.kind = kind;
  b.stream = metadata.stream().empty() ? std::string(DataKindName(kind))
                                       : metadata.stream();
  b.sequence_number = metadata.sequence_number();
  return b;
}

}  // namespace

namespace {

// What may appear in names: bit 0 anywhere in a metric name ([a-zA-Z_:]), bit
// 1 anywhere in a label name ([a-zA-Z_]), bit 2 after the first character
// ([0-9]).
constexpr uint8_t kMetricChar = 1;
constexpr uint8_t kLabelChar = 2;
constexpr uint8_t kDigit = 4;

struct NameChars {
  uint8_t bits[256] = {};
  constexpr NameChars() {
    for (int c = 'a'; c <= 'z'; ++c) bits[c] = kMetricChar | kLabelChar;
    for (int c = 'A'; c <= 'Z'; ++c) bits[c] = kMetricChar | kLabelChar;
    for (int c = '0'; c <= '9'; ++c) bits[c] = kDigit;
    bits[static_cast<int>('_')] = kMetricChar | kLabelChar;
    bits[static_cast<int>(':')] = kMetricChar;
  }
};
constexpr NameChars kNameChars;

// Whether `name` is not empty, starts with a `first` character and goes on
// with `first` characters or digits.
bool IsName(absl::string_view name, uint8_t first) {
  if (name.empty()) return false;
  const auto bits = [](char c) {
    return kNameChars.bits[static_cast<unsigned char>(c)];
  };
  if ((bits(name[0]) & first) == 0) return false;
  const uint8_t rest = first | kDigit;
  for (size_t i = 1; i < name.size(); ++i) {
    if ((bits(name[i]) & rest) == 0) return false;
  }
  return true;
}

}  // namespace

bool IsValidMetricName(absl::string_view name) {
  return IsName(name, kMetricChar);
}

bool IsValidLabelName(absl::string_view name) {
  if (name.size() >= 2 && name[0] == '_' && name[1] == '_') {
    return false;  // reserved
  }
  return IsName(name, kLabelChar);
}

absl::Status CheckMetadataIdentity(const v1::SyncMetadata& metadata,
                                   const DeviceIdentity& device) {
  if (!metadata.device_id().empty() &&
      metadata.device_id() != device.device_id) {
    return absl::PermissionDeniedError(
        "metadata.device_id names another device than the API key's");
  }
  if (!metadata.org_id().empty() && metadata.org_id() != device.org_id) {
    return absl::PermissionDeniedError(
        "metadata.org_id names another org than the API key's");
  }
  if (metadata.stream().size() > 64 ||
      (!metadata.stream().empty() && !IsValidLabelName(metadata.stream()))) {
    return absl::InvalidArgumentError(
        "metadata.stream must be a short identifier");
  }
  return absl::OkStatus();
}

namespace {

// CheckLabels for the series of sample `i` of a flat batch (for all its
// samples: they share their labels).
absl::Status CheckSeriesLabels(MetricSamples* samples, int i,
                               const DeviceIdentity& device,
                               const DecodeLimits& limits, const Where& what) {
  const int count = samples->label_count(i);
  if (count > limits.max_labels) {
    return absl::InvalidArgumentError(
        absl::StrCat(what.str(), ": ", count, " labels, over the limit of ",
                     limits.max_labels));
  }
  bool has_dev = false;
  bool has_org = false;
  for (int j = 0; j < count; ++j) {
    const LabelView l = samples->label(i, j);
    if (!IsValidLabelName(l.name) || l.name.size() > limits.max_name_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          what.str(), ": invalid label name \"", absl::CEscape(l.name), "\""));
    }
    if (l.value.size() > limits.max_label_value_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(what.str(), ": label ", l.name, " value of ",
                       l.value.size(), " bytes is too long"));
    }
    if (l.name == "device_id") {
      if (l.value != device.device_id) {
        return absl::PermissionDeniedError(absl::StrCat(
            what.str(),
            ": label device_id names another device than the API key's"));
      }
      has_dev = true;
    } else if (l.name == "org_id") {
      if (l.value != device.org_id) {
        return absl::PermissionDeniedError(absl::StrCat(
            what.str(), ": label org_id names another org than the API key's"));
      }
      has_org = true;
    }
  }
  if (has_dev) samples->EraseSeriesLabel(samples->series(i), "device_id");
  if (has_org) samples->EraseSeriesLabel(samples->series(i), "org_id");
  return absl::OkStatus();
}

// Reads decompressed metrics (MetricSamples::Parse), naming a failure as the
// batch's.
absl::StatusOr<MetricSamples> ParseSamples(std::string raw,
                                           const DecodeLimits& limits) {
  // Straight from the bytes, no message objects (see metric_samples.h). A
  // sample with far more label entries than allowed is refused while
  // reading, before any work on its labels.
  absl::StatusOr<MetricSamples> parsed =
      MetricSamples::Parse(std::move(raw), limits.max_labels);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("compressed_data is not a valid serialized batch: ",
                     parsed.status().message()));
  }
  return parsed;
}

// The checks every metrics batch passes once its samples are read, and the
// DecodedBatch they make.
absl::StatusOr<DecodedBatch> FinishMetrics(const v1::SyncMetadata& md,
                                           MetricSamples samples,
                                           const DeviceIdentity& device,
                                           const DecodeLimits& limits,
                                           absl::Time now) {
  RETURN_IF_ERROR(CheckEnvelope(md, samples.size(), limits));
  const int64_t now_nanos = absl::ToUnixNanos(now);
  // Names and labels are checked at the first sample of each series (series
  // are numbered in order of their first sample): the later ones share them.
  // The checks run in the same order as if every sample were checked, so an
  // error names the same sample and says the same.
  int series_checked = 0;
  for (int i = 0; i < samples.size(); ++i) {
    const Where what{"metric", i};
    const bool first = samples.series(i) == series_checked;
    const absl::string_view name = samples.name(i);
    if (first &&
        (!IsValidMetricName(name) || name.size() > limits.max_name_bytes)) {
      return absl::InvalidArgumentError(absl::StrCat(
          what.str(), ": invalid metric name \"", absl::CEscape(name), "\""));
    }
    if (!std::isfinite(samples.value(i))) {
      return absl::InvalidArgumentError(
          absl::StrCat(what.str(), ": value is not finite"));
    }
    if (samples.has_timestamp(i)) {
      RETURN_IF_ERROR(CheckTimestamp(samples.timestamp_seconds(i),
                                     samples.timestamp_nanos(i), what));
    } else {
      samples.SetTimestamp(i, now_nanos / 1'000'000'000,
                           static_cast<int32_t>(now_nanos % 1'000'000'000));
    }
    if (first) {
      RETURN_IF_ERROR(CheckSeriesLabels(&samples, i, device, limits, what));
      ++series_checked;
    }
  }
  DecodedBatch out = NewBatch(DataKind::kMetrics, md, device);
  out.payload_bytes = samples.wire_bytes();
  out.metrics = std::move(samples);
  return out;
}

absl::StatusOr<DecodedBatch> DecodeMetricsContent(
    const v1::SyncMetricsRequest& request, const DeviceIdentity& device,
    const DecodeLimits& limits, absl::Time now) {
  const v1::SyncMetadata& md = request.metadata();
  RETURN_IF_ERROR(CheckMetadataIdentity(md, device));
  ASSIGN_OR_RETURN(std::optional<std::string> raw,
                   Inflate(request.batch(), md, request.batch().original_size(),
                           request.batch().metrics_size(), limits));
  MetricSamples samples;
  if (raw.has_value()) {
    ASSIGN_OR_RETURN(samples, ParseSamples(*std::move(raw), limits));
  } else {
    samples = MetricSamples::FromProto(request.batch());
  }
  return FinishMetrics(md, std::move(samples), device, limits, now);
}

absl::StatusOr<DecodedBatch> DecodeMetricsWireContent(
    absl::string_view request, const DeviceIdentity& device,
    const DecodeLimits& limits, absl::Time now) {
  ASSIGN_OR_RETURN(MetricsRequestWire wire, MetricsRequestWire::Split(request));
  // First whatever the generated parser would refuse, so that such bytes are
  // refused as a request that does not parse, before the identity is looked
  // at (as in the message path, where they never reach DecodeMetrics).
  MetricSamples samples;
  if (wire.compressed_size == 0) {
    absl::StatusOr<MetricSamples> parsed =
        MetricSamples::Parse(std::move(wire.batch), limits.max_labels);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "malformed SyncMetricsRequest: batch: ", parsed.status().message()));
    }
    samples = *std::move(parsed);
  } else if (wire.records > 0) {
    // Records beside compressed_data: refused below unless the identity
    // is refused first; only whether the records parse is asked here (a
    // hostile request, so the generated parser's cost does not matter).
    v1::MetricsBatch records;
    if (!records.ParseFromString(wire.batch)) {
      return absl::InvalidArgumentError(
          "malformed SyncMetricsRequest: batch is not a valid MetricsBatch");
    }
  }
  const v1::SyncMetadata& md = wire.metadata;
  RETURN_IF_ERROR(CheckMetadataIdentity(md, device));
  ASSIGN_OR_RETURN(std::optional<std::string> raw,
                   Inflate(wire.compression, wire.compressed_data(), md,
                           wire.original_size, wire.records, limits));
  if (raw.has_value()) {
    ASSIGN_OR_RETURN(samples, ParseSamples(*std::move(raw), limits));
  }
  return FinishMetrics(md, std::move(samples), device, limits, now);
}

absl::StatusOr<DecodedBatch> DecodeLogsContent(
    const v1::SyncLogsRequest& request, const DeviceIdentity& device,
    const DecodeLimits& limits, absl::Time now) {
  const v1::SyncMetadata& md = request.metadata();
  RETURN_IF_ERROR(CheckMetadataIdentity(md, device));
  size_t payload_bytes = 0;
  ASSIGN_OR_RETURN(v1::LogsBatch batch,
                   Unpack(request.batch(), md, request.batch().original_size(),
                          request.batch().logs_size(), limits, &payload_bytes));
  RETURN_IF_ERROR(CheckEnvelope(md, batch.logs_size(), limits));
  for (int i = 0; i < batch.logs_size(); ++i) {
    v1::LogEntry* e = batch.mutable_logs(i);
    const Where what{"log", i};
    std::string level = absl::AsciiStrToLower(e->level());
    if (level.empty()) level = "info";
    if (level == "warning") level = "warn";
    if (level != "debug" && level != "info" && level != "warn" &&
        level != "error" && level != "fatal" && level != "trace") {
      return absl::InvalidArgumentError(absl::StrCat(
          what.str(), ": unknown level \"", absl::CEscape(e->level()), "\""));
    }
    e->set_level(level);
    if (e->message().size() > limits.max_log_message_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(what.str(), ": message too long"));
    }
    if (e->source().size() > limits.max_source_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(what.str(), ": source too long"));
    }
    if (e->has_timestamp()) {
      RETURN_IF_ERROR(CheckTimestamp(e->timestamp(), what));
    } else {
      SetTimestamp(e->mutable_timestamp(), now);
    }
    RETURN_IF_ERROR(CheckLabels(e->mutable_fields(), device, limits, what));
  }
  DecodedBatch out = NewBatch(DataKind::kLogs, md, device);
  batch.clear_compression();
  batch.clear_original_size();
  out.logs = std::move(batch);
  out.payload_bytes = payload_bytes;
  return out;
}

absl::StatusOr<DecodedBatch> DecodeEventsContent(
    const v1::SyncEventsRequest& request, const DeviceIdentity& device,
    const DecodeLimits& limits, absl::Time now) {
  const v1::SyncMetadata& md = request.metadata();
  RETURN_IF_ERROR(CheckMetadataIdentity(md, device));
  size_t payload_bytes = 0;
  ASSIGN_OR_RETURN(
      v1::EventsBatch batch,
      Unpack(request.batch(), md, request.batch().original_size(),
             request.batch().events_size(), limits, &payload_bytes));
  RETURN_IF_ERROR(CheckEnvelope(md, batch.events_size(), limits));
  for (int i = 0; i < batch.events_size(); ++i) {
    v1::Event* e = batch.mutable_events(i);
    const Where what{"event", i};
    if (!IsValidMetricName(e->name()) ||
        e->name().size() > limits.max_name_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(what.str(), ": invalid event name \"",
                       absl::CEscape(e->name()), "\""));
    }
    if (e->event_id().size() > limits.max_name_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(what.str(), ": event_id too long"));
    }
    if (e->has_timestamp()) {
      RETURN_IF_ERROR(CheckTimestamp(e->timestamp(), what));
    } else {
      SetTimestamp(e->mutable_timestamp(), now);
    }
    RETURN_IF_ERROR(CheckLabels(e->mutable_properties(), device, limits, what));
    if (e->values_size() > limits.max_labels) {
      return absl::InvalidArgumentError(
          absl::StrCat(what.str(), ": too many values"));
    }
    for (const auto& [name, value] : e->values()) {
      if (!IsValidLabelName(name)) {
        return absl::InvalidArgumentError(absl::StrCat(
            what.str(), ": invalid value name \"", absl::CEscape(name), "\""));
      }
      if (!std::isfinite(value)) {
        return absl::InvalidArgumentError(
            absl::StrCat(what.str(), ": value ", name, " is not finite"));
      }
    }
  }
  DecodedBatch out = NewBatch(DataKind::kEvents, md, device);
  batch.clear_compression();
  batch.clear_original_size();
  out.events = std::move(batch);
  out.payload_bytes = payload_bytes;
  return out;
}

}  // namespace

absl::Status BatchVerdict(absl::Status status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
      return status;
    case absl::StatusCode::kResourceExhausted:
      // A size limit of this batch: the same bytes can never pass, so it is
      // not the retryable "overloaded" RESOURCE_EXHAUSTED.
      return MarkBatchRejected(absl::InvalidArgumentError(status.message()));
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kDataLoss:
      return MarkBatchRejected(std::move(status));
    default:
      // INTERNAL, UNKNOWN, ...: a fault of ours, not of the batch.
      return status;
  }
}

absl::StatusOr<DecodedBatch> DecodeMetrics(
    const v1::SyncMetricsRequest& request, const DeviceIdentity& device,
    const DecodeLimits& limits, absl::Time now) {
  absl::StatusOr<DecodedBatch> b =
      DecodeMetricsContent(request, device, limits, now);
  if (!b.ok()) return BatchVerdict(b.status());
  return b;
}

absl::StatusOr<DecodedBatch> DecodeMetricsWire(absl::string_view request,
                                               const DeviceIdentity& device,
                                               const DecodeLimits& limits,
                                               absl::Time now) {
  absl::StatusOr<DecodedBatch> b =
      DecodeMetricsWireContent(request, device, limits, now);
  if (!b.ok()) return BatchVerdict(b.status());
  return b;
}

absl::StatusOr<DecodedBatch> DecodeLogs(const v1::SyncLogsRequest& request,
                                        const DeviceIdentity& device,
                                        const DecodeLimits& limits,
                                        absl::Time now) {
  absl::StatusOr<DecodedBatch> b =
      DecodeLogsContent(request, device, limits, now);
  if (!b.ok()) return BatchVerdict(b.status());
  return b;
}

absl::StatusOr<DecodedBatch> DecodeEvents(const v1::SyncEventsRequest& request,
                                          const DeviceIdentity& device,
                                          const DecodeLimits& limits,
                                          absl::Time now) {
  absl::StatusOr<DecodedBatch> b =
      DecodeEventsContent(request, device, limits, now);
  if (!b.ok()) return BatchVerdict(b.status());
  return b;
}

}  // namespace fleetd::server
