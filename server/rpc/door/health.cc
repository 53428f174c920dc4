#include "server/rpc/door/health.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "server/rpc/connect/connect_protocol.h"
#include "server/rpc/door/wire.h"

namespace fleetd::server::rpc::door {
namespace {

using google::protobuf::internal::WireFormatLite;
using http::Exchange;
using http::FindHeader;
using http::Headers;

constexpr absl::string_view kServedService = "fleetd.v1.SyncService";

// The `service` field of a HealthCheckRequest; unknown fields are skipped.
absl::StatusOr<std::string> ParseService(absl::string_view message) {
  google::protobuf::io::CodedInputStream in(
      reinterpret_cast<const uint8_t*>(message.data()),
      static_cast<int>(message.size()));
  std::string service;
  while (uint32_t tag = in.ReadTag()) {
    if (tag ==
        WireFormatLite::MakeTag(1, WireFormatLite::WIRETYPE_LENGTH_DELIMITED)) {
      if (!WireFormatLite::ReadString(&in, &service)) break;
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      break;
    }
  }
  if (!in.ConsumedEntireMessage() ||
      static_cast<size_t>(in.CurrentPosition()) != message.size()) {
    return absl::InvalidArgumentError("HealthCheckRequest does not parse");
  }
  return service;
}

// The message of the one envelope in `body`.
absl::StatusOr<std::string> OneEnvelope(absl::string_view body) {
  absl::StatusOr<std::vector<connect::Envelope>> envelopes =
      connect::ParseEnvelopes(body, kMaxHealthRequestBytes);
  if (!envelopes.ok()) return envelopes.status();
  if (envelopes->size() != 1) {
    return absl::InvalidArgumentError(
        "the request must hold exactly one message");
  }
  connect::Envelope& envelope = envelopes->front();
  if (envelope.flags & connect::kFlagCompressed) {
    return absl::UnimplementedError("compressed health checks are not served");
  }
  return std::move(envelope.payload);
}

void SendStatus(Exchange& exchange, const absl::Status& status) {
  SendGrpcTrailersOnly(exchange, "application/grpc", status);
}

class HealthCheck final : public http::RequestObserver {
 public:
  explicit HealthCheck(std::shared_ptr<Exchange> exchange)
      : exchange_(std::move(exchange)) {}

  void OnData(absl::string_view chunk) override {
    if (done_) return;
    if (body_.size() + chunk.size() >
        connect::kEnvelopeHeaderBytes + kMaxHealthRequestBytes) {
      done_ = true;
      SendStatus(*exchange_, absl::ResourceExhaustedError(absl::StrCat(
                                 "a health check request is at most ",
                                 kMaxHealthRequestBytes, " bytes")));
      return;
    }
    body_.append(chunk.data(), chunk.size());
  }

  void OnEnd() override {
    if (done_) return;
    done_ = true;
    absl::StatusOr<std::string> message = OneEnvelope(body_);
    absl::StatusOr<std::string> service =
        message.ok() ? ParseService(*message)
                     : absl::StatusOr<std::string>(message.status());
    if (!service.ok()) {
      SendStatus(*exchange_, service.status());
      return;
    }
    if (!service->empty() && *service != kServedService) {
      SendStatus(*exchange_, absl::NotFoundError(
                                 absl::StrCat("unknown service ", *service)));
      return;
    }
    // HealthCheckResponse{status: SERVING (1)}: field 1, varint 1.
    std::string response("\x00\x00\x00\x00\x02\x08\x01", 7);
    exchange_->SendResponse(200, {{"content-type", "application/grpc"}},
                            std::move(response),
                            GrpcStatusFields(absl::OkStatus()));
  }

  void OnCancel() override { done_ = true; }

 private:
  const std::shared_ptr<Exchange> exchange_;
  std::string body_;
  bool done_ = false;
};

}  // namespace

http::ExchangeHandler WithGrpcHealth(http::ExchangeHandler inner) {
  return [inner = std::move(inner)](std::shared_ptr<Exchange> exchange)
             -> std::unique_ptr<http::RequestObserver> {
    if (exchange->path() != kHealthCheckPath) return inner(std::move(exchange));
    if (exchange->method() != "POST") {
      exchange->SendHeaders(405, {{"allow", "POST"}}, true);
      return http::IgnoreBody();
    }
    std::optional<Protocol> protocol = ClassifyRequest(
        FindHeader(exchange->headers(), "content-type").value_or(""));
    if (!protocol.has_value() || protocol->wire != Wire::kGrpc) {
      exchange->SendHeaders(
          415, {{"accept-post", "application/grpc, application/grpc+proto"}},
          true);
      return http::IgnoreBody();
    }
    if (exchange->version() != http::HttpVersion::kHttp2) {
      SendWhole(*exchange, 505, {{"content-type", "text/plain"}},
                "gRPC needs HTTP/2\n");
      return http::IgnoreBody();
    }
    return std::make_unique<HealthCheck>(std::move(exchange));
  };
}

}  // namespace fleetd::server::rpc::door
