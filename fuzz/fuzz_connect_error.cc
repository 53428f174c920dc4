// The agent's reading of server errors (agent/transport/connect_error.h): the
// Connect error body of a non-200 answer, from our server or from whatever
// proxy sits in the way, and the Retry-After header.
//
// Input: a selector byte, then
//   s<HTTP status>\n<Content-Type>\n<body>   StatusFromConnectError
//   r<Retry-After value>                     ParseRetryAfter
//   c<code name>                             ConnectCodeFromName
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/transport/connect_error.h"
#include "fuzz/fuzz_input.h"

namespace {

using ::fleetd::fuzz::FuzzInput;
namespace agent = ::fleetd::agent;

const absl::Time kNow = absl::FromUnixSeconds(1'700'000'000);

void ErrorAnswer(FuzzInput& in) {
  int http_status = 0;
  if (!absl::SimpleAtoi(in.Line(), &http_status)) http_status = 500;
  absl::string_view content_type = in.Line();
  absl::string_view body = in.Rest();
  absl::Status status =
      agent::StatusFromConnectError(http_status, content_type, body);
  // A failed answer is never success, whatever its body claims.
  FUZZ_CHECK(!status.ok());
  agent::CodeFromHttpStatus(http_status);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzInput in(data, size);
  switch (in.Byte()) {
    case 's':
      ErrorAnswer(in);
      break;
    case 'r': {
      std::optional<absl::Duration> d = agent::ParseRetryAfter(in.Rest(), kNow);
      if (d.has_value()) FUZZ_CHECK(*d >= absl::ZeroDuration());
      break;
    }
    case 'c': {
      absl::string_view name = in.Rest();
      std::optional<absl::StatusCode> code = agent::ConnectCodeFromName(name);
      if (code.has_value()) {
        FUZZ_CHECK(*code != absl::StatusCode::kOk);
        FUZZ_CHECK(agent::ConnectCodeName(*code) == name);
      }
      break;
    }
    default:
      break;
  }
  return 0;
}
