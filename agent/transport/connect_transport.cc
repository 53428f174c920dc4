#include "agent/transport/connect_transport.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "agent/transport/connect_error.h"
#include "agent/transport/transport_stats.h"
#include "common/codec/codec.h"
#include "common/status/error_class.h"
#include "common/status/retry_after.h"
#include "glog/logging.h"
#include "google/protobuf/message.h"

namespace fleetd::agent {
namespace {

constexpr char kServicePath[] = "/fleetd.v1.SyncService/";
constexpr char kProtoContentType[] = "application/proto";
// Connect sends unary trailers as headers with this prefix.
constexpr char kVerdictHeader[] = "Trailer-Fleetd-Verdict";
// Connect-Timeout-Ms holds at most 10 digits.
constexpr int64_t kMaxConnectTimeoutMs = 9'999'999'999;
// A compressed body can be a little larger than what it holds
// (incompressible data), so the raw body gets this much headroom over
// max_response_bytes.
constexpr int64_t kRawBodySlackBytes = 64 << 10;

std::string Lower(absl::string_view s) {
  return absl::AsciiStrToLower(absl::StripAsciiWhitespace(s));
}

// The media type of a Content-Type value, lower-case, without parameters.
std::string MediaType(absl::string_view content_type) {
  return Lower(content_type.substr(0, content_type.find(';')));
}

// A transport failure from the HTTP client, as a status the sync manager can
// act on. The URL and headers were validated up front, so anything else the
// client reports (e.g. an answer that is not HTTP at all, like a TLS alert to
// a plaintext request) is a failure to get a well-formed answer: UNAVAILABLE,
// never a code that would condemn the batch.
absl::Status FromHttpError(absl::string_view method,
                           const absl::Status& status) {
  const std::string message =
      absl::StrCat("Connect ", method, ": ", status.message());
  switch (status.code()) {
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kResourceExhausted:
      return absl::Status(status.code(), message);
    default:
      return absl::UnavailableError(message);
  }
}

class ConnectTransport final : public SyncTransport {
 public:
  ConnectTransport(std::unique_ptr<HttpClient> http, ConnectCallConfig config)
      : http_(std::move(http)), config_(std::move(config)) {}

  absl::StatusOr<v1::SyncMetricsResponse> SyncMetrics(
      const v1::SyncMetricsRequest& request, absl::Duration timeout) override {
    return Unary<v1::SyncMetricsResponse>("SyncMetrics", request, timeout);
  }
  absl::StatusOr<v1::SyncLogsResponse> SyncLogs(
      const v1::SyncLogsRequest& request, absl::Duration timeout) override {
    return Unary<v1::SyncLogsResponse>("SyncLogs", request, timeout);
  }
  absl::StatusOr<v1::SyncEventsResponse> SyncEvents(
      const v1::SyncEventsRequest& request, absl::Duration timeout) override {
    return Unary<v1::SyncEventsResponse>("SyncEvents", request, timeout);
  }
  absl::StatusOr<v1::GetSyncConfigResponse> GetSyncConfig(
      const v1::GetSyncConfigRequest& request,
      absl::Duration timeout) override {
    return Unary<v1::GetSyncConfigResponse>("GetSyncConfig", request, timeout);
  }
  absl::StatusOr<v1::UpdateDeviceInfoResponse> UpdateDeviceInfo(
      const v1::UpdateDeviceInfoRequest& request,
      absl::Duration timeout) override {
    return Unary<v1::UpdateDeviceInfoResponse>("UpdateDeviceInfo", request,
                                               timeout);
  }

  absl::StatusOr<std::unique_ptr<SyncStream>> OpenStream() override {
    return absl::UnimplementedError(
        "StreamSync is a bidirectional stream, which the Connect protocol "
        "carries only over HTTP/2, and the Connect transport speaks HTTP/1.1; "
        "use the unary RPCs, or FLEET_TRANSPORT=grpc for streaming");
  }

  TransportStats stats() const override { return stats_.Snapshot(); }

 private:
  template <typename Response>
  absl::StatusOr<Response> Unary(absl::string_view method,
                                 const google::protobuf::Message& request,
                                 absl::Duration timeout) {
    stats_.AddCall();
    Response response;
    absl::Status status = Call(method, request, timeout, &response);
    if (!status.ok()) {
      stats_.AddFailure();
      LOG(WARNING) << "Connect " << method << " failed: " << status;
      return status;
    }
    return response;
  }

