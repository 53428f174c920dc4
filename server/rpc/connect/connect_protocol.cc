#include "server/rpc/connect/connect_protocol.h"

#include <algorithm>
#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"

namespace fleetd::server::rpc::connect {
namespace {

using Json = nlohmann::json;

std::string Dump(const Json& json) {
  // Replace (not throw on) invalid UTF-8 coming from status messages.
  return json.dump(-1, ' ', false, Json::error_handler_t::replace);
}

Json ErrorObject(const absl::Status& status) {
  Json error = Json::object();
  error["code"] = std::string(CodeName(status.code()));
  if (!status.message().empty()) {
    error["message"] = std::string(status.message());
  }
  return error;
}

bool AllDigits(absl::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(),
                                   [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

absl::string_view CodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kCancelled:
      return "canceled";
    case absl::StatusCode::kInvalidArgument:
      return "invalid_argument";
    case absl::StatusCode::kDeadlineExceeded:
      return "deadline_exceeded";
    case absl::StatusCode::kNotFound:
      return "not_found";
    case absl::StatusCode::kAlreadyExists:
      return "already_exists";
    case absl::StatusCode::kPermissionDenied:
      return "permission_denied";
    case absl::StatusCode::kResourceExhausted:
      return "resource_exhausted";
    case absl::StatusCode::kFailedPrecondition:
      return "failed_precondition";
    case absl::StatusCode::kAborted:
      return "aborted";
    case absl::StatusCode::kOutOfRange:
      return "out_of_range";
    case absl::StatusCode::kUnimplemented:
      return "unimplemented";
    case absl::StatusCode::kInternal:
      return "internal";
    case absl::StatusCode::kUnavailable:
      return "unavailable";
    case absl::StatusCode::kDataLoss:
      return "data_loss";
    case absl::StatusCode::kUnauthenticated:
      return "unauthenticated";
    default:
      return "unknown";
  }
}

int HttpStatusFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kCancelled:
      return 499;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted:
      return 409;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    default:  // unknown, internal, data_loss
      return 500;
  }
}

std::string ErrorJson(const absl::Status& status) {
  return Dump(ErrorObject(status));
}

std::string EndStreamJson(const absl::Status& status,
                          const Metadata& metadata) {
  Json end = Json::object();
  if (!status.ok()) end["error"] = ErrorObject(status);
  if (!metadata.empty()) {
    Json md = Json::object();
    for (const auto& [key, value] : metadata) md[key].push_back(value);
    end["metadata"] = std::move(md);
  }
  return Dump(end);
}

void AppendEnvelope(uint8_t flags, absl::string_view payload,
                    std::string* out) {
  uint32_t len = static_cast<uint32_t>(payload.size());
  char header[kEnvelopeHeaderBytes] = {
      static_cast<char>(flags), static_cast<char>((len >> 24) & 0xff),
      static_cast<char>((len >> 16) & 0xff),
      static_cast<char>((len >> 8) & 0xff), static_cast<char>(len & 0xff)};
  out->append(header, kEnvelopeHeaderBytes);
  out->append(payload.data(), payload.size());
}

absl::StatusOr<std::vector<Envelope>> ParseEnvelopes(absl::string_view body,
                                                     size_t max_payload_bytes) {
  std::vector<Envelope> envelopes;
  while (!body.empty()) {
    if (body.size() < kEnvelopeHeaderBytes) {
      return absl::InvalidArgumentError(
          "protocol error: body ends inside an envelope header");
    }
    auto byte = [&](size_t i) { return static_cast<uint8_t>(body[i]); };
    size_t len = (size_t{byte(1)} << 24) | (size_t{byte(2)} << 16) |
                 (size_t{byte(3)} << 8) | size_t{byte(4)};
    if (len > max_payload_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("message size ", len, " is larger than the limit of ",
                       max_payload_bytes, " bytes"));
    }
    if (body.size() - kEnvelopeHeaderBytes < len) {
      return absl::InvalidArgumentError(absl::StrCat(
          "protocol error: envelope declares ", len, " bytes but only ",
          body.size() - kEnvelopeHeaderBytes, " follow"));
    }
    envelopes.push_back(
        {byte(0), std::string(body.substr(kEnvelopeHeaderBytes, len))});
    body.remove_prefix(kEnvelopeHeaderBytes + len);
  }
  return envelopes;
}

