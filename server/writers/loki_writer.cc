// Logs → Loki through its push API; the body is made by EncodeLokiPush
// (loki_push.h), which says what it holds.
#include <algorithm>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "server/writers/backends.h"
#include "server/writers/http_pool.h"
#include "server/writers/loki_push.h"

namespace fleetd::server {
namespace {

class LokiWriter final : public Writer {
 public:
  LokiWriter(const LokiOptions& options, bool json)
      : base_(absl::StripSuffix(options.url, "/")),
        json_(json),
        tenant_id_(options.tenant_id),
        timeout_(options.timeout) {}

  absl::string_view name() const override { return "loki"; }

  // One push for the whole flush, entries grouped by stream.
  absl::Status Write(absl::Span<const DecodedBatch* const> batches) override {
    const LokiFormat format = json_ ? LokiFormat::kJson : LokiFormat::kProtobuf;
    absl::StatusOr<std::string> body = EncodeLokiPush(batches, format);
    if (!body.ok()) return body.status();
    // Loki answers 422 to a push without streams.
    if (body->empty()) return absl::OkStatus();
    HttpRequest request;
    request.method = "POST";
    request.url = absl::StrCat(base_, "/loki/api/v1/push");
    request.body = *std::move(body);
    request.headers.emplace_back("Content-Type",
                                 std::string(LokiContentType(format)));
    if (!tenant_id_.empty()) {
      request.headers.emplace_back("X-Scope-OrgID", tenant_id_);
    }
    request.timeout = timeout_;
    absl::StatusOr<HttpResponse> response = pool_.Send(request);
    if (!response.ok()) return response.status();
    return HttpStatusToStatus("loki", *response);
  }

  absl::StatusOr<std::string> InstanceId() override {
    return ProcessStartInstanceId(pool_, "loki", base_);
  }

  absl::Status Ping() override {
    HttpRequest request;
    request.url = absl::StrCat(base_, "/ready");
    request.timeout = std::min(timeout_, absl::Seconds(2));
    if (!tenant_id_.empty()) {
      request.headers.emplace_back("X-Scope-OrgID", tenant_id_);
    }
    absl::StatusOr<HttpResponse> response = pool_.Send(request);
    if (!response.ok()) return response.status();
    // Loki answers 503 while its ring is still forming.
    return HttpStatusToStatus("loki", *response);
  }

 private:
  const std::string base_;
  const bool json_;
  const std::string tenant_id_;
  const absl::Duration timeout_;
  HttpPool pool_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Writer>> NewLokiWriter(
    const LokiOptions& options) {
  if (options.url.empty()) {
    return absl::InvalidArgumentError("FLEET_LOKI_URL is not set");
  }
  if (options.format != "protobuf" && options.format != "json") {
    return absl::InvalidArgumentError(
        absl::StrCat("Loki format must be \"protobuf\" or \"json\", not \"",
                     options.format, "\""));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("Loki timeout must be positive");
  }
  return std::unique_ptr<Writer>(
      new LokiWriter(options, options.format == "json"));
}

}  // namespace fleetd::server
