#include "server/rpc/door/wire.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "server/rpc/connect/procedures.h"

namespace fleetd::server::rpc::door {

std::optional<Protocol> ClassifyRequest(absl::string_view content_type) {
  std::string type = absl::AsciiStrToLower(absl::StripAsciiWhitespace(
      content_type.substr(0, content_type.find(';'))));
  if (type == "application/grpc" || type == "application/grpc+proto") {
    return Protocol{Wire::kGrpc, connect::Codec::kProto, type};
  }
  std::optional<connect::ContentType> connect_type =
      connect::ClassifyContentType(content_type);
  if (!connect_type.has_value()) return std::nullopt;
  Protocol protocol{Wire::kConnectUnary, connect_type->codec,
                    std::move(connect_type->response_type)};
  switch (connect_type->protocol) {
    case connect::WireProtocol::kConnectUnary:
      break;
    case connect::WireProtocol::kConnectStream:
      protocol.wire = Wire::kConnectStream;
      break;
    case connect::WireProtocol::kGrpcWeb:
      protocol.wire = Wire::kGrpcWeb;
      break;
    case connect::WireProtocol::kGrpcWebText:
      protocol.wire = Wire::kGrpcWebText;
      break;
  }
  return protocol;
}

const char* Label(Wire wire) {
  switch (wire) {
    case Wire::kGrpc:
      return "grpc";
    case Wire::kGrpcWeb:
    case Wire::kGrpcWebText:
      return "grpc-web";
    case Wire::kConnectUnary:
    case Wire::kConnectStream:
      return "connect";
  }
  return "unknown";
}

size_t WireBodyLimit(Wire wire, int64_t max_message_bytes) {
  switch (wire) {
    case Wire::kGrpc:
    case Wire::kGrpcWeb:
      return BodyLimit(connect::WireProtocol::kGrpcWeb, max_message_bytes);
    case Wire::kGrpcWebText:
      return BodyLimit(connect::WireProtocol::kGrpcWebText, max_message_bytes);
    case Wire::kConnectUnary:
      return BodyLimit(connect::WireProtocol::kConnectUnary, max_message_bytes);
    case Wire::kConnectStream:
      return BodyLimit(connect::WireProtocol::kConnectStream,
                       max_message_bytes);
  }
  return static_cast<size_t>(max_message_bytes);
}

http::Headers GrpcStatusFields(const absl::Status& status) {
  http::Headers fields = {
      {"grpc-status", absl::StrCat(static_cast<int>(status.code()))}};
  if (!status.message().empty()) {
    fields.push_back(
        {"grpc-message", connect::PercentEncodeGrpcMessage(status.message())});
  }
  for (auto& [name, value] : RetryMetadata(status)) {
    fields.push_back({std::move(name), std::move(value)});
  }
  return fields;
}

std::string GrpcWebTrailersFrame(const absl::Status& status) {
  std::string frame;
  connect::AppendEnvelope(
      connect::kFlagGrpcTrailers,
      connect::GrpcWebTrailers(status, RetryMetadata(status)), &frame);
  return frame;
}

Compression ResponseCoding(Wire wire, const http::Headers& request_headers,
                           Compression request_coding) {
  switch (wire) {
    case Wire::kConnectUnary:
      return connect::NegotiateCompression(
          http::FindHeader(request_headers, "accept-encoding"), request_coding);
    case Wire::kConnectStream:
      return connect::NegotiateCompression(
          http::FindHeader(request_headers, "connect-accept-encoding"),
          request_coding);
    case Wire::kGrpc:
    case Wire::kGrpcWeb:
    case Wire::kGrpcWebText:
      if (std::optional<absl::string_view> accept =
              http::FindHeader(request_headers, "grpc-accept-encoding")) {
        return connect::NegotiateCompression(accept, Compression::kNone);
      }
      return Compression::kNone;
  }
  return Compression::kNone;
}

void AppendMessage(Compression coding, absl::string_view message,
                   std::string* out) {
  if (coding != Compression::kNone && message.size() >= kCompressMinBytes) {
    absl::StatusOr<std::string> compressed = Compress(coding, message);
    if (compressed.ok()) {
      connect::AppendEnvelope(connect::kFlagCompressed, *compressed, out);
      return;
    }
  }
  connect::AppendEnvelope(0, message, out);
}

std::string ConnectEndStreamFrame(const absl::Status& status) {
  std::string frame;
  connect::AppendEnvelope(connect::kFlagEndStream,
                          connect::EndStreamJson(status, RetryMetadata(status)),
                          &frame);
  return frame;
}

void SendGrpcTrailersOnly(http::Exchange& exchange,
                          absl::string_view content_type,
                          const absl::Status& status) {
  http::Headers headers = {{"content-type", std::string(content_type)}};
  for (http::Header& field : GrpcStatusFields(status)) {
    headers.push_back(std::move(field));
  }
  headers.push_back({"grpc-accept-encoding", kGrpcAcceptEncoding});
  exchange.SendHeaders(200, std::move(headers), true);
}

void SendWhole(http::Exchange& exchange, int status, http::Headers headers,
               std::string body) {
  headers.push_back({"content-length", absl::StrCat(body.size())});
  exchange.SendResponse(status, std::move(headers), std::move(body), {});
}

}  // namespace fleetd::server::rpc::door