std::optional<ContentType> ClassifyContentType(absl::string_view header) {
  absl::string_view media = header.substr(0, header.find(';'));
  std::string type = absl::AsciiStrToLower(absl::StripAsciiWhitespace(media));
  if (type == "application/proto") {
    return ContentType{WireProtocol::kConnectUnary, Codec::kProto, type};
  }
  if (type == "application/json") {
    return ContentType{WireProtocol::kConnectUnary, Codec::kJson, type};
  }
  if (type == "application/connect+proto") {
    return ContentType{WireProtocol::kConnectStream, Codec::kProto, type};
  }
  if (type == "application/connect+json") {
    return ContentType{WireProtocol::kConnectStream, Codec::kJson, type};
  }
  for (WireProtocol protocol :
       {WireProtocol::kGrpcWeb, WireProtocol::kGrpcWebText}) {
    std::string base = protocol == WireProtocol::kGrpcWeb
                           ? "application/grpc-web"
                           : "application/grpc-web-text";
    if (type == base || type == base + "+proto") {
      return ContentType{protocol, Codec::kProto, type};
    }
    if (type == base + "+json") {
      return ContentType{protocol, Codec::kJson, type};
    }
  }
  return std::nullopt;
}

absl::string_view SupportedContentTypes() {
  return "application/proto, application/json, application/connect+proto, "
         "application/connect+json, application/grpc-web, "
         "application/grpc-web+proto, application/grpc-web+json, "
         "application/grpc-web-text, application/grpc-web-text+proto";
}

absl::StatusOr<Compression> ParseContentCoding(absl::string_view name) {
  std::string coding = absl::AsciiStrToLower(absl::StripAsciiWhitespace(name));
  if (coding.empty() || coding == "identity") return Compression::kNone;
  if (coding == "gzip") return Compression::kGzip;
  if (coding == "zstd") return Compression::kZstd;
  return absl::UnimplementedError(
      absl::StrCat("unknown compression \"", coding,
                   "\": supported encodings are gzip, zstd, identity"));
}

Compression NegotiateCompression(std::optional<absl::string_view> accept,
                                 Compression request_coding) {
  if (!accept.has_value()) return request_coding;
  for (absl::string_view entry : absl::StrSplit(*accept, ',')) {
    std::vector<absl::string_view> parts = absl::StrSplit(entry, ';');
    absl::string_view name = absl::StripAsciiWhitespace(parts[0]);
    bool refused = false;
    for (size_t i = 1; i < parts.size(); ++i) {
      absl::string_view param = absl::StripAsciiWhitespace(parts[i]);
      double q;
      if (absl::StartsWithIgnoreCase(param, "q=") &&
          absl::SimpleAtod(param.substr(2), &q) && q <= 0) {
        refused = true;
      }
    }
    if (refused) continue;
    if (absl::EqualsIgnoreCase(name, "gzip")) return Compression::kGzip;
    if (absl::EqualsIgnoreCase(name, "zstd")) return Compression::kZstd;
    if (absl::EqualsIgnoreCase(name, "identity")) return Compression::kNone;
  }
  return Compression::kNone;
}

absl::StatusOr<absl::Duration> ParseConnectTimeout(absl::string_view value) {
  int64_t ms;
  if (!AllDigits(value) || value.size() > 10 || !absl::SimpleAtoi(value, &ms)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "protocol error: invalid Connect-Timeout-Ms \"", value, "\""));
  }
  return absl::Milliseconds(ms);
}

absl::StatusOr<absl::Duration> ParseGrpcTimeout(absl::string_view value) {
  int64_t amount;
  if (value.size() < 2 || value.size() > 9 ||
      !AllDigits(value.substr(0, value.size() - 1)) ||
      !absl::SimpleAtoi(value.substr(0, value.size() - 1), &amount)) {
    return absl::InvalidArgumentError(
        absl::StrCat("protocol error: invalid grpc-timeout \"", value, "\""));
  }
  switch (value.back()) {
    case 'H':
      return absl::Hours(amount);
    case 'M':
      return absl::Minutes(amount);
    case 'S':
      return absl::Seconds(amount);
    case 'm':
      return absl::Milliseconds(amount);
    case 'u':
      return absl::Microseconds(amount);
    case 'n':
      return absl::Nanoseconds(amount);
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "protocol error: invalid grpc-timeout unit in \"", value, "\""));
  }
}

