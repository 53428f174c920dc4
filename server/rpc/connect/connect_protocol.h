// Wire-level pieces of the Connect protocol (connectrpc.com/docs/protocol) and
// of gRPC-Web, kept free of HTTP-server types so they can be tested alone.
#ifndef FLEETD_SERVER_RPC_CONNECT_CONNECT_PROTOCOL_H_
#define FLEETD_SERVER_RPC_CONNECT_CONNECT_PROTOCOL_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/codec/codec.h"
#include "google/protobuf/message.h"

namespace fleetd::server::rpc::connect {

// ---- Error model -----------------------------------------------------------

// The Connect name of a code: "canceled", "invalid_argument", ... ("unknown"
// for codes outside the canonical set).
absl::string_view CodeName(absl::StatusCode code);
// The HTTP status a unary Connect error with this code is sent with (the
// spec's table: invalid_argument 400, unauthenticated 401, ...).
int HttpStatusFor(absl::StatusCode code);

// Metadata sent with a response end (Connect end-of-stream "metadata", gRPC-Web
// trailers): lower-case keys, in order.
using Metadata = std::vector<std::pair<std::string, std::string>>;

// The Connect Error JSON: {"code":"...","message":"..."} (message left out
// when empty). Invalid UTF-8 in the message is replaced, never rejected.
std::string ErrorJson(const absl::Status& status);
// The Connect EndStreamResponse JSON: {} on success, else {"error":{...}};
// plus "metadata":{"key":["value"],...} when `metadata` is non-empty.
std::string EndStreamJson(const absl::Status& status, const Metadata& metadata);

// ---- Envelopes (Connect streaming and gRPC-Web) ----------------------------

inline constexpr uint8_t kFlagCompressed = 0x01;
inline constexpr uint8_t kFlagEndStream = 0x02;     // Connect
inline constexpr uint8_t kFlagGrpcTrailers = 0x80;  // gRPC-Web
inline constexpr size_t kEnvelopeHeaderBytes = 5;

struct Envelope {
  uint8_t flags = 0;
  std::string payload;
};

// Appends flags, the 4-byte big-endian length and `payload` to `out`.
void AppendEnvelope(uint8_t flags, absl::string_view payload, std::string* out);
// Splits a request body into envelopes. InvalidArgument when the body ends
// inside an envelope; ResourceExhausted when an envelope declares more than
// `max_payload_bytes`.
absl::StatusOr<std::vector<Envelope>> ParseEnvelopes(absl::string_view body,
                                                     size_t max_payload_bytes);

// ---- Content types ---------------------------------------------------------

enum class Codec { kProto, kJson };
enum class WireProtocol {
  kConnectUnary,   // application/proto, application/json
  kConnectStream,  // application/connect+proto, application/connect+json
  kGrpcWeb,        // application/grpc-web[+proto|+json]
  kGrpcWebText,    // application/grpc-web-text[+proto|+json], base64 body
};

struct ContentType {
  WireProtocol protocol;
  Codec codec;
  // What the response's Content-Type is.
  std::string response_type;
};

// Classifies a request Content-Type (case-insensitive, parameters such as
// "; charset=utf-8" ignored). nullopt for anything this server does not speak.
std::optional<ContentType> ClassifyContentType(absl::string_view header);
// The Accept-Post value listing what ClassifyContentType accepts.
absl::string_view SupportedContentTypes();

// ---- Compression -----------------------------------------------------------

// A Content-Coding name: "identity" or "" -> kNone, "gzip", "zstd". Anything
// else is Unimplemented, naming the supported codings (the spec's answer).
absl::StatusOr<Compression> ParseContentCoding(absl::string_view name);
// The coding a response uses: the first supported entry of the client's
// Accept-Encoding list (entries with q=0 skipped); when the client sent no
// Accept-Encoding, the coding of its request. kNone when nothing matches.
Compression NegotiateCompression(std::optional<absl::string_view> accept,
                                 Compression request_coding);
// What the server accepts, for Accept-Encoding-style response headers.
inline constexpr char kAcceptedCodings[] = "gzip, zstd";

// ---- Timeouts --------------------------------------------------------------

// Connect-Timeout-Ms: 1 to 10 ASCII digits. InvalidArgument otherwise.
absl::StatusOr<absl::Duration> ParseConnectTimeout(absl::string_view value);
// grpc-timeout: 1 to 8 digits and a unit (H, M, S, m, u, n). InvalidArgument
// otherwise.
absl::StatusOr<absl::Duration> ParseGrpcTimeout(absl::string_view value);

// ---- gRPC-Web --------------------------------------------------------------

// grpc-message encoding: bytes outside 0x20..0x7E and '%' become %XX.
std::string PercentEncodeGrpcMessage(absl::string_view message);
// The body of a gRPC-Web trailers frame: "grpc-status: N\r\n" then
// "grpc-message: ...\r\n" (when there is a message) and `metadata`.
std::string GrpcWebTrailers(const absl::Status& status,
                            const Metadata& metadata);
// Decodes a grpc-web-text body: concatenated base64 chunks, each possibly
// padded. InvalidArgument when it is not base64.
absl::StatusOr<std::string> DecodeGrpcWebText(absl::string_view body);

// ---- Messages --------------------------------------------------------------

// Parses `bytes` in `codec` into `message` (JSON: the protobuf JSON mapping,
// field names in either form, unknown fields ignored). InvalidArgument on
// malformed input. An empty proto body is the empty message; an empty JSON
// body is invalid.
absl::Status DecodeMessage(Codec codec, absl::string_view bytes,
                           google::protobuf::Message* message);
// Serializes `message` (JSON: lowerCamelCase names).
absl::StatusOr<std::string> EncodeMessage(
    Codec codec, const google::protobuf::Message& message);

// Decodes the `message` query value of a Connect GET: base64 (URL-safe or
// standard, padding optional) when `base64`, else the (already
// percent-decoded) text itself.
absl::StatusOr<std::string> DecodeGetMessage(absl::string_view message,
                                             bool base64);

}  // namespace fleetd::server::rpc::connect

#endif  // FLEETD_SERVER_RPC_CONNECT_CONNECT_PROTOCOL_H_
