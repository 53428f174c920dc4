#include "server/writers/http_pool.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status/retryable.h"

namespace fleetd::server {

absl::StatusOr<HttpResponse> HttpPool::Send(const HttpRequest& request) {
  std::unique_ptr<HttpClient> client;
  {
    absl::MutexLock lock(&mu_);
    if (!idle_.empty()) {
      client = std::move(idle_.back());
      idle_.pop_back();
    }
  }
  if (client == nullptr) {
    absl::StatusOr<std::unique_ptr<HttpClient>> made =
        NewCurlHttpClient(options_);
    if (!made.ok()) return made.status();
    client = *std::move(made);
  }
  absl::StatusOr<HttpResponse> response = client->Send(request);
  {
    absl::MutexLock lock(&mu_);
    idle_.push_back(std::move(client));
  }
  if (!response.ok() && !IsRetryable(response.status().code())) {
    return BackendMisconfigured(
        "request", absl::StrCat("cannot send a request to ", request.url, ": ",
                                response.status().message()));
  }
  return response;
}

absl::Status HttpStatusToStatus(absl::string_view backend,
                                const HttpResponse& response) {
  int code = response.status_code;
  if (code >= 200 && code < 300) return absl::OkStatus();
  std::string message = absl::StrCat(backend, " answered HTTP ", code, ": ",
                                     response.body.substr(0, 300));
  if (code == 429) return absl::ResourceExhaustedError(message);
  if (code == 408 || code >= 500) return absl::UnavailableError(message);
  if (code == 400 || code == 422) return absl::InvalidArgumentError(message);
  return BackendMisconfigured(absl::StrCat(code), message);
}

std::optional<std::string> ParseProcessStartTime(absl::string_view body) {
  constexpr absl::string_view kName = "process_start_time_seconds";
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (!absl::ConsumePrefix(&line, kName)) continue;
    // Not a longer name; labels ({...}) are allowed but not expected.
    if (line.empty() || (line[0] != ' ' && line[0] != '{')) continue;
    if (line[0] == '{') {
      const size_t close = line.find('}');
      if (close == absl::string_view::npos) continue;
      line.remove_prefix(close + 1);
    }
    line = absl::StripAsciiWhitespace(line);
    // "<value>" or "<value> <timestamp>".
    absl::string_view value = line.substr(0, line.find(' '));
    if (!value.empty()) return std::string(value);
  }
  return std::nullopt;
}

absl::StatusOr<std::string> ProcessStartInstanceId(HttpPool& pool,
                                                   absl::string_view backend,
                                                   absl::string_view base_url) {
  HttpRequest request;
  request.url = absl::StrCat(base_url, "/metrics");
  request.timeout = absl::Seconds(2);
  absl::StatusOr<HttpResponse> response = pool.Send(request);
  if (!response.ok()) return response.status();
  if (response->status_code == 404) {
    return absl::UnimplementedError(
        absl::StrCat(backend, " has no /metrics (HTTP 404)"));
  }
  absl::Status s = HttpStatusToStatus(backend, *response);
  if (!s.ok()) return s;
  std::optional<std::string> start = ParseProcessStartTime(response->body);
  if (!start.has_value()) {
    return absl::UnimplementedError(
        absl::StrCat(backend, "'s /metrics has no process_start_time_seconds"));
  }
  return *std::move(start);
}

}  // namespace fleetd::server
