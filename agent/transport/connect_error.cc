#include "agent/transport/connect_error.h"

#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"

namespace fleetd::agent {
namespace {

struct CodeName {
  absl::StatusCode code;
  absl::string_view name;
};

// Connect spells CANCELLED with one "l".
constexpr CodeName kCodeNames[] = {
    {absl::StatusCode::kCancelled, "canceled"},
    {absl::StatusCode::kUnknown, "unknown"},
    {absl::StatusCode::kInvalidArgument, "invalid_argument"},
    {absl::StatusCode::kDeadlineExceeded, "deadline_exceeded"},
    {absl::StatusCode::kNotFound, "not_found"},
    {absl::StatusCode::kAlreadyExists, "already_exists"},
    {absl::StatusCode::kPermissionDenied, "permission_denied"},
    {absl::StatusCode::kResourceExhausted, "resource_exhausted"},
    {absl::StatusCode::kFailedPrecondition, "failed_precondition"},
    {absl::StatusCode::kAborted, "aborted"},
    {absl::StatusCode::kOutOfRange, "out_of_range"},
    {absl::StatusCode::kUnimplemented, "unimplemented"},
    {absl::StatusCode::kInternal, "internal"},
    {absl::StatusCode::kUnavailable, "unavailable"},
    {absl::StatusCode::kDataLoss, "data_loss"},
    {absl::StatusCode::kUnauthenticated, "unauthenticated"},
};

// How much of a non-Connect error body goes into the message.
constexpr size_t kBodyExcerptBytes = 200;

std::string BodyExcerpt(absl::string_view body) {
  std::string excerpt;
  for (char c : body.substr(0, kBodyExcerptBytes)) {
    excerpt.push_back(absl::ascii_isprint(static_cast<unsigned char>(c)) ? c
                                                                         : ' ');
  }
  excerpt = std::string(absl::StripAsciiWhitespace(excerpt));
  if (body.size() > kBodyExcerptBytes) absl::StrAppend(&excerpt, "...");
  return excerpt;
}

bool IsJsonContentType(absl::string_view content_type) {
  absl::string_view media = content_type.substr(0, content_type.find(';'));
  return absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(media),
                                "application/json");
}

}  // namespace

absl::string_view ConnectCodeName(absl::StatusCode code) {
  for (const auto& entry : kCodeNames) {
    if (entry.code == code) return entry.name;
  }
  return "";
}

std::optional<absl::StatusCode> ConnectCodeFromName(absl::string_view name) {
  for (const auto& entry : kCodeNames) {
    if (entry.name == name) return entry.code;
  }
  return std::nullopt;
}

absl::StatusCode CodeFromHttpStatus(int http_status) {
  switch (http_status) {
    case 400:
      return absl::StatusCode::kInternal;
    case 401:
      return absl::StatusCode::kUnauthenticated;
    case 403:
      return absl::StatusCode::kPermissionDenied;
    case 404:
      return absl::StatusCode::kUnimplemented;
    case 429:
      return absl::StatusCode::kResourceExhausted;
    case 502:
    case 503:
    case 504:
      return absl::StatusCode::kUnavailable;
    default:
      return absl::StatusCode::kUnknown;
  }
}

absl::Status StatusFromConnectError(int http_status,
                                    absl::string_view content_type,
                                    absl::string_view body,
                                    bool* connect_body) {
  if (connect_body != nullptr) *connect_body = false;
  if (IsJsonContentType(content_type)) {
    nlohmann::json json = nlohmann::json::parse(body.begin(), body.end(),
                                                /*cb=*/nullptr,
                                                /*allow_exceptions=*/false);
    if (json.is_object()) {
      auto code_it = json.find("code");
      if (code_it != json.end() && code_it->is_string()) {
        const std::string name = code_it->get<std::string>();
        std::string message;
        auto message_it = json.find("message");
        if (message_it != json.end() && message_it->is_string()) {
          message = message_it->get<std::string>();
        }
        if (connect_body != nullptr) *connect_body = true;
        std::optional<absl::StatusCode> code = ConnectCodeFromName(name);
        if (!code.has_value()) {
          return absl::UnknownError(
              absl::StrCat("unknown Connect error code \"", BodyExcerpt(name),
                           "\": ", message));
        }
        return absl::Status(*code, message);
      }
    }
  }
  return absl::Status(
      CodeFromHttpStatus(http_status),
      absl::StrCat("HTTP ", http_status, " without a Connect error",
                   body.empty() ? "" : ": ", BodyExcerpt(body)));
}

std::optional<absl::Duration> ParseRetryAfter(absl::string_view value,
                                              absl::Time now) {
  value = absl::StripAsciiWhitespace(value);
  if (value.empty()) return std::nullopt;
  if (std::all_of(value.begin(), value.end(),
                  [](char c) { return absl::ascii_isdigit(c); })) {
    int64_t seconds = 0;
    if (!absl::SimpleAtoi(value, &seconds)) return std::nullopt;
    return absl::Seconds(seconds);
  }
  absl::string_view date = value;
  if (!absl::ConsumeSuffix(&date, " GMT")) return std::nullopt;
  absl::Time when;
  std::string error;
  if (!absl::ParseTime("%a, %d %b %Y %H:%M:%S", date, absl::UTCTimeZone(),
                       &when, &error)) {
    return std::nullopt;
  }
  return std::max(when - now, absl::ZeroDuration());
}

}  // namespace fleetd::agent
