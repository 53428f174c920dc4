// What the front door's unary calls (sync_service_handler.cc) and its
// StreamSync calls (stream_call.h) share: the protocol a request speaks, read
// from its content-type, and the response pieces every call form uses.
#ifndef FLEETD_SERVER_RPC_DOOR_WIRE_H_
#define FLEETD_SERVER_RPC_DOOR_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/codec/codec.h"
#include "server/rpc/connect/connect_protocol.h"
#include "server/rpc/http/exchange.h"

namespace fleetd::server::rpc::door {

// The wire protocol of a request, from its content-type (GET: Connect).
enum class Wire {
  kGrpc,
  kGrpcWeb,
  kGrpcWebText,
  kConnectUnary,
  kConnectStream
};

struct Protocol {
  Wire wire = Wire::kConnectUnary;
  connect::Codec codec = connect::Codec::kProto;
  std::string response_type;  // the response's content-type
};

// application/grpc[+proto] is gRPC; the rest as connect::ClassifyContentType
// says. nullopt for anything else.
std::optional<Protocol> ClassifyRequest(absl::string_view content_type);

// "grpc", "grpc-web" or "connect": CallContext::protocol and metric labels.
const char* Label(Wire wire);

// The most request body a call of `wire` may carry (gRPC frames as gRPC-Web
// does).
size_t WireBodyLimit(Wire wire, int64_t max_message_bytes);

// grpc-accept-encoding of every gRPC and gRPC-Web response.
inline constexpr char kGrpcAcceptEncoding[] = "gzip,zstd";

// The gRPC status of `status` as header fields: grpc-status, grpc-message
// (percent-encoded; left out when empty), then its retry hint and verdict
// (RetryMetadata). For trailers, or a trailers-only response's headers.
http::Headers GrpcStatusFields(const absl::Status& status);

// A gRPC trailers-only response: 200 with `content_type`, the status fields
// (GrpcStatusFields) and grpc-accept-encoding in one header block that ends
// the stream.
void SendGrpcTrailersOnly(http::Exchange& exchange,
                          absl::string_view content_type,
                          const absl::Status& status);

// The gRPC-Web trailers frame (flag 0x80) of `status`, with its retry hint
// and verdict.
std::string GrpcWebTrailersFrame(const absl::Status& status);

// The Connect end-of-stream message (flag 0x02) of `status`, with its retry
// hint and verdict as metadata.
std::string ConnectEndStreamFrame(const absl::Status& status);

// Response messages smaller than this go uncompressed (compressing them
// costs more than it saves).
inline constexpr size_t kCompressMinBytes = 1024;

// The coding of a call's response messages. Connect unary and streaming: the
// first coding of the client's accept list (Accept-Encoding,
// Connect-Accept-Encoding) we support, else its request's coding; gRPC and
// gRPC-Web: only a coding the client listed in grpc-accept-encoding.
Compression ResponseCoding(Wire wire, const http::Headers& request_headers,
                           Compression request_coding);

// Appends one message envelope to `out`: compressed with `coding` (flag 0x01)
// when it is at least kCompressMinBytes, as it is otherwise.
void AppendMessage(Compression coding, absl::string_view message,
                   std::string* out);

// A response whose whole body is known: content-length set.
void SendWhole(http::Exchange& exchange, int status, http::Headers headers,
               std::string body);

}  // namespace fleetd::server::rpc::door

#endif  // FLEETD_SERVER_RPC_DOOR_WIRE_H_