std::string PercentEncodeGrpcMessage(absl::string_view message) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(message.size());
  for (char c : message) {
    auto b = static_cast<unsigned char>(c);
    if (b < 0x20 || b > 0x7e || b == '%') {
      out.push_back('%');
      out.push_back(kHex[b >> 4]);
      out.push_back(kHex[b & 0xf]);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string GrpcWebTrailers(const absl::Status& status,
                            const Metadata& metadata) {
  std::string out =
      absl::StrCat("grpc-status: ", static_cast<int>(status.code()), "\r\n");
  if (!status.message().empty()) {
    absl::StrAppend(&out, "grpc-message: ",
                    PercentEncodeGrpcMessage(status.message()), "\r\n");
  }
  for (const auto& [key, value] : metadata) {
    absl::StrAppend(&out, key, ": ", value, "\r\n");
  }
  return out;
}

absl::StatusOr<std::string> DecodeGrpcWebText(absl::string_view body) {
  std::string out;
  // Each chunk a client flushed is padded separately, so '=' may appear
  // mid-body: decode up to and including each padding run.
  while (!body.empty()) {
    size_t pad = body.find('=');
    size_t end = body.size();
    if (pad != absl::string_view::npos) {
      end = pad;
      while (end < body.size() && body[end] == '=') ++end;
    }
    std::string chunk;
    if (!absl::Base64Unescape(body.substr(0, end), &chunk)) {
      return absl::InvalidArgumentError(
          "protocol error: grpc-web-text body is not base64");
    }
    out += chunk;
    body.remove_prefix(end);
  }
  return out;
}

absl::Status DecodeMessage(Codec codec, absl::string_view bytes,
                           google::protobuf::Message* message) {
  if (codec == Codec::kProto) {
    if (!message->ParseFromArray(bytes.data(),
                                 static_cast<int>(bytes.size()))) {
      return absl::InvalidArgumentError(
          absl::StrCat("unmarshal into ", message->GetTypeName(),
                       ": invalid binary protobuf"));
    }
    return absl::OkStatus();
  }
  if (bytes.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unmarshal into ", message->GetTypeName(),
                     ": zero-length payload is not a valid JSON object"));
  }
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(bytes.data(), bytes.size()), message,
      options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unmarshal into ", message->GetTypeName(), ": ",
                     std::string(status.message())));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> EncodeMessage(
    Codec codec, const google::protobuf::Message& message) {
  std::string out;
  if (codec == Codec::kProto) {
    if (!message.SerializeToString(&out)) {
      return absl::InternalError(
          absl::StrCat("marshal ", message.GetTypeName(), " failed"));
    }
    return out;
  }
  google::protobuf::util::JsonPrintOptions options;  // lowerCamelCase names
  auto status =
      google::protobuf::util::MessageToJsonString(message, &out, options);
  if (!status.ok()) {
    return absl::InternalError(
        absl::StrCat("marshal ", message.GetTypeName(),
                     " to JSON: ", std::string(status.message())));
  }
  return out;
}

absl::StatusOr<std::string> DecodeGetMessage(absl::string_view message,
                                             bool base64) {
  if (!base64) return std::string(message);
  std::string text(message);
  while (!text.empty() && text.back() == '=') text.pop_back();
  for (char& c : text) {
    // Standard base64 is accepted too; a '+' may have arrived as a space
    // after query decoding.
    if (c == '+' || c == ' ') c = '-';
    if (c == '/') c = '_';
  }
  std::string out;
  if (!absl::WebSafeBase64Unescape(text, &out)) {
    return absl::InvalidArgumentError(
        "protocol error: message query parameter is not base64");
  }
  return out;
}

}  // namespace fleetd::server::rpc::connect
