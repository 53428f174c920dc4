#include "agent/collect/ingest_formats.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/collect/collect_util.h"
#include "common/text/utf8.h"
#include "nlohmann/json.hpp"

namespace fleetd::agent {
namespace {

using collect_internal::InProtoTimestampRange;
using collect_internal::ToProtoTimestamp;
using ::fleetd::IsValidUtf8;

absl::Status LineError(size_t line, absl::string_view reason) {
  return absl::InvalidArgumentError(absl::StrCat("line ", line, ": ", reason));
}

// A cursor over one line of the text format.
class Cursor {
 public:
  explicit Cursor(absl::string_view s) : s_(s) {}
  bool done() const { return i_ >= s_.size(); }
  char peek() const { return done() ? '\0' : s_[i_]; }
  void next() { ++i_; }
  size_t pos() const { return i_; }
  absl::string_view rest() const { return s_.substr(i_); }
  // Skips blanks; returns whether there were any.
  bool SkipBlanks() {
    size_t start = i_;
    while (!done() && (s_[i_] == ' ' || s_[i_] == '\t')) ++i_;
    return i_ > start;
  }
  // The longest run of chars with `first` at the start and `rest` after.
  template <typename F, typename R>
  absl::string_view Take(F first, R rest) {
    size_t start = i_;
    if (done() || !first(s_[i_])) return {};
    ++i_;
    while (!done() && rest(s_[i_])) ++i_;
    return s_.substr(start, i_ - start);
  }
  absl::string_view TakeToken() {
    size_t start = i_;
    while (!done() && s_[i_] != ' ' && s_[i_] != '\t') ++i_;
    return s_.substr(start, i_ - start);
  }

 private:
  absl::string_view s_;
  size_t i_ = 0;
};

bool IsNameStart(char c) {
  return absl::ascii_isalpha(c) || c == '_' || c == ':';
}
bool IsNameChar(char c) {
  return absl::ascii_isalnum(c) || c == '_' || c == ':';
}
bool IsLabelStart(char c) { return absl::ascii_isalpha(c) || c == '_'; }
bool IsLabelChar(char c) { return absl::ascii_isalnum(c) || c == '_'; }

// [+-]? (digits [. digits*] | . digits) ([eE] [+-]? digits)?
bool IsDecimal(absl::string_view s) {
  size_t i = 0;
  const auto digits = [&] {
    size_t start = i;
    while (i < s.size() && absl::ascii_isdigit(s[i])) ++i;
    return i - start;
  };
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  size_t mantissa = digits();
  if (i < s.size() && s[i] == '.') {
    ++i;
    mantissa += digits();
  }
  if (mantissa == 0) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    if (digits() == 0) return false;
  }
  return i == s.size();
}

absl::Status ParseLabelValue(Cursor& c, std::string* out) {
  if (c.peek() != '"') return absl::InvalidArgumentError("expected '\"'");
  c.next();
  while (true) {
    if (c.done()) return absl::InvalidArgumentError("unterminated label value");
    char ch = c.peek();
    c.next();
    if (ch == '"') break;
    if (ch != '\\') {
      out->push_back(ch);
      continue;
    }
    if (c.done()) return absl::InvalidArgumentError("unterminated label value");
    char esc = c.peek();
    c.next();
    switch (esc) {
      case '\\':
        out->push_back('\\');
        break;
      case '"':
        out->push_back('"');
        break;
      case 'n':
        out->push_back('\n');
        break;
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("invalid escape \"\\", std::string(1, esc),
                         "\" in label value (only \\\\, \\\" and \\n)"));
    }
  }
  if (!IsValidUtf8(*out)) {
    return absl::InvalidArgumentError("label value is not valid UTF-8");
  }
  return absl::OkStatus();
}

