#include "server/writers/http_pool.h"

#include "absl/strings/str_cat.h"
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

}  // namespace fleetd::server
