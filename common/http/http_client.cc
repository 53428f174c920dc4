#include "common/http/http_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace fleetd {

std::optional<std::string> HttpResponse::Header(absl::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(key, name)) return value;
  }
  return std::nullopt;
}

namespace {

bool IsTokenChar(char c) {
  // RFC 9110 tchar.
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
         absl::StrContains("!#$%&'*+-.^_`|~", c);
}

bool IsToken(absl::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), IsTokenChar);
}

bool IsValidHeaderValue(absl::string_view s) {
  return std::none_of(s.begin(), s.end(), [](char c) {
    return c == '\r' || c == '\n' || c == '\0';
  });
}

bool HasHeader(const HttpHeaders& headers, absl::string_view name) {
  return std::any_of(headers.begin(), headers.end(), [&](const auto& h) {
    return absl::EqualsIgnoreCase(h.first, name);
  });
}

// Milliseconds for libcurl: rounded up so that a tiny positive duration never
// becomes libcurl's "no timeout" (0).
long ToCurlMillis(absl::Duration d) {
  if (d == absl::InfiniteDuration()) return 0;
  int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(d, absl::Milliseconds(1)));
  return static_cast<long>(std::clamp<int64_t>(ms, 1, INT32_MAX));
}

struct SListDeleter {
  void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};
using SList = std::unique_ptr<curl_slist, SListDeleter>;

// State the libcurl callbacks of one exchange write into.
struct Exchange {
  HttpResponse response;
  size_t max_body_bytes = 0;
  bool body_too_large = false;
};

size_t OnBody(char* data, size_t size, size_t nmemb, void* userdata) {
  auto* exchange = static_cast<Exchange*>(userdata);
  const size_t n = size * nmemb;
  if (exchange->response.body.size() + n > exchange->max_body_bytes) {
    exchange->body_too_large = true;
    return 0;  // Makes libcurl abort with CURLE_WRITE_ERROR.
  }
  exchange->response.body.append(data, n);
  return n;
}

size_t OnHeader(char* data, size_t size, size_t nmemb, void* userdata) {
  auto* exchange = static_cast<Exchange*>(userdata);
  const size_t n = size * nmemb;
  absl::string_view line(data, n);
  if (absl::StartsWith(line, "HTTP/")) {
    // A new status line: an interim (1xx) response ended, or this is the first
    // one.
    exchange->response.headers.clear();
    return n;
  }
  const size_t colon = line.find(':');
  if (colon == absl::string_view::npos)
    return n;  // Blank line ending the headers.
  exchange->response.headers.emplace_back(
      std::string(absl::StripAsciiWhitespace(line.substr(0, colon))),
      std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
  return n;
}

absl::Status MapCurlError(CURLcode code, const Exchange& exchange,
                          const HttpRequest& request, const char* detail,
                          size_t max_body_bytes) {
  const std::string what = absl::StrCat(
      request.method, " ", request.url, ": ", curl_easy_strerror(code),
      detail[0] != '\0' ? absl::StrCat(" (", detail, ")") : "");
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
      return absl::DeadlineExceededError(
          absl::StrCat(what, " after ", absl::FormatDuration(request.timeout)));
    case CURLE_WRITE_ERROR:
    case CURLE_FILESIZE_EXCEEDED:
      if (exchange.body_too_large || code == CURLE_FILESIZE_EXCEEDED) {
        return absl::ResourceExhaustedError(absl::StrCat(
            request.method, " ", request.url, ": response body larger than ",
            max_body_bytes, " bytes"));
      }
      return absl::UnavailableError(what);
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
      return absl::InvalidArgumentError(what);
    default:
      // Connection refused or reset, DNS, TLS, a server that closed the
      // connection or answered with something that is not HTTP: nothing the
      // request itself can fix.
      return absl::UnavailableError(what);
  }
}

class CurlHttpClient final : public HttpClient {
 public:
  CurlHttpClient(CurlHttpClientOptions options, CURL* handle)
      : options_(std::move(options)), curl_(handle) {}
  ~CurlHttpClient() override { curl_easy_cleanup(curl_); }

  CurlHttpClient(const CurlHttpClient&) = delete;
  CurlHttpClient& operator=(const CurlHttpClient&) = delete;

