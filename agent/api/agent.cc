#include "agent/api/agent.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "agent/api/legacy_quarantine.h"
#include "agent/storage/memory_storage.h"
#include "agent/storage/sqlite_storage.h"
#include "common/status/status_macros.h"
#include "glog/logging.h"
#include "nlohmann/json.hpp"

namespace fleetd {
namespace {

constexpr char kAgentVersion[] = "0.1.0";

void SetTimestamp(google::protobuf::Timestamp* ts, absl::Time t) {
  int64_t nanos = absl::ToUnixNanos(t);
  ts->set_seconds(nanos / 1'000'000'000);
  ts->set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
}

std::string HostName() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0')
    return "unknown-device";
  return buf;
}

absl::Status EnsureDir(const std::string& dir) {
  if (dir.empty())
    return absl::InvalidArgumentError("FLEET_DATA_DIR: must not be empty");
  std::string partial;
  for (size_t i = 0; i <= dir.size(); ++i) {
    if (i == dir.size() || (dir[i] == '/' && i > 0)) {
      partial = dir.substr(0, i);
      if (mkdir(partial.c_str(), 0700) != 0 && errno != EEXIST) {
        return absl::FailedPreconditionError(
            absl::StrCat("FLEET_DATA_DIR: cannot create ", partial, ": ",
                         std::strerror(errno)));
      }
    }
  }
  if (access(dir.c_str(), W_OK | X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "FLEET_DATA_DIR: ", dir, " is not writable: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// Totals over the record kinds of what delivery could not do: set-aside
// batches and their records, set-aside records dropped, unsynced records
// evicted to stay within the quota.
struct DeliveryHealth {
  int64_t set_aside_batches = 0;
  int64_t set_aside_records = 0;
  int64_t set_aside_dropped = 0;
  int64_t evicted_unsynced = 0;
};

DeliveryHealth HealthOf(const agent::StorageInfo& info) {
  DeliveryHealth h;
  h.set_aside_batches = info.set_aside_batches;
  for (const agent::KindInfo& k : info.kinds) {
    h.set_aside_records += k.set_aside;
    h.set_aside_dropped += k.set_aside_dropped;
    h.evicted_unsynced += k.dropped_unsynced;
  }
  return h;
}

// RFC 3339 in UTC, to the second, with a "Z".
std::string Rfc3339(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

nlohmann::json SetAsideJson(const agent::SetAsideBatch& b) {
  nlohmann::json j;
  j["stream"] = b.stream;
  j["kind"] = std::string(agent::RecordKindName(b.kind));
  j["sequence_number"] = b.sequence_number;
  j["first_id"] = b.ids.first;
  j["last_id"] = b.ids.last;
  j["records"] = b.record_count;
  j["reason"] = b.reason;
  j["set_aside_at"] = Rfc3339(b.set_aside_at);
  return j;
}

nlohmann::json InfoJson(const agent::StorageInfo& info) {
  nlohmann::json j;
  const DeliveryHealth health = HealthOf(info);
  j["set_aside_batches"] = health.set_aside_batches;
  j["set_aside_records"] = health.set_aside_records;
  j["set_aside_dropped"] = health.set_aside_dropped;
  j["backend"] = info.backend;
  j["bytes_used"] = info.bytes_used;
  j["max_bytes"] = info.max_bytes;
  j["full_events"] = info.full_events;
  if (info.oldest_record_time.has_value()) {
    j["oldest_record"] = absl::FormatTime(
        absl::RFC3339_sec, *info.oldest_record_time, absl::UTCTimeZone());
  }
  for (agent::RecordKind k :
       {agent::RecordKind::kMetric, agent::RecordKind::kLog,
        agent::RecordKind::kEvent}) {
    const agent::KindInfo& ki = info.of(k);
    nlohmann::json kj;
    kj["unsynced"] = ki.unsynced;
    kj["synced"] = ki.synced;
    kj["dropped_unsynced"] = ki.dropped_unsynced;
    kj["evicted_synced"] = ki.evicted_synced;
    kj["cleaned"] = ki.cleaned;
    kj["set_aside"] = ki.set_aside;
    kj["set_aside_dropped"] = ki.set_aside_dropped;
    if (ki.oldest_unsynced_time.has_value()) {
      kj["oldest_unsynced"] = absl::FormatTime(
          absl::RFC3339_sec, *ki.oldest_unsynced_time, absl::UTCTimeZone());
    }
    j["kinds"][std::string(agent::RecordKindName(k))] = kj;
  }
  for (const auto& [k, v] : info.details) j["details"][k] = v;
  return j;
}

nlohmann::json MetricsJson(const agent::SyncMetricsSnapshot& m) {
  nlohmann::json j;
  j["metrics_synced"] = m.metrics_synced;
  j["logs_synced"] = m.logs_synced;
  j["events_synced"] = m.events_synced;
  j["bytes_sent"] = m.bytes_sent;
  j["bytes_compressed"] = m.bytes_compressed;
  j["compression_ratio"] = m.compression_ratio;
  j["successful_syncs"] = m.successful_syncs;
  j["failed_syncs"] = m.failed_syncs;
  j["consecutive_failures"] = m.consecutive_failures;
  j["last_sync_duration_ms"] = absl::ToInt64Milliseconds(m.last_sync_duration);
  j["set_aside_batches_since_start"] = m.set_aside_batches;
  j["set_aside_records_since_start"] = m.set_aside_records;
  j["sync_latency_p50_ms"] = absl::ToDoubleMilliseconds(m.latency_p50);
  j["sync_latency_p95_ms"] = absl::ToDoubleMilliseconds(m.latency_p95);
  j["sync_latency_p99_ms"] = absl::ToDoubleMilliseconds(m.latency_p99);
  j["duplicates_acknowledged"] = m.duplicates_acknowledged;
  j["state"] = m.state;
  j["last_error"] = m.last_error;
  if (m.last_success.has_value()) {
    j["last_success"] = absl::FormatTime(absl::RFC3339_sec, *m.last_success,
                                         absl::UTCTimeZone());
  }
  return j;
}

std::string Error(const absl::Status& s) {
  nlohmann::json j;
  j["ok"] = false;
  j["error"] = s.ToString();
  return j.dump();
}

}  // namespace

absl::StatusOr<agent::AgentProfile> DetectCapabilities(
    const std::string& data_dir, const EnvLookup& overrides) {
  std::unique_ptr<agent::SystemProbe> probe = agent::NewRealSystemProbe();
  ASSIGN_OR_RETURN(agent::SystemInfo system,
                   agent::DetectSystem(*probe, data_dir));
  return agent::ResolveProfile(system, overrides ? overrides : MapEnv({}));
}

absl::StatusOr<std::unique_ptr<agent::Storage>> CreateStorage(
    const agent::AgentProfile& profile, const std::string& data_dir,
    const std::string& key, Clock* clock) {
  if (profile.storage_mode == agent::StorageMode::kMemory) {
    agent::MemoryStorageOptions o;
    o.capacity_bytes = profile.memory_buffer_bytes;
    o.clock = clock;
    return agent::NewMemoryStorage(o);
  }
  agent::SqliteStorageOptions o;
  o.data_dir = data_dir;
  o.max_bytes = profile.storage_max_bytes;
  o.encryption_key = key;
  o.clock = clock;
  return agent::OpenSqliteStorage(o);
}

absl::StatusOr<std::unique_ptr<agent::SyncTransport>> CreateSyncClient(
    const std::string& transport, const std::string& server_url,
    const std::string& api_key, const std::string& ca_file, Clock* clock) {
  agent::TransportOptions o;
  o.kind = transport;
  o.server_url = server_url;
  o.api_key = api_key;
  o.ca_file = ca_file;
  o.clock = clock;
  return agent::NewTransport(o);
}

absl::StatusOr<std::unique_ptr<Agent>> Agent::Create(AgentOptions options) {
  std::unique_ptr<Agent> a(new Agent());
  a->clock_ = options.clock != nullptr ? options.clock : Clock::Real();
  if (options.device_id.empty()) options.device_id = HostName();
  EnvLookup env = options.overrides ? options.overrides : MapEnv({});
  RETURN_IF_ERROR(EnsureDir(options.data_dir));
  ASSIGN_OR_RETURN(a->profile_, DetectCapabilities(options.data_dir, env));
  ASSIGN_OR_RETURN(std::string key, agent::ResolveStorageKey(env));
  ASSIGN_OR_RETURN(a->storage_, CreateStorage(a->profile_, options.data_dir,
                                              key, a->clock_));
  // Batches an earlier version set aside as plaintext files come back into
  // the (encrypted, quota-bound) store.
  if (absl::StatusOr<agent::LegacyImport> imported =
          agent::ImportLegacyQuarantine(options.data_dir + "/quarantine",
                                        a->storage_.get());
      !imported.ok()) {
    LOG(WARNING) << "could not import the old quarantine directory: "
                 << imported.status();
  }
  ASSIGN_OR_RETURN(
      a->transport_,
      CreateSyncClient(options.transport, options.server_url, options.api_key,
                       options.ca_file, a->clock_));
  agent::SyncOptions sync;
  sync.device_id = options.device_id;
  sync.org_id = options.org_id;
  sync.interval = a->profile_.sync_interval;
  sync.batch_size = a->profile_.batch_size;
  sync.compression = a->profile_.compression;
  sync.max_retries = std::max(1, a->profile_.max_retries);
  sync.capability = agent::ToCapabilityProto(a->profile_);
  sync.max_records_per_second = options.sync_max_records_per_second;
  sync.use_stream = options.sync_stream;
  sync.interval_pinned = env("SYNC_INTERVAL").has_value();
  sync.batch_size_pinned = env("BATCH_SIZE").has_value();
  sync.compression_pinned = env("COMPRESSION_TYPE").has_value();
  sync.max_retries_pinned = env("MAX_RETRIES").has_value();
  // The operator's own limit (even 0, "unlimited") and quota win over the
  // server's.
  sync.rate_limits_pinned =
      options.sync_max_records_per_second > 0 || options.sync_rate_limit_pinned;
  sync.storage_limits_pinned = env("FLEET_STORAGE_MAX_BYTES").has_value() ||
                               env("FLEET_MEMORY_BUFFER_BYTES").has_value();
  a->sync_ = std::make_unique<agent::SyncManager>(
      a->storage_.get(), a->transport_.get(), a->clock_, &a->metrics_, sync);
  a->options_ = std::move(options);
  LOG(INFO) << "fleetd agent for device " << a->options_.device_id << ": tier "
            << static_cast<int>(a->profile_.tier) << " ("
            << agent::TierName(a->profile_.tier) << "), sync every "
            << absl::FormatDuration(a->profile_.sync_interval)
            << ", batches of " << a->profile_.batch_size << ", compression "
            << CompressionName(a->profile_.compression) << ", storage "
            << (a->profile_.storage_mode == agent::StorageMode::kSqlite
                    ? "sqlite"
                    : "memory");
  return a;
}

Agent::~Agent() { Stop(); }

absl::Status Agent::Start() {
  if (started_) return absl::OkStatus();
  if (options_.control_socket) {
    ASSIGN_OR_RETURN(control_,
                     agent::ControlServer::Start(
                         options_.data_dir + "/fleetd.sock",
                         [this](const std::vector<std::string>& args) {
                           return HandleCommand(args);
                         }));
  }
  if (options_.fetch_server_config) sync_->FetchConfig().IgnoreError();
  if (options_.report_device_info) {
    v1::UpdateDeviceInfoRequest r;
    r.mutable_metadata()->set_device_id(options_.device_id);
    r.mutable_metadata()->set_org_id(options_.org_id);
    *r.mutable_metadata()->mutable_capability() =
        agent::ToCapabilityProto(profile_);
    r.mutable_info()->set_hostname(HostName());
    r.mutable_info()->set_agent_version(kAgentVersion);
    r.mutable_info()->set_os(profile_.system.os);
    r.mutable_info()->set_architecture(profile_.system.architecture);
    r.mutable_info()->set_kernel_version(profile_.system.kernel_release);
    if (absl::StatusOr<agent::StorageInfo> info = storage_->Info(); info.ok()) {
      const DeliveryHealth health = HealthOf(*info);
      r.mutable_info()->set_set_aside_batches(health.set_aside_batches);
      r.mutable_info()->set_set_aside_records(health.set_aside_records);
      r.mutable_info()->set_evicted_records(health.evicted_unsynced);
    }
    auto resp = transport_->UpdateDeviceInfo(r, absl::Seconds(10));
    if (!resp.ok())
      LOG(WARNING) << "could not report device info: " << resp.status();
  }
  sync_->Start();
  started_ = true;
  return absl::OkStatus();
}

void Agent::Stop() {
  if (control_ != nullptr) control_->Stop();
  if (sync_ != nullptr) sync_->Stop();
  started_ = false;
}

absl::Status Agent::StoreMetric(
    const std::string& name, double value,
    const std::map<std::string, std::string>& labels,
    std::optional<absl::Time> timestamp) {
  v1::Metric m;
  m.set_name(name);
  m.set_value(value);
  SetTimestamp(m.mutable_timestamp(), timestamp.value_or(clock_->Now()));
  for (const auto& [k, v] : labels) (*m.mutable_labels())[k] = v;
  return storage_->AppendMetric(m).status();
}

absl::Status Agent::StoreLog(const std::string& level,
                             const std::string& message,
                             const std::string& source,
                             const std::map<std::string, std::string>& fields) {
  v1::LogEntry e;
  e.set_level(level);
  e.set_message(message);
  e.set_source(source);
  SetTimestamp(e.mutable_timestamp(), clock_->Now());
  for (const auto& [k, v] : fields) (*e.mutable_fields())[k] = v;
  return storage_->AppendLog(e).status();
}

absl::Status Agent::StoreEvent(
    const std::string& name,
    const std::map<std::string, std::string>& properties,
    const std::map<std::string, double>& values) {
  v1::Event e;
  e.set_name(name);
  SetTimestamp(e.mutable_timestamp(), clock_->Now());
  e.set_event_id(
      absl::StrCat(options_.device_id, "-", absl::ToUnixNanos(clock_->Now())));
  for (const auto& [k, v] : properties) (*e.mutable_properties())[k] = v;
  for (const auto& [k, v] : values) (*e.mutable_values())[k] = v;
  return storage_->AppendEvent(e).status();
}

void Agent::TriggerSync() { sync_->TriggerSync(); }

absl::Status Agent::SyncNow() { return sync_->SyncNow(); }

agent::SyncMetricsSnapshot Agent::GetMetrics() { return sync_->GetMetrics(); }

absl::StatusOr<agent::StorageInfo> Agent::GetStorageInfo() {
  return storage_->Info();
}

std::string Agent::RenderMetrics() {
  absl::StatusOr<agent::StorageInfo> info = storage_->Info();
  if (info.ok()) {
    auto& backlog = metrics_.GaugeFamily(
        "fleetd_agent_backlog_records",
        "Records stored but not yet acknowledged.", {"kind"});
    auto& dropped = metrics_.GaugeFamily(
        "fleetd_agent_dropped_records",
        "Unsynced records dropped because storage was full.", {"kind"});
    for (agent::RecordKind k :
         {agent::RecordKind::kMetric, agent::RecordKind::kLog,
          agent::RecordKind::kEvent}) {
      std::string kind(agent::RecordKindName(k));
      backlog.WithLabels({kind}).Set(static_cast<double>(info->of(k).unsynced));
      dropped.WithLabels({kind}).Set(
          static_cast<double>(info->of(k).dropped_unsynced));
    }
    metrics_.GetGauge("fleetd_agent_storage_bytes", "Bytes the store occupies.")
        .Set(static_cast<double>(info->bytes_used));
    const DeliveryHealth health = HealthOf(*info);
    metrics_
        .GetGauge("fleetd_agent_set_aside_batches",
                  "Batches the server rejected as invalid, kept in the store "
                  "(fleetd quarantine list).")
        .Set(static_cast<double>(health.set_aside_batches));
    metrics_
        .GetGauge("fleetd_agent_set_aside_records",
                  "Records in set-aside batches.")
        .Set(static_cast<double>(health.set_aside_records));
    metrics_
        .GetGauge("fleetd_agent_set_aside_dropped_records",
                  "Set-aside records dropped by the operator or evicted to "
                  "make room.")
        .Set(static_cast<double>(health.set_aside_dropped));
    metrics_
        .GetGauge("fleetd_agent_evicted_unsynced_records",
                  "Unsynced records evicted (or overwritten) to stay within "
                  "the storage quota: data lost before it was delivered.")
        .Set(static_cast<double>(health.evicted_unsynced));
  }
  return metrics_.Render();
}

std::string Agent::HandleCommand(const std::vector<std::string>& args) {
  const std::string& cmd = args[0];
  nlohmann::json j;
  j["ok"] = true;
  if (cmd == "ping") return j.dump();
  if (cmd == "status") {
    j["device_id"] = options_.device_id;
    j["tier"] = static_cast<int>(profile_.tier);
    j["server_url"] = options_.server_url;
    j["transport"] = options_.transport;
    j["sync"] = MetricsJson(GetMetrics());
    auto info = storage_->Info();
    if (info.ok()) {
      j["storage"] = InfoJson(*info);
      const DeliveryHealth health = HealthOf(*info);
      j["set_aside_batches"] = health.set_aside_batches;
      j["set_aside_records"] = health.set_aside_records;
      j["set_aside_dropped"] = health.set_aside_dropped;
      j["evicted_unsynced_records"] = health.evicted_unsynced;
    }
    return j.dump();
  }
  if (cmd == "sync-now") {
    absl::Status s = sync_->SyncNow();
    if (!s.ok()) return Error(s);
    j["sync"] = MetricsJson(GetMetrics());
    return j.dump();
  }
  if (cmd == "storage-info") {
    auto info = storage_->Info();
    if (!info.ok()) return Error(info.status());
    j["storage"] = InfoJson(*info);
    return j.dump();
  }
  if (cmd == "storage-clean" && args.size() == 3) {
    auto age = ParseDurationSetting("--older-than", args[1]);
    if (!age.ok()) return Error(age.status());
    auto removed = storage_->CleanOlderThan(
        *age, args[2] == "all" ? agent::CleanScope::kAll
                               : agent::CleanScope::kSyncedOnly);
    if (!removed.ok()) return Error(removed.status());
    j["removed"] = *removed;
    return j.dump();
  }
  if (cmd == "logs-sync") {
    j["lines"] = sync_->RecentActivity();
    return j.dump();
  }
  if (cmd == "debug-storage") {
    auto info = storage_->Info();
    if (!info.ok()) return Error(info.status());
    j["storage"] = InfoJson(*info);
    agent::ReadOptions peek;
    peek.max_records = 5;
    std::vector<std::string> lines;
    if (auto m = storage_->ReadMetrics(peek); m.ok()) {
      for (const auto& r : *m) {
        lines.push_back(
            absl::StrCat("metric #", r.id, " ", r.record.ShortDebugString()));
      }
    }
    if (auto l = storage_->ReadLogs(peek); l.ok()) {
      for (const auto& r : *l) {
        lines.push_back(
            absl::StrCat("log #", r.id, " ", r.record.ShortDebugString()));
      }
    }
    if (auto e = storage_->ReadEvents(peek); e.ok()) {
      for (const auto& r : *e) {
        lines.push_back(
            absl::StrCat("event #", r.id, " ", r.record.ShortDebugString()));
      }
    }
    j["peek"] = lines;
    return j.dump();
  }
  if (cmd == "metrics") {
    j["text"] = RenderMetrics();
    return j.dump();
  }
  if (cmd == "quarantine-list") {
    auto batches = storage_->ListSetAside();
    if (!batches.ok()) return Error(batches.status());
    j["batches"] = nlohmann::json::array();
    for (const agent::SetAsideBatch& b : *batches) {
      j["batches"].push_back(SetAsideJson(b));
    }
    return j.dump();
  }
  if ((cmd == "quarantine-retry" || cmd == "quarantine-drop") &&
      (args.size() == 2 || args.size() == 3)) {
    const bool retry = cmd == "quarantine-retry";
    // Which batches: one (stream, sequence number), or every one ("all").
    std::vector<std::pair<std::string, int64_t>> targets;
    if (args.size() == 2) {
      if (args[1] != "all") {
        return Error(absl::InvalidArgumentError(
            absl::StrCat(cmd, " takes <stream> <sequence> or all")));
      }
      auto batches = storage_->ListSetAside();
      if (!batches.ok()) return Error(batches.status());
      for (const agent::SetAsideBatch& b : *batches) {
        targets.emplace_back(b.stream, b.sequence_number);
      }
    } else {
      int64_t seq = 0;
      if (!absl::SimpleAtoi(args[2], &seq)) {
        return Error(absl::InvalidArgumentError(
            absl::StrCat("not a sequence number: \"", args[2], "\"")));
      }
      targets.emplace_back(args[1], seq);
    }
    int64_t records = 0;
    nlohmann::json done = nlohmann::json::array();
    for (const auto& [stream, seq] : targets) {
      absl::StatusOr<int64_t> n = retry ? storage_->RetrySetAside(stream, seq)
                                        : storage_->DropSetAside(stream, seq);
      // With "all", a batch the quota evicted meanwhile is no error.
      if (absl::IsNotFound(n.status()) && args.size() == 2) continue;
      if (!n.ok()) return Error(n.status());
      records += *n;
      nlohmann::json b;
      b["stream"] = stream;
      b["sequence_number"] = seq;
      b["records"] = *n;
      done.push_back(b);
    }
    j["batches"] = done;
    j["records"] = records;
    if (retry && records > 0) sync_->TriggerSync();
    return j.dump();
  }
  return Error(
      absl::InvalidArgumentError(absl::StrCat("unknown command ", cmd)));
}

}  // namespace fleetd