absl::Status ParseSampleLine(absl::string_view line, absl::Time default_time,
                             v1::Metric* m) {
  Cursor c(line);
  c.SkipBlanks();
  absl::string_view name = c.Take(IsNameStart, IsNameChar);
  if (name.empty()) return absl::InvalidArgumentError("invalid metric name");
  m->set_name(std::string(name));
  c.SkipBlanks();
  if (c.peek() == '{') {
    c.next();
    std::set<std::string> seen;
    while (true) {
      c.SkipBlanks();
      if (c.peek() == '}') {
        c.next();
        break;
      }
      absl::string_view label = c.Take(IsLabelStart, IsLabelChar);
      if (label.empty()) {
        return absl::InvalidArgumentError(c.done() ? "unterminated label set"
                                                   : "invalid label name");
      }
      if (!seen.insert(std::string(label)).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("label \"", label, "\" given twice"));
      }
      c.SkipBlanks();
      if (c.peek() != '=') {
        return absl::InvalidArgumentError(
            absl::StrCat("expected '=' after label \"", label, "\""));
      }
      c.next();
      c.SkipBlanks();
      std::string value;
      absl::Status s = ParseLabelValue(c, &value);
      if (!s.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("label \"", label, "\": ", s.message()));
      }
      (*m->mutable_labels())[std::string(label)] = std::move(value);
      c.SkipBlanks();
      if (c.peek() == ',') {
        c.next();
      } else if (c.peek() != '}') {
        return absl::InvalidArgumentError(
            "expected ',' or '}' after a label value");
      }
    }
  }
  c.SkipBlanks();
  absl::string_view value = c.TakeToken();
  if (value.empty()) return absl::InvalidArgumentError("missing value");
  std::string lower = absl::AsciiStrToLower(value);
  if (absl::StrContains(lower, "nan") || absl::StrContains(lower, "inf")) {
    return absl::InvalidArgumentError(
        absl::StrCat("non-finite value \"", value, "\" is not accepted"));
  }
  double v;
  if (!IsDecimal(value) || !absl::SimpleAtod(value, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid value \"", value, "\""));
  }
  if (!std::isfinite(v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("value \"", value, "\" is out of range"));
  }
  m->set_value(v);
  absl::Time t = default_time;
  c.SkipBlanks();
  if (!c.done()) {
    absl::string_view ts = c.TakeToken();
    int64_t ms;
    bool digits_only =
        !ts.empty() &&
        std::all_of(ts.begin() + (ts[0] == '-' ? 1 : 0), ts.end(),
                    [](char ch) { return absl::ascii_isdigit(ch); });
    if (!digits_only || !absl::SimpleAtoi(ts, &ms)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid timestamp \"", ts, "\" (integer milliseconds expected)"));
    }
    t = absl::FromUnixMillis(ms);
    if (!InProtoTimestampRange(t)) {
      return absl::InvalidArgumentError(
          absl::StrCat("timestamp ", ms, " is out of range"));
    }
    c.SkipBlanks();
    if (!c.done()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected \"", c.rest(), "\" after the timestamp"));
    }
  }
  *m->mutable_timestamp() = ToProtoTimestamp(t);
  return absl::OkStatus();
}

// Splits into lines (without "\n" and a trailing "\r").
std::vector<absl::string_view> Lines(absl::string_view text) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  for (absl::string_view& l : lines) {
    if (absl::EndsWith(l, "\r")) l.remove_suffix(1);
  }
  return lines;
}

absl::StatusOr<std::string> NormalizeLevel(absl::string_view level) {
  std::string l = absl::AsciiStrToLower(level);
  if (l == "trace" || l == "debug") return std::string("debug");
  if (l == "info" || l == "notice") return std::string("info");
  if (l == "warn" || l == "warning") return std::string("warn");
  if (l == "error" || l == "err") return std::string("error");
  if (l == "fatal" || l == "critical" || l == "crit" || l == "panic" ||
      l == "emerg" || l == "alert") {
    return std::string("fatal");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown level \"", level, "\""));
}

