// Server request decoding and validation (server/core/decode.h): what every
// device batch passes through before a backend sees it, in-message
// compression, checksum and limits included.
//
// Metrics requests are also read straight from their bytes
// (DecodeMetricsWire, as the front door does) and compared with the message
// path.
//
// Input: a selector byte naming the request type, then the request:
//   m / l / e   SyncMetricsRequest / SyncLogsRequest / SyncEventsRequest in
//               the binary wire format,
//   M / L / E   the same in protobuf text format (readable seeds).
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "fleetd/v1/sync.pb.h"
#include "fuzz/fuzz_input.h"
#include "google/protobuf/text_format.h"
#include "server/core/decode.h"
#include "server/model/batch.h"

namespace {

using ::fleetd::fuzz::FuzzInput;
namespace server = ::fleetd::server;

const server::DeviceIdentity kDevice{"dev-1", "org-1", "key-1"};
const absl::Time kNow = absl::FromUnixSeconds(1'700'000'000);

// Small limits, so that the limit paths are reachable from small inputs.
server::DecodeLimits Limits() {
  server::DecodeLimits limits;
  limits.max_decompressed_bytes = 1 << 20;
  limits.max_records = 200;
  limits.max_labels = 8;
  limits.max_name_bytes = 64;
  limits.max_label_value_bytes = 256;
  limits.max_log_message_bytes = 4096;
  limits.max_source_bytes = 64;
  return limits;
}

bool Parse(bool text, absl::string_view bytes,
           google::protobuf::Message* message) {
  if (text) {
    google::protobuf::TextFormat::Parser parser;
    parser.AllowPartialMessage(true);
    return parser.ParseFromString(std::string(bytes), message);
  }
  return message->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
}

template <typename Request, typename DecodeFn>
void Run(bool text, absl::string_view bytes, DecodeFn decode) {
  Request request;
  if (!Parse(text, bytes, &request)) return;
  (void)server::CheckMetadataIdentity(request.metadata(), kDevice);
  absl::StatusOr<server::DecodedBatch> batch =
      decode(request, kDevice, Limits(), kNow);
  if (!batch.ok()) {
    absl::StatusCode code = batch.status().code();
    FUZZ_CHECK(code == absl::StatusCode::kInvalidArgument ||
               code == absl::StatusCode::kResourceExhausted ||
               code == absl::StatusCode::kPermissionDenied);
    return;
  }
  // A decoded batch is the key's device, within the limits, uncompressed,
  // and carries no identity label of the device's own making.
  FUZZ_CHECK(batch->device.device_id == kDevice.device_id);
  FUZZ_CHECK(batch->device.org_id == kDevice.org_id);
  FUZZ_CHECK(batch->record_count() <= Limits().max_records);
  FUZZ_CHECK(batch->logs.compressed_data().empty());
  FUZZ_CHECK(batch->events.compressed_data().empty());
  const server::MetricSamples& m = batch->metrics;
  for (int i = 0; i < m.size(); ++i) {
    FUZZ_CHECK(!m.FindLabel(i, "device_id").has_value());
    FUZZ_CHECK(!m.FindLabel(i, "org_id").has_value());
    FUZZ_CHECK(m.has_timestamp(i));
    FUZZ_CHECK(m.label_count(i) <= Limits().max_labels);
    for (int j = 1; j < m.label_count(i); ++j) {
      FUZZ_CHECK(m.label(i, j - 1).name < m.label(i, j).name);
    }
  }
}

// DecodeMetricsWire on `bytes` against parsing them into the message, then
// DecodeMetrics: bytes the generated parser refuses are refused as the
// batch's (INVALID_ARGUMENT); otherwise the two decide alike and decode the
// same samples, except that the wire form refuses a sample with more label
// entries on the wire than the limit (decode.h) before any other check of it.
void CompareWire(absl::string_view bytes) {
  fleetd::v1::SyncMetricsRequest request;
  const bool parsed =
      request.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
  absl::StatusOr<server::DecodedBatch> wire =
      server::DecodeMetricsWire(bytes, kDevice, Limits(), kNow);
  if (!parsed) {
    FUZZ_CHECK(absl::IsInvalidArgument(wire.status()));
    return;
  }
  absl::StatusOr<server::DecodedBatch> message =
      server::DecodeMetrics(request, kDevice, Limits(), kNow);
  if (wire.status().code() != message.status().code()) {
    FUZZ_CHECK(absl::IsInvalidArgument(wire.status()) &&
               absl::StrContains(wire.status().message(), "label"));
    return;
  }
  if (!wire.ok()) return;
  FUZZ_CHECK(wire->metrics == message->metrics);
  FUZZ_CHECK(wire->stream == message->stream);
  FUZZ_CHECK(wire->sequence_number == message->sequence_number);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzInput in(data, size);
  uint8_t kind = in.Byte();
  bool text = kind >= 'A' && kind <= 'Z';
  absl::string_view bytes = in.Rest();
  switch (kind | 0x20) {  // lower case
    case 'm':
      Run<fleetd::v1::SyncMetricsRequest>(text, bytes, server::DecodeMetrics);
      if (!text) {
        CompareWire(bytes);
      } else {
        fleetd::v1::SyncMetricsRequest request;
        if (Parse(true, bytes, &request)) {
          CompareWire(request.SerializePartialAsString());
        }
      }
      break;
    case 'l':
      Run<fleetd::v1::SyncLogsRequest>(text, bytes, server::DecodeLogs);
      break;
    case 'e':
      Run<fleetd::v1::SyncEventsRequest>(text, bytes, server::DecodeEvents);
      break;
    default:
      break;
  }
  return 0;
}
