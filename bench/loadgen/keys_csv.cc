#include "bench/loadgen/keys_csv.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace fleetd::bench {

absl::StatusOr<std::vector<DeviceKey>> ParseKeysCsv(absl::string_view text) {
  std::vector<DeviceKey> keys;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line, ',');
    for (absl::string_view& f : fields) f = absl::StripAsciiWhitespace(f);
    if (fields.size() == 3 && fields[0] == "device_id") continue;  // header
    if (fields.size() != 3 || fields[0].empty() || fields[1].empty() ||
        fields[2].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("keys CSV line ", line_number,
                       ": want device_id,org_id,key, got \"", line, "\""));
    }
    keys.push_back(DeviceKey{std::string(fields[0]), std::string(fields[1]),
                             std::string(fields[2])});
  }
  return keys;
}

absl::StatusOr<std::vector<DeviceKey>> LoadKeysCsv(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ParseKeysCsv(buffer.str());
}

}  // namespace fleetd::bench
