#include "server/rpc/door/cors.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace fleetd::server::rpc::door {
namespace {

// What the three protocols' clients send (lower-case; the Fetch standard
// compares header names case-insensitively).
constexpr absl::string_view kAllowHeaders =
    "content-type, content-encoding, accept-encoding, "
    "connect-protocol-version, "
    "connect-timeout-ms, connect-content-encoding, connect-accept-encoding, "
    "grpc-timeout, grpc-encoding, grpc-accept-encoding, x-grpc-web, "
    "x-user-agent, x-api-key";
// What a browser client must read from responses.
constexpr absl::string_view kExposeHeaders =
    "grpc-status, grpc-message, grpc-status-details-bin, grpc-encoding, "
    "grpc-accept-encoding, connect-content-encoding, connect-accept-encoding, "
    "content-encoding, retry-after, retry-after-ms, trailer-retry-after-ms, "
    "fleetd-verdict, trailer-fleetd-verdict";

class Policy {
 public:
  explicit Policy(CorsPolicy policy)
      : origins_(std::move(policy.allowed_origins)),
        any_(std::find(origins_.begin(), origins_.end(), "*") !=
             origins_.end()),
        max_age_(absl::StrCat(absl::ToInt64Seconds(policy.max_age))) {}

  // The Access-Control-Allow-Origin value for `origin`, or nullopt when it
  // is not allowed.
  std::optional<std::string> AllowOrigin(absl::string_view origin) const {
    if (any_) return std::string("*");
    for (const std::string& allowed : origins_) {
      if (allowed == origin) return allowed;
    }
    return std::nullopt;
  }
  const std::string& max_age() const { return max_age_; }

 private:
  const std::vector<std::string> origins_;
  const bool any_;
  const std::string max_age_;
};

// Forwards everything to the engine's exchange; adds the CORS headers to the
// response's header block.
class CorsExchange final : public http::Exchange {
 public:
  CorsExchange(std::shared_ptr<http::Exchange> inner, std::string allow_origin)
      : inner_(std::move(inner)), allow_origin_(std::move(allow_origin)) {}

  const std::string& method() const override { return inner_->method(); }
  const std::string& path() const override { return inner_->path(); }
  const http::Headers& headers() const override { return inner_->headers(); }
  const std::string& authority() const override { return inner_->authority(); }
  http::HttpVersion version() const override { return inner_->version(); }
  const std::string& peer() const override { return inner_->peer(); }
  bool secure() const override { return inner_->secure(); }

  void SendHeaders(int status, http::Headers headers,
                   bool end_stream) override {
    AddCorsHeaders(headers);
    inner_->SendHeaders(status, std::move(headers), end_stream);
  }
  void SendResponse(int status, http::Headers headers, std::string body,
                    http::Headers trailers) override {
    AddCorsHeaders(headers);
    inner_->SendResponse(status, std::move(headers), std::move(body),
                         std::move(trailers));
  }
  void SendData(std::string data, bool end_stream) override {
    inner_->SendData(std::move(data), end_stream);
  }
  void SendTrailers(http::Headers trailers) override {
    inner_->SendTrailers(std::move(trailers));
  }
  void Reset(bool internal_error) override { inner_->Reset(internal_error); }
  void ConsumeRequest(size_t bytes) override { inner_->ConsumeRequest(bytes); }

 private:
  void AddCorsHeaders(http::Headers& headers) const {
    headers.push_back({"access-control-allow-origin", allow_origin_});
    headers.push_back(
        {"access-control-expose-headers", std::string(kExposeHeaders)});
    headers.push_back({"vary", "Origin"});
  }

  const std::shared_ptr<http::Exchange> inner_;
  const std::string allow_origin_;
};

void AnswerPreflight(const Policy& policy, http::Exchange& exchange,
                     absl::string_view origin) {
  std::optional<std::string> allow = policy.AllowOrigin(origin);
  std::string method = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(
      http::FindHeader(exchange.headers(), "access-control-request-method")
          .value_or("")));
  if (!allow.has_value() || (method != "POST" && method != "GET")) {
    exchange.SendHeaders(403, {{"vary", "Origin"}, {"content-length", "0"}},
                         true);
    return;
  }
  exchange.SendHeaders(
      204,
      {{"access-control-allow-origin", *allow},
       {"access-control-allow-methods", "GET, POST"},
       {"access-control-allow-headers", std::string(kAllowHeaders)},
       {"access-control-max-age", policy.max_age()},
       {"vary",
        "Origin, Access-Control-Request-Method, "
        "Access-Control-Request-Headers"}},
      true);
}

}  // namespace

http::ExchangeHandler WithCors(CorsPolicy policy, http::ExchangeHandler inner) {
  if (policy.allowed_origins.empty()) return inner;
  auto shared = std::make_shared<const Policy>(std::move(policy));
  return [shared,
          inner = std::move(inner)](std::shared_ptr<http::Exchange> exchange)
             -> std::unique_ptr<http::RequestObserver> {
    std::optional<absl::string_view> origin =
        http::FindHeader(exchange->headers(), "origin");
    if (!origin.has_value()) return inner(std::move(exchange));
    if (exchange->method() == "OPTIONS" &&
        http::FindHeader(exchange->headers(), "access-control-request-method")
            .has_value()) {
      AnswerPreflight(*shared, *exchange, *origin);
      return http::IgnoreBody();
    }
    std::optional<std::string> allow = shared->AllowOrigin(*origin);
    if (!allow.has_value()) return inner(std::move(exchange));
    return inner(
        std::make_shared<CorsExchange>(std::move(exchange), *std::move(allow)));
  };
}

}  // namespace fleetd::server::rpc::door
