// Metrics → VictoriaMetrics through its JSON line import API.
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"
#include "server/writers/backends.h"
#include "server/writers/http_pool.h"

namespace fleetd::server {
namespace {

class VictoriaMetricsWriter final : public Writer {
 public:
  explicit VictoriaMetricsWriter(const VictoriaMetricsOptions& options)
      : base_(absl::StripSuffix(options.url, "/")), timeout_(options.timeout) {}

  absl::string_view name() const override { return "victoriametrics"; }

  // One JSON line per series:
  // {"metric":{"__name__":...,labels...},"values":[...], "timestamps":[...]}.
  // Samples of the same series across all batches of the flush share a line,
  // which keeps the body small.
  absl::Status Write(absl::Span<const DecodedBatch* const> batches) override {
    std::string body;
    try {
      body = BuildBody(batches);
    } catch (const std::exception& e) {
      // Invalid UTF-8 in a string; decoding should have refused it already.
      return absl::InvalidArgumentError(
          absl::StrCat("cannot encode metrics: ", e.what()));
    }
    if (body.empty()) return absl::OkStatus();
    HttpRequest request;
    request.method = "POST";
    request.url = absl::StrCat(base_, "/api/v1/import");
    request.headers = {{"Content-Type", "application/json"}};
    request.body = std::move(body);
    request.timeout = timeout_;
    absl::StatusOr<HttpResponse> response = pool_.Send(request);
    if (!response.ok()) return response.status();
    return HttpStatusToStatus("victoriametrics", *response);
  }

  absl::Status Ping() override {
    HttpRequest request;
    request.url = absl::StrCat(base_, "/health");
    request.timeout = absl::Seconds(2);
    absl::StatusOr<HttpResponse> response = pool_.Send(request);
    if (!response.ok()) return response.status();
    return HttpStatusToStatus("victoriametrics", *response);
  }

 private:
  // Throws nlohmann::json exceptions on strings that are not UTF-8.
  static std::string BuildBody(absl::Span<const DecodedBatch* const> batches) {
    std::map<std::string, nlohmann::json> series;  // key: serialized label set
    for (const DecodedBatch* b : batches) {
      if (b->kind != DataKind::kMetrics) continue;
      for (const v1::Metric& m : b->metrics.metrics()) {
        nlohmann::json labels = nlohmann::json::object();
        labels["__name__"] = m.name();
        for (const auto& [k, v] : m.labels()) labels[k] = v;
        // Identity labels come from the API key (decoding dropped any the
        // device sent).
        labels["device_id"] = b->device.device_id;
        labels["org_id"] = b->device.org_id;
        nlohmann::json& line = series[labels.dump()];
        if (line.is_null()) {
          line["metric"] = std::move(labels);
          line["values"] = nlohmann::json::array();
          line["timestamps"] = nlohmann::json::array();
        }
        int64_t ms =
            m.timestamp().seconds() * 1000 + m.timestamp().nanos() / 1'000'000;
        line["values"].push_back(m.value());
        line["timestamps"].push_back(ms);
      }
    }
    std::string body;
    for (auto& [key, line] : series) {
      body += line.dump();
      body += '\n';
    }
    return body;
  }

  const std::string base_;
  const absl::Duration timeout_;
  HttpPool pool_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Writer>> NewVictoriaMetricsWriter(
    const VictoriaMetricsOptions& options) {
  if (options.url.empty()) {
    return absl::InvalidArgumentError("FLEET_VICTORIAMETRICS_URL is not set");
  }
  return std::unique_ptr<Writer>(new VictoriaMetricsWriter(options));
}

}  // namespace fleetd::server
