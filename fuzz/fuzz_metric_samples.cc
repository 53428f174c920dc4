// The server's flat MetricsBatch reader (server/model/metric_samples.h)
// against the generated protobuf parser, on the same bytes: whenever the
// generated parser refuses the input, so must ours; whenever it accepts it
// (and the batch is within the documented differences: no nested
// compressed_data, at most kMaxLabels label entries per sample), ours reads
// the same samples (samples sharing a series have equal names and labels),
// and its message form serializes to a batch that parses back to the same
// samples.
//
// Input: a serialized MetricsBatch (binary wire format), as it comes out of
// a device's in-message compression.
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "fleetd/v1/sync.pb.h"
#include "fuzz/fuzz_input.h"
#include "google/protobuf/stubs/logging.h"
#include "server/model/metric_samples.h"

namespace {

using ::fleetd::server::MetricSamples;

constexpr int kMaxLabels = 8;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static google::protobuf::LogSilencer* quiet =
      new google::protobuf::LogSilencer();  // the reference's UTF-8 errors
  (void)quiet;
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  fleetd::v1::MetricsBatch reference;
  const bool reference_ok = reference.ParseFromString(bytes);
  absl::StatusOr<MetricSamples> ours = MetricSamples::Parse(bytes, kMaxLabels);
  if (!reference_ok) {
    FUZZ_CHECK(!ours.ok());
    return 0;
  }
  if (!reference.compressed_data().empty()) {
    FUZZ_CHECK(!ours.ok());
    return 0;
  }
  if (!ours.ok()) {
    // The only other refusal: too many label entries on one sample. Without
    // the bound the same bytes must read, and some sample must have more
    // entries than the bound (at least as many distinct labels, or repeats).
    FUZZ_CHECK(absl::StrContains(ours.status().message(), "labels"));
    absl::StatusOr<MetricSamples> unbounded =
        MetricSamples::Parse(bytes, std::numeric_limits<int>::max());
    FUZZ_CHECK(unbounded.ok());
    FUZZ_CHECK(*unbounded == MetricSamples::FromProto(reference));
    return 0;
  }
  FUZZ_CHECK(*ours == MetricSamples::FromProto(reference));
  FUZZ_CHECK(ours->wire_bytes() == bytes.size());
  for (int i = 0; i < ours->size(); ++i) {
    for (int j = 1; j < ours->label_count(i); ++j) {
      FUZZ_CHECK(ours->label(i, j - 1).name < ours->label(i, j).name);
    }
  }
  // Series: numbered in order of first sample; samples of one series have
  // the same name and labels.
  std::vector<int> first;
  for (int i = 0; i < ours->size(); ++i) {
    const int id = ours->series(i);
    FUZZ_CHECK(id >= 0 && id <= static_cast<int>(first.size()));
    if (id == static_cast<int>(first.size())) {
      first.push_back(i);
      continue;
    }
    const int f = first[id];
    FUZZ_CHECK(ours->name(i) == ours->name(f));
    FUZZ_CHECK(ours->label_count(i) == ours->label_count(f));
    for (int j = 0; j < ours->label_count(i); ++j) {
      FUZZ_CHECK(ours->label(i, j).name == ours->label(f, j).name);
      FUZZ_CHECK(ours->label(i, j).value == ours->label(f, j).value);
    }
  }
  FUZZ_CHECK(static_cast<int>(first.size()) == ours->series_count());
  absl::StatusOr<MetricSamples> again =
      MetricSamples::Parse(ours->ToProto().SerializeAsString(), kMaxLabels);
  FUZZ_CHECK(again.ok() && *again == *ours);
  return 0;
}