  absl::StatusOr<HttpResponse> Send(const HttpRequest& request) override {
    if (!IsToken(request.method)) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid HTTP method \"", request.method, "\""));
    }
    if (!absl::StartsWithIgnoreCase(request.url, "http://") &&
        !absl::StartsWithIgnoreCase(request.url, "https://")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "not an http:// or https:// URL: \"", request.url, "\""));
    }
    if (request.timeout <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          "HTTP request timeout must be positive");
    }
    SList headers;
    for (const auto& [name, value] : request.headers) {
      if (!IsToken(name) || !IsValidHeaderValue(value)) {
        return absl::InvalidArgumentError(
            absl::StrCat("invalid HTTP header \"", absl::CEscape(name), "\""));
      }
      // libcurl sends "Name;" as a header with an empty value ("Name:" would
      // remove it).
      if (!AppendHeader(headers, value.empty()
                                     ? absl::StrCat(name, ";")
                                     : absl::StrCat(name, ": ", value))) {
        return absl::InternalError("out of memory building HTTP headers");
      }
    }
    // "Name:" removes a header libcurl would add by itself: a form Content-Type
    // for a POST body, and Expect: 100-continue, which costs a round trip on
    // large bodies.
    for (const char* name : {"Content-Type", "Expect"}) {
      if (!HasHeader(request.headers, name) &&
          !AppendHeader(headers, absl::StrCat(name, ":"))) {
        return absl::InternalError("out of memory building HTTP headers");
      }
    }

    absl::MutexLock lock(&mu_);
    // Reset clears the options of the previous request but keeps the connection
    // cache.
    curl_easy_reset(curl_);
    Exchange exchange;
    exchange.max_body_bytes = options_.max_response_body_bytes;
    char error[CURL_ERROR_SIZE] = {0};

    CURLcode rc = CURLE_OK;
    auto set = [&rc](CURLcode c) {
      if (rc == CURLE_OK) rc = c;
    };
    set(curl_easy_setopt(curl_, CURLOPT_URL, request.url.c_str()));
    set(curl_easy_setopt(curl_, CURLOPT_PROTOCOLS_STR, "http,https"));
    set(curl_easy_setopt(curl_, CURLOPT_NOSIGNAL, 1L));
    set(curl_easy_setopt(curl_, CURLOPT_ERRORBUFFER, error));
    set(curl_easy_setopt(curl_, CURLOPT_TCP_NODELAY, 1L));
    set(curl_easy_setopt(curl_, CURLOPT_TCP_KEEPALIVE, 1L));
    set(curl_easy_setopt(curl_, CURLOPT_TIMEOUT_MS,
                         ToCurlMillis(request.timeout)));
    set(curl_easy_setopt(
        curl_, CURLOPT_CONNECTTIMEOUT_MS,
        ToCurlMillis(std::min(options_.connect_timeout, request.timeout))));
    set(curl_easy_setopt(curl_, CURLOPT_FOLLOWLOCATION, 0L));
    set(curl_easy_setopt(
        curl_, CURLOPT_MAXFILESIZE_LARGE,
        static_cast<curl_off_t>(options_.max_response_body_bytes)));
    set(curl_easy_setopt(curl_, CURLOPT_SSL_VERIFYPEER,
                         options_.verify_tls ? 1L : 0L));
    set(curl_easy_setopt(curl_, CURLOPT_SSL_VERIFYHOST,
                         options_.verify_tls ? 2L : 0L));
    if (!options_.ca_file.empty()) {
      set(curl_easy_setopt(curl_, CURLOPT_CAINFO, options_.ca_file.c_str()));
    }
    if (!HasHeader(request.headers, "User-Agent")) {
      set(curl_easy_setopt(curl_, CURLOPT_USERAGENT,
                           options_.user_agent.c_str()));
    }
    set(curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, headers.get()));
    set(curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, &OnBody));
    set(curl_easy_setopt(curl_, CURLOPT_WRITEDATA, &exchange));
    set(curl_easy_setopt(curl_, CURLOPT_HEADERFUNCTION, &OnHeader));
    set(curl_easy_setopt(curl_, CURLOPT_HEADERDATA, &exchange));

    if (request.method == "HEAD") {
      set(curl_easy_setopt(curl_, CURLOPT_NOBODY, 1L));
    } else if (request.method == "GET" && request.body.empty()) {
      set(curl_easy_setopt(curl_, CURLOPT_HTTPGET, 1L));
    } else {
      if (request.method != "POST") {
        set(curl_easy_setopt(curl_, CURLOPT_CUSTOMREQUEST,
                             request.method.c_str()));
      }
      if (request.method == "POST" || !request.body.empty()) {
        // Not copied: `request` outlives the exchange.
        set(curl_easy_setopt(curl_, CURLOPT_POSTFIELDS, request.body.data()));
        set(curl_easy_setopt(curl_, CURLOPT_POSTFIELDSIZE_LARGE,
                             static_cast<curl_off_t>(request.body.size())));
      }
    }
    if (rc != CURLE_OK) {
      return absl::InternalError(
          absl::StrCat("configuring libcurl: ", curl_easy_strerror(rc)));
    }

    rc = curl_easy_perform(curl_);
    // Leave no pointers to this stack frame in the handle.
    curl_easy_setopt(curl_, CURLOPT_ERRORBUFFER, nullptr);
    curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, nullptr);
    if (rc != CURLE_OK) {
      return MapCurlError(rc, exchange, request, error,
                          options_.max_response_body_bytes);
    }
    long status = 0;
    curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &status);
    exchange.response.status_code = static_cast<int>(status);
    return std::move(exchange.response);
  }

 private:
  static bool AppendHeader(SList& list, const std::string& line) {
    curl_slist* appended = curl_slist_append(list.get(), line.c_str());
    if (appended == nullptr) return false;
    list.release();
    list.reset(appended);
    return true;
  }

  const CurlHttpClientOptions options_;
  absl::Mutex mu_;
  CURL* const curl_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<HttpClient>> NewCurlHttpClient(
    const CurlHttpClientOptions& options) {
  if (options.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("connect_timeout must be positive");
  }
  if (options.max_response_body_bytes == 0) {
    return absl::InvalidArgumentError(
        "max_response_body_bytes must be positive");
  }
  static std::once_flag init_once;
  static CURLcode init_rc = CURLE_OK;
  std::call_once(init_once,
                 [] { init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (init_rc != CURLE_OK) {
    return absl::InternalError(
        absl::StrCat("curl_global_init: ", curl_easy_strerror(init_rc)));
  }
  CURL* handle = curl_easy_init();
  if (handle == nullptr) return absl::InternalError("curl_easy_init failed");
  return std::make_unique<CurlHttpClient>(options, handle);
}

}  // namespace fleetd
