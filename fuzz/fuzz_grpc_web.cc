// gRPC-Web: grpc-web-text (base64) bodies, binary framing with compressed
// and trailer frames, the grpc-timeout header, and the percent-encoded
// grpc-message of the trailers the server writes.
//
// Input: a selector byte, then what the selected parser takes (cases below).
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/codec/codec.h"
#include "fleetd/v1/sync.pb.h"
#include "fuzz/fuzz_input.h"
#include "server/rpc/connect/connect_protocol.h"

namespace {

namespace connect = ::fleetd::server::rpc::connect;
using ::fleetd::fuzz::FuzzInput;

constexpr size_t kMaxPayload = 64 * 1024;

// What the front end does with a request body: frames, each payload
// decompressed (flag 0x01) within the limit and parsed as a request.
void Frames(absl::string_view body) {
  auto envelopes = connect::ParseEnvelopes(body, kMaxPayload);
  if (!envelopes.ok()) return;
  for (const connect::Envelope& e : *envelopes) {
    std::string payload = e.payload;
    if (e.flags & connect::kFlagCompressed) {
      auto raw =
          fleetd::Decompress(fleetd::Compression::kGzip, payload, kMaxPayload);
      if (!raw.ok()) continue;
      FUZZ_CHECK(raw->size() <= kMaxPayload);
      payload = *std::move(raw);
    }
    if (e.flags & connect::kFlagGrpcTrailers) continue;
    fleetd::v1::SyncLogsRequest request;
    (void)connect::DecodeMessage(connect::Codec::kProto, payload, &request);
  }
}

void Text(absl::string_view body) {
  auto decoded = connect::DecodeGrpcWebText(body);
  if (!decoded.ok()) return;
  // What a client would have sent for these bytes decodes to them again.
  auto again = connect::DecodeGrpcWebText(absl::Base64Escape(*decoded));
  FUZZ_CHECK(again.ok() && *again == *decoded);
  Frames(*decoded);
}

int Hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// grpc-message: printable ASCII only (no header injection), and a client's
// percent-decoding gives back the message.
void Message(uint8_t code, absl::string_view message) {
  std::string encoded = connect::PercentEncodeGrpcMessage(message);
  std::string decoded;
  for (size_t i = 0; i < encoded.size(); ++i) {
    char c = encoded[i];
    FUZZ_CHECK(c >= 0x20 && c <= 0x7e);
    if (c == '%') {
      FUZZ_CHECK(i + 2 < encoded.size());
      int hi = Hex(encoded[i + 1]), lo = Hex(encoded[i + 2]);
      FUZZ_CHECK(hi >= 0 && lo >= 0);
      decoded.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else {
      decoded.push_back(c);
    }
  }
  FUZZ_CHECK(decoded == message);
  absl::Status status(static_cast<absl::StatusCode>(1 + code % 16), message);
  std::string trailers = connect::GrpcWebTrailers(status, {});
  // One "key: value" line per field: the message cannot start a new one.
  size_t lines = 0;
  for (absl::string_view line : absl::StrSplit(trailers, "\r\n")) {
    if (line.empty()) continue;
    ++lines;
    FUZZ_CHECK(line.find('\n') == absl::string_view::npos);
    FUZZ_CHECK(line.find('\r') == absl::string_view::npos);
  }
  FUZZ_CHECK(lines == (message.empty() ? 1u : 2u));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzInput in(data, size);
  switch (in.Byte()) {
    case 't':  // t<grpc-web-text body>
      Text(in.Rest());
      break;
    case 'b':  // b<binary grpc-web body>
      Frames(in.Rest());
      break;
    case 'o': {  // o<grpc-timeout value>
      auto d = connect::ParseGrpcTimeout(in.Rest());
      if (d.ok()) FUZZ_CHECK(*d >= absl::ZeroDuration());
      break;
    }
    case 'm': {  // m<code byte><status message>
      uint8_t code = in.Byte();
      Message(code, in.Rest());
      break;
    }
    default:
      break;
  }
  return 0;
}