absl::StatusOr<absl::Time> ParseLogTimestamp(const nlohmann::json& j) {
  absl::Time t;
  if (j.is_string()) {
    std::string err;
    if (!absl::ParseTime(absl::RFC3339_full, j.get<std::string>(), &t, &err)) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"timestamp\" is not RFC 3339: ", err));
    }
  } else if (j.is_number_integer()) {
    t = absl::FromUnixMillis(j.get<int64_t>());
  } else if (j.is_number()) {
    double ms = j.get<double>();
    // Beyond +-1e15 ms (year ~33000) nothing is in range anyway.
    if (!std::isfinite(ms) || std::abs(ms) > 1e15) {
      return absl::InvalidArgumentError("\"timestamp\" is out of range");
    }
    t = absl::UnixEpoch() + absl::Milliseconds(ms);
  } else {
    return absl::InvalidArgumentError(
        "\"timestamp\" must be an RFC 3339 string or unix milliseconds");
  }
  if (!InProtoTimestampRange(t)) {
    return absl::InvalidArgumentError("\"timestamp\" is out of range");
  }
  return t;
}

absl::Status ParseLogLine(absl::string_view line, absl::Time default_time,
                          v1::LogEntry* e) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line.begin(), line.end());
  } catch (const nlohmann::json::exception& ex) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid JSON: ", ex.what()));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError("expected a JSON object");
  }
  bool has_message = false;
  e->set_level("info");
  e->set_source("ingest");
  absl::Time t = default_time;
  for (const auto& [key, value] : j.items()) {
    if (key == "message") {
      if (!value.is_string()) {
        return absl::InvalidArgumentError("\"message\" must be a string");
      }
      e->set_message(value.get<std::string>());
      has_message = true;
    } else if (key == "level") {
      if (!value.is_string()) {
        return absl::InvalidArgumentError("\"level\" must be a string");
      }
      absl::StatusOr<std::string> level =
          NormalizeLevel(value.get<std::string>());
      if (!level.ok()) return level.status();
      e->set_level(*level);
    } else if (key == "source") {
      if (!value.is_string()) {
        return absl::InvalidArgumentError("\"source\" must be a string");
      }
      e->set_source(value.get<std::string>());
    } else if (key == "fields") {
      if (!value.is_object()) {
        return absl::InvalidArgumentError("\"fields\" must be an object");
      }
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "\"fields\": value of \"", k, "\" must be a string"));
        }
        (*e->mutable_fields())[k] = v.get<std::string>();
      }
    } else if (key == "timestamp") {
      absl::StatusOr<absl::Time> parsed = ParseLogTimestamp(value);
      if (!parsed.ok()) return parsed.status();
      t = *parsed;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown key \"", key,
          "\" (allowed: message, level, source, fields, timestamp)"));
    }
  }
  if (!has_message) return absl::InvalidArgumentError("missing \"message\"");
  *e->mutable_timestamp() = ToProtoTimestamp(t);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<v1::Metric>> ParsePrometheusText(
    absl::string_view text, absl::Time default_time) {
  std::vector<v1::Metric> out;
  size_t n = 0;
  for (absl::string_view line : Lines(text)) {
    ++n;
    absl::string_view trimmed = absl::StripLeadingAsciiWhitespace(line);
    if (trimmed.empty() || trimmed[0] == '#') continue;
    v1::Metric m;
    absl::Status s = ParseSampleLine(line, default_time, &m);
    if (!s.ok()) return LineError(n, s.message());
    out.push_back(std::move(m));
  }
  return out;
}

absl::StatusOr<std::vector<v1::LogEntry>> ParseJsonLogLines(
    absl::string_view text, absl::Time default_time) {
  std::vector<v1::LogEntry> out;
  size_t n = 0;
  for (absl::string_view line : Lines(text)) {
    ++n;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    v1::LogEntry e;
    absl::Status s = ParseLogLine(line, default_time, &e);
    if (!s.ok()) return LineError(n, s.message());
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace fleetd::agent
