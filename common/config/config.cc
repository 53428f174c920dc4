#include "common/config/config.h"

#include <cstdlib>
#include <limits>
#include <utility>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace fleetd {
namespace {

absl::Status Invalid(absl::string_view name, absl::string_view value,
                     absl::string_view want) {
  return absl::InvalidArgumentError(
      absl::StrCat(name, ": invalid value \"", value, "\" (want ", want, ")"));
}

}  // namespace

EnvLookup ProcessEnv() {
  return [](absl::string_view name) -> std::optional<std::string> {
    const char* v = std::getenv(std::string(name).c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

EnvLookup MapEnv(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](
             absl::string_view name) -> std::optional<std::string> {
    auto it = vars.find(std::string(name));
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

absl::StatusOr<absl::Duration> ParseDurationSetting(absl::string_view name,
                                                    absl::string_view value) {
  absl::string_view v = absl::StripAsciiWhitespace(value);
  int64_t seconds;
  if (absl::SimpleAtoi(v, &seconds)) {
    if (seconds < 0) return Invalid(name, value, "a non-negative duration");
    return absl::Seconds(seconds);
  }
  // Days ("7d", "1d12h") are not in absl's syntax: take a leading day count
  // first.
  absl::Duration days = absl::ZeroDuration();
  size_t d_pos = v.find('d');
  if (d_pos != absl::string_view::npos && d_pos > 0) {
    int64_t n;
    if (absl::SimpleAtoi(v.substr(0, d_pos), &n) && n >= 0 && n < 100'000) {
      days = absl::Hours(24 * n);
      v.remove_prefix(d_pos + 1);
      if (v.empty()) return days;
    }
  }
  absl::Duration d;
  if (v.empty() || !absl::ParseDuration(v, &d) || d < absl::ZeroDuration() ||
      d == absl::InfiniteDuration()) {
    return Invalid(name, value, "a duration such as 60s, 5m, 1h30m or 7d");
  }
  return days + d;
}

absl::StatusOr<int64_t> ParseByteSizeSetting(absl::string_view name,
                                             absl::string_view value) {
  std::string v = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(value));
  struct Unit {
    const char* suffix;
    int64_t factor;
  };
  static constexpr Unit kUnits[] = {{"KIB", int64_t{1} << 10},
                                    {"MIB", int64_t{1} << 20},
                                    {"GIB", int64_t{1} << 30},
                                    {"KB", 1000},
                                    {"MB", 1000 * 1000},
                                    {"GB", 1000 * 1000 * 1000},
                                    {"B", 1}};
  int64_t factor = 1;
  absl::string_view number = v;
  for (const Unit& u : kUnits) {
    absl::string_view suffix(u.suffix);
    if (number.size() > suffix.size() &&
        number.substr(number.size() - suffix.size()) == suffix) {
      factor = u.factor;
      number.remove_suffix(suffix.size());
      break;
    }
  }
  int64_t n;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(number), &n) || n < 0 ||
      n > std::numeric_limits<int64_t>::max() / factor) {
    return Invalid(name, value, "a byte size such as 5MB, 100MiB or 1048576");
  }
  return n * factor;
}

absl::StatusOr<int64_t> ParseIntSetting(absl::string_view name,
                                        absl::string_view value, int64_t min,
                                        int64_t max) {
  int64_t n;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(value), &n) || n < min ||
      n > max) {
    return Invalid(name, value,
                   absl::StrCat("an integer from ", min, " to ", max));
  }
  return n;
}

absl::StatusOr<bool> ParseBoolSetting(absl::string_view name,
                                      absl::string_view value) {
  std::string v = absl::AsciiStrToLower(absl::StripAsciiWhitespace(value));
  if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
  if (v == "0" || v == "false" || v == "no" || v == "off") return false;
  return Invalid(name, value, "true or false");
}

struct Settings::Entry {
  Info info;
  std::function<absl::Status(absl::string_view, absl::string_view)> apply;
  CLI::Option* option = nullptr;
  std::string flag_value;
  bool was_set = false;
};

Settings::Settings() = default;
Settings::~Settings() = default;

Settings& Settings::Add(
    Info info,
    std::function<absl::Status(absl::string_view, absl::string_view)> apply) {
  auto e = std::make_unique<Entry>();
  e->info = std::move(info);
  e->apply = std::move(apply);
  entries_.push_back(std::move(e));
  return *this;
}