  absl::Status Call(absl::string_view method,
                    const google::protobuf::Message& request,
                    absl::Duration timeout,
                    google::protobuf::Message* response) {
    if (timeout <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(
          absl::StrCat("Connect ", method, ": the timeout (",
                       absl::FormatDuration(timeout), ") has already passed"));
    }
    HttpRequest http;
    http.method = "POST";
    http.url = absl::StrCat(config_.base_url, kServicePath, method);
    http.timeout = timeout;
    http.headers = {{"Content-Type", kProtoContentType},
                    {"Connect-Protocol-Version", "1"},
                    {"Accept-Encoding", "gzip, zstd"}};
    if (!config_.api_key.empty()) {
      http.headers.emplace_back("X-API-Key", config_.api_key);
    }
    if (timeout != absl::InfiniteDuration()) {
      const int64_t ms = std::clamp<int64_t>(
          absl::ToInt64Milliseconds(absl::Ceil(timeout, absl::Milliseconds(1))),
          1, kMaxConnectTimeoutMs);
      http.headers.emplace_back("Connect-Timeout-Ms", absl::StrCat(ms));
    }
    if (!request.SerializeToString(&http.body)) {
      return absl::InternalError(
          absl::StrCat("Connect ", method, ": cannot serialize the request"));
    }
    if (config_.gzip) {
      absl::StatusOr<std::string> compressed =
          Compress(Compression::kGzip, http.body);
      // Tiny bodies grow under gzip; those go as they are.
      if (compressed.ok() && compressed->size() < http.body.size()) {
        http.body = *std::move(compressed);
        http.headers.emplace_back("Content-Encoding", "gzip");
      }
    }

    absl::StatusOr<HttpResponse> answer = http_->Send(http);
    if (!answer.ok()) return FromHttpError(method, answer.status());
    stats_.AddSent(static_cast<int64_t>(http.body.size()));
    stats_.AddReceived(static_cast<int64_t>(answer->body.size()));

    absl::StatusOr<std::string> payload = DecodeBody(*answer);
    if (answer->status_code != 200) {
      bool connect_body = false;
      absl::Status error = StatusFromConnectError(
          answer->status_code, answer->Header("Content-Type").value_or(""),
          payload.ok() ? *payload : "", &connect_body);
      // Our server's verdict that the batch itself is invalid
      // (error_class.h): only with a Connect error body, never on a proxy's
      // own answer.
      if (connect_body && Lower(answer->Header(kVerdictHeader).value_or("")) ==
                              kVerdictRejected) {
        error = MarkBatchRejected(std::move(error));
      }
      return WithServerRetryHint(std::move(error), *answer);
    }
    if (!payload.ok()) {
      if (payload.status().code() == absl::StatusCode::kResourceExhausted) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "Connect ", method, ": response ", payload.status().message()));
      }
      return absl::UnavailableError(
          absl::StrCat("Connect ", method,
                       ": malformed response: ", payload.status().message()));
    }
    const std::string content_type =
        MediaType(answer->Header("Content-Type").value_or(""));
    if (content_type != kProtoContentType) {
      return absl::UnavailableError(
          absl::StrCat("Connect ", method, ": HTTP 200 with Content-Type \"",
                       content_type, "\" instead of ", kProtoContentType,
                       " (not a Connect server, or a proxy in the way)"));
    }
    if (!response->ParseFromString(*payload)) {
      return absl::UnavailableError(
          absl::StrCat("Connect ", method, ": the response does not parse as ",
                       response->GetTypeName()));
    }
    return absl::OkStatus();
  }

  // The body with its Content-Encoding undone, at most max_response_bytes.
  absl::StatusOr<std::string> DecodeBody(const HttpResponse& answer) const {
    const std::string encoding =
        Lower(answer.Header("Content-Encoding").value_or("identity"));
    const size_t max = static_cast<size_t>(config_.max_response_bytes);
    if (encoding.empty() || encoding == "identity") {
      if (answer.body.size() > max) {
        return absl::ResourceExhaustedError(
            absl::StrCat("body larger than ", max, " bytes"));
      }
      return answer.body;
    }
    absl::StatusOr<Compression> compression = ParseCompression(encoding);
    if (!compression.ok() || *compression == Compression::kNone) {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported Content-Encoding \"", encoding, "\""));
    }
    return Decompress(*compression, answer.body, max);
  }

  absl::Status WithServerRetryHint(absl::Status status,
                                   const HttpResponse& answer) const {
    if (std::optional<std::string> ms = answer.Header("Trailer-Retry-After-Ms");
        ms.has_value()) {
      int64_t value = 0;
      if (absl::SimpleAtoi(*ms, &value) && value >= 0) {
        return WithRetryAfter(std::move(status), absl::Milliseconds(value));
      }
    }
    if (std::optional<std::string> value = answer.Header("Retry-After");
        value.has_value()) {
      std::optional<absl::Duration> delay =
          ParseRetryAfter(*value, config_.clock->Now());
      if (delay.has_value()) return WithRetryAfter(std::move(status), *delay);
    }
    return status;
  }

  const std::unique_ptr<HttpClient> http_;
  const ConnectCallConfig config_;
  StatsRecorder stats_;
};

}  // namespace

std::unique_ptr<SyncTransport> NewConnectTransportWithClient(
    std::unique_ptr<HttpClient> http, ConnectCallConfig config) {
  if (config.clock == nullptr) config.clock = Clock::Real();
  return std::make_unique<ConnectTransport>(std::move(http), std::move(config));
}

absl::StatusOr<std::unique_ptr<SyncTransport>> NewConnectTransport(
    const TransportOptions& options, const ServerUrl& url) {
  CurlHttpClientOptions http_options;
  http_options.connect_timeout = options.connect_timeout;
  http_options.max_response_body_bytes =
      static_cast<size_t>(options.max_response_bytes + kRawBodySlackBytes);
  http_options.user_agent = options.user_agent;
  http_options.verify_tls = true;
  http_options.ca_file = options.ca_file;
  absl::StatusOr<std::unique_ptr<HttpClient>> http =
      NewCurlHttpClient(http_options);
  if (!http.ok()) return http.status();

  ConnectCallConfig config;
  config.base_url = url.Base();
  config.api_key = options.api_key;
  config.gzip = options.compression == "gzip";
  config.max_response_bytes = options.max_response_bytes;
  config.clock = options.clock;
  return NewConnectTransportWithClient(*std::move(http), std::move(config));
}

}  // namespace fleetd::agent
