// Connect protocol (unary and streaming): envelope framing, the request
// headers the server parses (Content-Type, Content-Encoding, Accept-Encoding,
// Connect-Timeout-Ms), the GET query message and the proto/JSON request body.
//
// Input: a selector byte, then the fields the selected parser takes (see
// fuzz_input.h and the cases below).
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "fleetd/v1/sync.pb.h"
#include "fuzz/fuzz_input.h"
#include "nlohmann/json.hpp"
#include "server/rpc/connect/connect_protocol.h"

namespace {

namespace connect = ::fleetd::server::rpc::connect;
using ::fleetd::fuzz::FuzzInput;

constexpr size_t kMaxPayload = 64 * 1024;

// A framed body parses into envelopes that frame back to the same bytes.
void Envelopes(absl::string_view body) {
  auto envelopes = connect::ParseEnvelopes(body, kMaxPayload);
  if (!envelopes.ok()) return;
  std::string again;
  for (const connect::Envelope& e : *envelopes) {
    FUZZ_CHECK(e.payload.size() <= kMaxPayload);
    connect::AppendEnvelope(e.flags, e.payload, &again);
  }
  FUZZ_CHECK(again == body);
}

void Headers(FuzzInput& in) {
  absl::string_view content_type = in.Line();
  absl::string_view content_encoding = in.Line();
  absl::string_view accept_encoding = in.Line();
  absl::string_view timeout = in.Rest();
  if (auto ct = connect::ClassifyContentType(content_type)) {
    // What the server answers with is a type it would accept itself.
    auto again = connect::ClassifyContentType(ct->response_type);
    FUZZ_CHECK(again.has_value());
    FUZZ_CHECK(again->codec == ct->codec);
  }
  auto coding = connect::ParseContentCoding(content_encoding);
  fleetd::Compression request =
      coding.ok() ? *coding : fleetd::Compression::kNone;
  connect::NegotiateCompression(accept_encoding, request);
  connect::NegotiateCompression(std::nullopt, request);
  auto d = connect::ParseConnectTimeout(timeout);
  if (d.ok()) FUZZ_CHECK(*d >= absl::ZeroDuration());
}

// A request body the server accepted encodes and decodes again.
void Message(connect::Codec codec, absl::string_view bytes) {
  fleetd::v1::SyncMetricsRequest request;
  if (!connect::DecodeMessage(codec, bytes, &request).ok()) return;
  auto encoded = connect::EncodeMessage(codec, request);
  FUZZ_CHECK(encoded.ok());
  fleetd::v1::SyncMetricsRequest again;
  FUZZ_CHECK(connect::DecodeMessage(codec, *encoded, &again).ok());
}

// Error bodies carry messages that may quote what a device sent: whatever the
// bytes, the JSON is well-formed and keeps a valid UTF-8 message verbatim.
void ErrorBodies(uint8_t code, absl::string_view message) {
  absl::Status status(static_cast<absl::StatusCode>(1 + code % 16), message);
  for (const std::string& text :
       {connect::ErrorJson(status), connect::EndStreamJson(status, {})}) {
    nlohmann::json json = nlohmann::json::parse(text, nullptr, false);
    FUZZ_CHECK(!json.is_discarded());
    FUZZ_CHECK(json.is_object());
  }
  nlohmann::json error =
      nlohmann::json::parse(connect::ErrorJson(status), nullptr, false);
  FUZZ_CHECK(error["code"].get<std::string>() ==
             connect::CodeName(status.code()));
  // A message that is valid UTF-8 round-trips exactly (the serializer throws
  // on invalid UTF-8 with the default error handler; "replace" never does).
  std::string quoted =
      nlohmann::json(std::string(message))
          .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  nlohmann::json check = nlohmann::json::parse(quoted, nullptr, false);
  if (!message.empty() && check.get<std::string>() == message) {
    FUZZ_CHECK(error["message"].get<std::string>() == message);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzInput in(data, size);
  switch (in.Byte()) {
    case 'e':  // e<framed body>
      Envelopes(in.Rest());
      break;
    case 'h':  // h<content-type>\n<content-encoding>\n<accept-encoding>\n<ms>
      Headers(in);
      break;
    case 'g': {  // g<base64 flag: 0/1><message query value>
      bool base64 = in.Byte() == '1';
      (void)connect::DecodeGetMessage(in.Rest(), base64);
      break;
    }
    case 'j':  // j<JSON body>
      Message(connect::Codec::kJson, in.Rest());
      break;
    case 'p':  // p<binary proto body>
      Message(connect::Codec::kProto, in.Rest());
      break;
    case 'x': {  // x<code byte><message>
      uint8_t code = in.Byte();
      ErrorBodies(code, in.Rest());
      break;
    }
    default:
      break;
  }
  return 0;
}
