#include "agent/storage/record_validation.h"

#include <cstddef>
#include <string>

#include "absl/base/attributes.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/text/utf8.h"

namespace fleetd::agent {
namespace {

// Quoted names and values are cut to this many bytes before escaping.
constexpr size_t kQuoteLimit = 64;

std::string Quote(absl::string_view s) {
  std::string out =
      absl::StrCat("\"", absl::CHexEscape(s.substr(0, kQuoteLimit)), "\"");
  if (s.size() > kQuoteLimit) out += "...";
  return out;
}

// The error for `value`, whose valid prefix is `valid` bytes long. Kept out of
// line: the valid path is the hot one.
ABSL_ATTRIBUTE_NOINLINE absl::Status BadString(absl::string_view field,
                                               absl::string_view value,
                                               size_t valid) {
  return absl::InvalidArgumentError(absl::StrCat(
      field, " is not valid UTF-8 (byte 0x",
      absl::Hex(static_cast<unsigned char>(value[valid]), absl::kZeroPad2),
      " at offset ", valid,
      "); proto3 strings must be UTF-8 or the server cannot parse the batch"));
}

ABSL_ATTRIBUTE_NOINLINE absl::Status BadKey(absl::string_view map,
                                            absl::string_view key) {
  return absl::InvalidArgumentError(absl::StrCat(
      "a key of ", map, " is not valid UTF-8 (", Quote(key),
      "); proto3 strings must be UTF-8 or the server cannot parse the batch"));
}

absl::Status CheckString(absl::string_view field, absl::string_view value) {
  const size_t valid = ValidUtf8PrefixLength(value);
  if (valid == value.size()) return absl::OkStatus();
  return BadString(field, value, valid);
}

// A map<string, string>: keys and values.
template <typename Map>
absl::Status CheckStringMap(absl::string_view map, const Map& m) {
  for (const auto& [key, value] : m) {
    if (!IsValidUtf8(key)) return BadKey(map, key);
    const size_t valid = ValidUtf8PrefixLength(value);
    if (valid != value.size()) {
      return BadString(absl::StrCat(map, "[", Quote(key), "]"), value, valid);
    }
  }
  return absl::OkStatus();
}

// A map<string, non-string>: keys only.
template <typename Map>
absl::Status CheckMapKeys(absl::string_view map, const Map& m) {
  for (const auto& entry : m) {
    if (!IsValidUtf8(entry.first)) return BadKey(map, entry.first);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateRecordText(const v1::Metric& metric) {
  absl::Status s = CheckString("name", metric.name());
  if (s.ok()) s = CheckStringMap("labels", metric.labels());
  return s;
}

absl::Status ValidateRecordText(const v1::LogEntry& log) {
  absl::Status s = CheckString("level", log.level());
  if (s.ok()) s = CheckString("message", log.message());
  if (s.ok()) s = CheckString("source", log.source());
  if (s.ok()) s = CheckStringMap("fields", log.fields());
  return s;
}

absl::Status ValidateRecordText(const v1::Event& event) {
  absl::Status s = CheckString("name", event.name());
  if (s.ok()) s = CheckString("event_id", event.event_id());
  if (s.ok()) s = CheckStringMap("properties", event.properties());
  if (s.ok()) s = CheckMapKeys("values", event.values());
  return s;
}

}  // namespace fleetd::agent
