// Configuration from environment variables and command-line flags, in one
// place.
//
// Each component declares its settings once (environment variable, flag, help,
// default, type) on a Settings object. A flag given on the command line wins
// over the environment, which wins over the default. Every value is parsed and
// validated up front, and an invalid one fails with InvalidArgument naming the
// variable or flag it came from. The declared settings are also what the
// README's configuration reference is checked against.
#ifndef FLEETD_COMMON_CONFIG_CONFIG_H_
#define FLEETD_COMMON_CONFIG_CONFIG_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace fleetd {

// Looks up an environment variable; nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(absl::string_view)>;
// The process environment (getenv).
EnvLookup ProcessEnv();
// A fixed environment, for tests.
EnvLookup MapEnv(std::map<std::string, std::string> vars);

// Value parsers. `name` is only used in the error message.
// Durations: "250ms", "60s", "5m", "1h30m", "7d", "1d12h"; a bare integer means
// seconds.
absl::StatusOr<absl::Duration> ParseDurationSetting(absl::string_view name,
                                                    absl::string_view value);
// Byte sizes: "1048576", "512KB", "100MB", "5MiB", "2GB" (KB/MB/GB are powers
// of 1000, KiB/MiB/GiB powers of 1024).
absl::StatusOr<int64_t> ParseByteSizeSetting(absl::string_view name,
                                             absl::string_view value);
// Integers within [min, max].
absl::StatusOr<int64_t> ParseIntSetting(absl::string_view name,
                                        absl::string_view value, int64_t min,
                                        int64_t max);
// Booleans: 1/0, true/false, yes/no, on/off (case-insensitive).
absl::StatusOr<bool> ParseBoolSetting(absl::string_view name,
                                      absl::string_view value);

// A set of declared settings bound to caller-owned targets. The target's value
// at declaration time is the default. Not thread-safe; used once at start-up.
class Settings {
 public:
  struct Info {
    std::string env;  // e.g. "FLEET_GRPC_ADDR"; empty if flag-only
    std::string
        flag;  // e.g. "grpc-addr" (used as --grpc-addr); empty if env-only
    std::string help;
    std::string default_text;  // the default, as text
  };

  Settings();
  ~Settings();
  Settings(const Settings&) = delete;
  Settings& operator=(const Settings&) = delete;

  Settings& String(std::string env, std::string flag, std::string help,
                   std::string* target);
  // A string restricted to `allowed` values.
  Settings& Choice(std::string env, std::string flag, std::string help,
                   std::string* target, std::vector<std::string> allowed);
  Settings& Int(std::string env, std::string flag, std::string help,
                int64_t* target, int64_t min, int64_t max);
  Settings& Int32(std::string env, std::string flag, std::string help,
                  int32_t* target, int32_t min, int32_t max);
  Settings& Duration(std::string env, std::string flag, std::string help,
                     absl::Duration* target);
  Settings& Bytes(std::string env, std::string flag, std::string help,
                  int64_t* target);
  Settings& Bool(std::string env, std::string flag, std::string help,
                 bool* target);

  // Adds every setting with a flag as a `--flag VALUE` option of `app` (which
  // must outlive this object until Resolve()). Values are only captured here,
  // parsed in Resolve().
  void AddFlags(CLI::App* app);

  // Applies flag values (if AddFlags was used and the command line parsed),
  // else environment values, else keeps defaults. Returns the first invalid
  // value's error, naming
  // "--flag" or "ENV_VAR". Targets of settings before the failing one may have
  // been set.
  absl::Status Resolve(const EnvLookup& env);

  // Whether the setting for `env` came from the flag or the environment in
  // Resolve().
  bool WasSet(absl::string_view env) const;

  std::vector<Info> infos() const;

 private:
  struct Entry;
  Settings& Add(Info info, std::function<absl::Status(absl::string_view name,
                                                      absl::string_view value)>
                               apply);
  std::vector<std::unique_ptr<Entry>> entries_;
};

}  // namespace fleetd

#endif  // FLEETD_COMMON_CONFIG_CONFIG_H_