Settings& Settings::String(std::string env, std::string flag, std::string help,
                           std::string* target) {
  return Add({env, flag, help, *target},
             [target](absl::string_view, absl::string_view v) {
               *target = std::string(v);
               return absl::OkStatus();
             });
}

Settings& Settings::Choice(std::string env, std::string flag, std::string help,
                           std::string* target,
                           std::vector<std::string> allowed) {
  help = absl::StrCat(help, " (one of: ", absl::StrJoin(allowed, ", "), ")");
  return Add({env, flag, help, *target},
             [target, allowed](absl::string_view name, absl::string_view v) {
               for (const auto& a : allowed) {
                 if (a == v) {
                   *target = a;
                   return absl::OkStatus();
                 }
               }
               return Invalid(
                   name, v,
                   absl::StrCat("one of ", absl::StrJoin(allowed, ", ")));
             });
}

Settings& Settings::Int(std::string env, std::string flag, std::string help,
                        int64_t* target, int64_t min, int64_t max) {
  return Add({env, flag, help, absl::StrCat(*target)},
             [target, min, max](absl::string_view name, absl::string_view v) {
               auto n = ParseIntSetting(name, v, min, max);
               if (!n.ok()) return n.status();
               *target = *n;
               return absl::OkStatus();
             });
}

Settings& Settings::Int32(std::string env, std::string flag, std::string help,
                          int32_t* target, int32_t min, int32_t max) {
  return Add({env, flag, help, absl::StrCat(*target)},
             [target, min, max](absl::string_view name, absl::string_view v) {
               auto n = ParseIntSetting(name, v, min, max);
               if (!n.ok()) return n.status();
               *target = static_cast<int32_t>(*n);
               return absl::OkStatus();
             });
}

Settings& Settings::Duration(std::string env, std::string flag,
                             std::string help, absl::Duration* target) {
  return Add({env, flag, help, absl::FormatDuration(*target)},
             [target](absl::string_view name, absl::string_view v) {
               auto d = ParseDurationSetting(name, v);
               if (!d.ok()) return d.status();
               *target = *d;
               return absl::OkStatus();
             });
}

Settings& Settings::Bytes(std::string env, std::string flag, std::string help,
                          int64_t* target) {
  return Add({env, flag, help, absl::StrCat(*target)},
             [target](absl::string_view name, absl::string_view v) {
               auto n = ParseByteSizeSetting(name, v);
               if (!n.ok()) return n.status();
               *target = *n;
               return absl::OkStatus();
             });
}

Settings& Settings::Bool(std::string env, std::string flag, std::string help,
                         bool* target) {
  return Add({env, flag, help, *target ? "true" : "false"},
             [target](absl::string_view name, absl::string_view v) {
               auto b = ParseBoolSetting(name, v);
               if (!b.ok()) return b.status();
               *target = *b;
               return absl::OkStatus();
             });
}

void Settings::AddFlags(CLI::App* app) {
  for (auto& e : entries_) {
    if (e->info.flag.empty()) continue;
    std::string description = e->info.help;
    if (!e->info.env.empty())
      absl::StrAppend(&description, " [env ", e->info.env, "]");
    if (!e->info.default_text.empty()) {
      absl::StrAppend(&description, " (default ", e->info.default_text, ")");
    }
    e->option =
        app->add_option("--" + e->info.flag, e->flag_value, description);
  }
}

absl::Status Settings::Resolve(const EnvLookup& env) {
  for (auto& e : entries_) {
    e->was_set = false;
    if (e->option != nullptr && e->option->count() > 0) {
      absl::Status s = e->apply("--" + e->info.flag, e->flag_value);
      if (!s.ok()) return s;
      e->was_set = true;
      continue;
    }
    if (e->info.env.empty()) continue;
    std::optional<std::string> v = env(e->info.env);
    if (!v.has_value()) continue;
    absl::Status s = e->apply(e->info.env, *v);
    if (!s.ok()) return s;
    e->was_set = true;
  }
  return absl::OkStatus();
}

bool Settings::WasSet(absl::string_view env) const {
  for (const auto& e : entries_) {
    if (e->info.env == env) return e->was_set;
  }
  return false;
}

std::vector<Settings::Info> Settings::infos() const {
  std::vector<Info> out;
  out.reserve(entries_.size());
  for (const auto& e : entries_) out.push_back(e->info);
  return out;
}

}  // namespace fleetd
