#include "agent/api/legacy_quarantine.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <system_error>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/status/status_macros.h"
#include "fleetd/v1/sync.pb.h"
#include "glog/logging.h"

namespace fleetd::agent {
namespace {

// Larger files were never written by an agent (batches are bounded well
// below this); refusing them keeps a stray file from exhausting memory.
constexpr std::uintmax_t kMaxFileBytes = 64 << 20;

struct FileName {
  std::string stream;
  RecordKind kind;
  int64_t sequence_number;
};

std::optional<FileName> ParseName(absl::string_view name) {
  if (!absl::ConsumeSuffix(&name, ".pb")) return std::nullopt;
  size_t dash = name.rfind('-');
  if (dash == absl::string_view::npos) return std::nullopt;
  FileName f;
  f.stream = std::string(name.substr(0, dash));
  if (!absl::SimpleAtoi(name.substr(dash + 1), &f.sequence_number)) {
    return std::nullopt;
  }
  if (f.stream == "metrics") {
    f.kind = RecordKind::kMetric;
  } else if (f.stream == "logs") {
    f.kind = RecordKind::kLog;
  } else if (f.stream == "events") {
    f.kind = RecordKind::kEvent;
  } else {
    return std::nullopt;
  }
  return f;
}

// Appends the records of the serialized batch `data` of `kind`.
absl::StatusOr<IdRange> AppendBatch(RecordKind kind, const std::string& data,
                                    Storage* storage) {
  auto parse_error = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("not a serialized ", RecordKindName(kind), " batch"));
  };
  switch (kind) {
    case RecordKind::kMetric: {
      v1::MetricsBatch b;
      if (!b.ParseFromString(data)) return parse_error();
      std::vector<v1::Metric> records(
          std::make_move_iterator(b.mutable_metrics()->begin()),
          std::make_move_iterator(b.mutable_metrics()->end()));
      return storage->AppendMetrics(records);
    }
    case RecordKind::kLog: {
      v1::LogsBatch b;
      if (!b.ParseFromString(data)) return parse_error();
      std::vector<v1::LogEntry> records(
          std::make_move_iterator(b.mutable_logs()->begin()),
          std::make_move_iterator(b.mutable_logs()->end()));
      return storage->AppendLogs(records);
    }
    case RecordKind::kEvent: {
      v1::EventsBatch b;
      if (!b.ParseFromString(data)) return parse_error();
      std::vector<v1::Event> records(
          std::make_move_iterator(b.mutable_events()->begin()),
          std::make_move_iterator(b.mutable_events()->end()));
      return storage->AppendEvents(records);
    }
  }
  return parse_error();
}

absl::Status ImportFile(const std::filesystem::path& path, const FileName& f,
                        Storage* storage, LegacyImport* out) {
  std::error_code ec;
  std::uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) return absl::UnavailableError(ec.message());
  if (size > kMaxFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("larger than ", kMaxFileBytes, " bytes"));
  }
  std::ifstream in(path, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) return absl::UnavailableError("read failed");
  ASSIGN_OR_RETURN(IdRange ids, AppendBatch(f.kind, data, storage));
  if (!ids.empty()) {
    SetAsideBatch batch;
    batch.stream = f.stream;
    batch.kind = f.kind;
    batch.sequence_number = f.sequence_number;
    batch.ids = ids;
    batch.record_count = static_cast<int32_t>(ids.size());
    batch.reason =
        "set aside by an earlier agent version (imported from its plaintext "
        "quarantine directory; the cause may have been a proxy, not the "
        "server)";
    RETURN_IF_ERROR(storage->SetAside(batch));
    ++out->batches;
    out->records += ids.size();
  }
  std::filesystem::remove(path, ec);
  if (ec) {
    LOG(WARNING) << "imported " << path
                 << " but cannot remove it: " << ec.message();
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LegacyImport> ImportLegacyQuarantine(const std::string& dir,
                                                    Storage* storage) {
  LegacyImport out;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return out;
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.is_regular_file()) files.push_back(entry.path());
  }
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot list ", dir, ": ", ec.message()));
  }
  std::sort(files.begin(), files.end());  // oldest sequence numbers first
  for (const auto& path : files) {
    std::optional<FileName> f = ParseName(path.filename().string());
    absl::Status s = f.has_value()
                         ? ImportFile(path, *f, storage, &out)
                         : absl::InvalidArgumentError("unexpected file name");
    if (!s.ok()) {
      ++out.skipped;
      LOG(WARNING) << "left " << path << " in place: " << s;
    }
  }
  if (out.batches > 0) {
    LOG(WARNING) << "moved " << out.batches << " batches (" << out.records
                 << " records) from " << dir
                 << " into the store's set-aside area; deliver them with "
                    "`fleetd quarantine retry --all`";
  }
  std::filesystem::remove(dir, ec);  // only succeeds once empty
  return out;
}

}  // namespace fleetd::agent
