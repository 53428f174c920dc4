// The agent's local ingest endpoint (agent/collect/ingest_formats.h):
// Prometheus text exposition and JSON log lines, as any local process may
// POST them.
//
// Input: 'p' then Prometheus text, or 'j' then JSON lines.
#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/collect/ingest_formats.h"
#include "fuzz/fuzz_input.h"

namespace {

using ::fleetd::fuzz::FuzzInput;

const absl::Time kNow = absl::FromUnixSeconds(1'700'000'000);

size_t Lines(absl::string_view text) {
  size_t n = 1;
  for (char c : text) n += c == '\n';
  return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzInput in(data, size);
  uint8_t format = in.Byte();
  absl::string_view text = in.Rest();
  if (format == 'p') {
    auto metrics = fleetd::agent::ParsePrometheusText(text, kNow);
    if (metrics.ok()) {
      FUZZ_CHECK(metrics->size() <= Lines(text));
      for (const auto& m : *metrics) {
        FUZZ_CHECK(!m.name().empty());
        FUZZ_CHECK(m.has_timestamp());
      }
    } else {
      FUZZ_CHECK(absl::IsInvalidArgument(metrics.status()));
    }
  } else if (format == 'j') {
    auto logs = fleetd::agent::ParseJsonLogLines(text, kNow);
    if (logs.ok()) {
      FUZZ_CHECK(logs->size() <= Lines(text));
      for (const auto& l : *logs) {
        FUZZ_CHECK(l.level() == "debug" || l.level() == "info" ||
                   l.level() == "warn" || l.level() == "error" ||
                   l.level() == "fatal");
      }
    } else {
      FUZZ_CHECK(absl::IsInvalidArgument(logs.status()));
    }
  }
  return 0;
}
