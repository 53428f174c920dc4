// fleetd: the FleetD Sync device agent and its command-line tools.
//
//   fleetd run             run the agent (collect, store, sync)
//   fleetd sync now        make the running agent sync now, wait for it
//   fleetd status          the running agent's sync state and backlog
//   fleetd storage info    what the store holds (works without the agent)
//   fleetd storage clean --older-than 7d [--all]
//   fleetd quarantine list|retry|drop
//                          batches the server rejected as invalid, kept in
//                          the store (works without the agent)
//   fleetd debug storage   store internals and the oldest unsynced records
//   fleetd debug ping      check the server is reachable with this key
//   fleetd logs sync       the running agent's recent batch outcomes
//
// Every setting is an environment variable and a flag (see `fleetd --help`).
#include <algorithm>
#include <csignal>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/api/agent.h"
#include "agent/cli/agent_settings.h"
#include "agent/control/control.h"
#include "glog/logging.h"
#include "nlohmann/json.hpp"

namespace fleetd::agent {
namespace {

volatile std::sig_atomic_t g_stop = 0;
void HandleStop(int) { g_stop = 1; }

int Fail(const absl::Status& s) {
  std::cerr << "fleetd: " << s.message() << "\n";
  return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

std::string SocketPath(const AgentSettings& s) {
  return s.data_dir + "/fleetd.sock";
}

// Calls the running agent; prints the JSON answer's error if it failed.
absl::StatusOr<nlohmann::json> Control(
    const AgentSettings& s, const std::vector<std::string>& args,
    absl::Duration timeout = absl::Seconds(30)) {
  absl::StatusOr<std::string> answer =
      CallControl(SocketPath(s), args, timeout);
  if (!answer.ok()) return answer.status();
  nlohmann::json j = nlohmann::json::parse(*answer, nullptr, false);
  if (j.is_discarded())
    return absl::InternalError("the agent sent a malformed answer");
  if (!j.value("ok", false)) {
    return absl::UnknownError(
        j.value("error", std::string("the agent reported an error")));
  }
  return j;
}

void PrintStorage(const nlohmann::json& st) {
  std::cout << "storage: " << st.value("backend", "?") << ", "
            << st.value("bytes_used", int64_t{0}) << " of "
            << st.value("max_bytes", int64_t{0}) << " bytes used";
  if (st.contains("oldest_record"))
    std::cout << ", oldest record " << st["oldest_record"];
  std::cout << "\n";
  for (const auto& [kind, k] : st["kinds"].items()) {
    std::cout << "  " << kind << ": unsynced "
              << k.value("unsynced", int64_t{0}) << ", synced "
              << k.value("synced", int64_t{0}) << ", dropped "
              << k.value("dropped_unsynced", int64_t{0}) << ", evicted "
              << k.value("evicted_synced", int64_t{0}) << ", cleaned "
              << k.value("cleaned", int64_t{0});
    if (k.value("set_aside", int64_t{0}) > 0 ||
        k.value("set_aside_dropped", int64_t{0}) > 0) {
      std::cout << ", set aside " << k.value("set_aside", int64_t{0})
                << " (dropped " << k.value("set_aside_dropped", int64_t{0})
                << ")";
    }
    if (k.contains("oldest_unsynced"))
      std::cout << ", oldest unsynced " << k["oldest_unsynced"];
    std::cout << "\n";
  }
}

// Set-aside batches and lost records, from a storage-info JSON.
void PrintDeliveryHealth(const nlohmann::json& st) {
  int64_t evicted = 0;
  if (st.contains("kinds")) {
    for (const auto& [kind, k] : st["kinds"].items())
      evicted += k.value("dropped_unsynced", int64_t{0});
  }
  std::cout << "set aside: " << st.value("set_aside_batches", int64_t{0})
            << " batches, " << st.value("set_aside_records", int64_t{0})
            << " records (dropped " << st.value("set_aside_dropped", int64_t{0})
            << ")";
  if (st.value("set_aside_batches", int64_t{0}) > 0)
    std::cout << "; see fleetd quarantine list";
  std::cout << "\nevicted unsynced records: " << evicted << "\n";
}

void PrintSetAside(const nlohmann::json& batches) {
  if (batches.empty()) {
    std::cout << "no set-aside batches\n";
    return;
  }
  size_t stream_w = 6;
  for (const auto& b : batches)
    stream_w = std::max(stream_w, b.value("stream", std::string()).size());
  std::cout << std::left << std::setw(static_cast<int>(stream_w) + 2)
            << "STREAM" << std::setw(21) << "SEQUENCE" << std::setw(9)
            << "RECORDS" << std::setw(22) << "SET ASIDE AT"
            << "REASON\n";
  int64_t records = 0;
  for (const auto& b : batches) {
    records += b.value("records", int64_t{0});
    std::cout << std::setw(static_cast<int>(stream_w) + 2)
              << b.value("stream", std::string()) << std::setw(21)
              << b.value("sequence_number", int64_t{0}) << std::setw(9)
              << b.value("records", int64_t{0}) << std::setw(22)
              << b.value("set_aside_at", std::string())
              << b.value("reason", std::string()) << "\n";
  }
  std::cout << batches.size() << " batches, " << records
            << " records. Send again: fleetd quarantine retry <stream> "
               "<sequence> (or --all); delete: fleetd quarantine drop "
               "<stream> <sequence> (or --all)\n";
}

void PrintSync(const nlohmann::json& s) {
  std::cout << "sync: " << s.value("state", "?") << "\n";
  for (const char* key :
       {"metrics_synced", "logs_synced", "events_synced", "bytes_sent",
        "bytes_compressed", "compression_ratio", "successful_syncs",
        "failed_syncs", "consecutive_failures", "last_sync_duration_ms",
        "set_aside_batches_since_start", "set_aside_records_since_start",
        "duplicates_acknowledged", "sync_latency_p50_ms", "sync_latency_p95_ms",
        "sync_latency_p99_ms"}) {
    std::cout << "  " << key << ": " << s[key] << "\n";
  }
  if (s.contains("last_success"))
    std::cout << "  last_success: " << s["last_success"] << "\n";
  if (!s.value("last_error", std::string()).empty()) {
    std::cout << "  last_error: " << s["last_error"].get<std::string>() << "\n";
  }
}

// Opens the store directly (the agent is not running) for the storage commands.
absl::StatusOr<std::unique_ptr<Agent>> OfflineAgent(const AgentSettings& s) {
  AgentOptions o = s.ToOptions();
  o.control_socket = false;
  o.fetch_server_config = false;
  o.report_device_info = false;
  if (o.server_url.empty())
    o.server_url = "http://127.0.0.1:1";  // never contacted
  return Agent::Create(o);
}

int Run(const AgentSettings& s) {
  auto agent = Agent::Create(s.ToOptions());
  if (!agent.ok()) return Fail(agent.status());
  auto daemon = StartDaemonParts(s, agent->get());
  if (!daemon.ok()) return Fail(daemon.status());
  if (absl::Status st = (*agent)->Start(); !st.ok()) return Fail(st);
  std::signal(SIGINT, HandleStop);
  std::signal(SIGTERM, HandleStop);
  LOG(INFO) << "fleetd running; control socket " << SocketPath(s);
  while (!g_stop) absl::SleepFor(absl::Milliseconds(200));
  LOG(INFO) << "fleetd stopping";
  daemon->reset();
  (*agent)->Stop();
  return 0;
}

int Main(int argc, char** argv) {
  AgentSettings settings;
  Settings declared;
  settings.Declare(declared);

  CLI::App cli("fleetd: FleetD Sync device agent", "fleetd");
  cli.require_subcommand(1);
  declared.AddFlags(&cli);
  CLI::App* run = cli.add_subcommand("run", "Run the agent");
  CLI::App* sync = cli.add_subcommand("sync", "Sync commands");
  CLI::App* sync_now =
      sync->add_subcommand("now", "Make the running agent sync now");
  sync->require_subcommand(1);
  CLI::App* status =
      cli.add_subcommand("status", "Show the running agent's state");
  CLI::App* storage = cli.add_subcommand("storage", "Storage commands");
  storage->require_subcommand(1);
  CLI::App* storage_info =
      storage->add_subcommand("info", "Show what the store holds");
  CLI::App* storage_clean =
      storage->add_subcommand("clean", "Remove old records");
  std::string older_than;
  bool clean_all = false;
  storage_clean->add_option("--older-than", older_than, "age, e.g. 7d, 36h")
      ->required();
  storage_clean->add_flag("--all", clean_all,
                          "also remove records not yet synced");
  CLI::App* debug = cli.add_subcommand("debug", "Troubleshooting");
  debug->require_subcommand(1);
  CLI::App* debug_storage = debug->add_subcommand("storage", "Store internals");
  CLI::App* debug_ping =
      debug->add_subcommand("ping", "Check the server with this key");
  CLI::App* quarantine = cli.add_subcommand(
      "quarantine",
      "Batches the server rejected as invalid, kept set aside in the store");
  quarantine->require_subcommand(1);
  CLI::App* quarantine_list =
      quarantine->add_subcommand("list", "List the set-aside batches");
  CLI::App* quarantine_retry = quarantine->add_subcommand(
      "retry", "Put set-aside batches back in the sync queue");
  CLI::App* quarantine_drop = quarantine->add_subcommand(
      "drop", "Delete set-aside batches and their records");
  std::string quarantine_stream;
  std::string quarantine_sequence;
  bool quarantine_all = false;
  for (CLI::App* c : {quarantine_retry, quarantine_drop}) {
    c->add_option("stream", quarantine_stream,
                  "stream of the batch (as listed: metrics, logs, events)");
    c->add_option("sequence", quarantine_sequence,
                  "sequence number of the batch (as listed)");
    c->add_flag("--all", quarantine_all, "every set-aside batch");
  }
  CLI::App* logs = cli.add_subcommand("logs", "Logs of the running agent");
  logs->require_subcommand(1);
  CLI::App* logs_sync = logs->add_subcommand("sync", "Recent batch outcomes");

  try {
    cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return cli.exit(e);
  }
  if (absl::Status s = declared.Resolve(ProcessEnv()); !s.ok()) return Fail(s);
  settings.Finish(declared);

  if (run->parsed()) return Run(settings);
  if (sync_now->parsed()) {
    auto j = Control(settings, {"sync-now"}, absl::Minutes(10));
    if (!j.ok()) return Fail(j.status());
    PrintSync((*j)["sync"]);
    return 0;
  }
  if (status->parsed()) {
    auto j = Control(settings, {"status"});
    if (!j.ok()) return Fail(j.status());
    std::cout << "device: " << (*j)["device_id"].get<std::string>() << " (tier "
              << (*j)["tier"] << "), server "
              << (*j)["server_url"].get<std::string>() << " over "
              << (*j)["transport"].get<std::string>() << "\n";
    PrintSync((*j)["sync"]);
    if (j->contains("storage")) {
      PrintDeliveryHealth((*j)["storage"]);
      PrintStorage((*j)["storage"]);
    }
    return 0;
  }
  if (logs_sync->parsed()) {
    auto j = Control(settings, {"logs-sync"});
    if (!j.ok()) return Fail(j.status());
    for (const auto& line : (*j)["lines"])
      std::cout << line.get<std::string>() << "\n";
    return 0;
  }
  if (quarantine_retry->parsed() || quarantine_drop->parsed()) {
    const bool one = !quarantine_stream.empty() && !quarantine_sequence.empty();
    if (quarantine_all == one) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "quarantine ", quarantine_retry->parsed() ? "retry" : "drop",
          ": give <stream> <sequence> (see fleetd quarantine list), or "
          "--all")));
    }
  }
  if (storage_info->parsed() || storage_clean->parsed() ||
      debug_storage->parsed() || quarantine->parsed()) {
    // Through the running agent when there is one, else on the store directly.
    std::vector<std::string> args;
    if (storage_info->parsed()) args = {"storage-info"};
    if (debug_storage->parsed()) args = {"debug-storage"};
    if (storage_clean->parsed()) {
      args = {"storage-clean", older_than, clean_all ? "all" : "synced"};
    }
    if (quarantine_list->parsed()) args = {"quarantine-list"};
    for (auto [sub, cmd] : {std::pair(quarantine_retry, "quarantine-retry"),
                            std::pair(quarantine_drop, "quarantine-drop")}) {
      if (!sub->parsed()) continue;
      args = {cmd};
      if (quarantine_all) {
        args.push_back("all");
      } else {
        args.push_back(quarantine_stream);
        args.push_back(quarantine_sequence);
      }
    }
    nlohmann::json j;
    auto live = Control(settings, args);
    if (live.ok()) {
      j = *live;
    } else if (absl::IsUnavailable(live.status())) {
      auto agent = OfflineAgent(settings);
      if (!agent.ok()) return Fail(agent.status());
      j = nlohmann::json::parse((*agent)->HandleCommand(args));
      if (!j.value("ok", false))
        return Fail(absl::UnknownError(j.value("error", "")));
    } else {
      return Fail(live.status());
    }
    if (storage_clean->parsed()) {
      std::cout << "removed " << j["removed"] << " records older than "
                << older_than << "\n";
      return 0;
    }
    if (quarantine_list->parsed()) {
      PrintSetAside(j["batches"]);
      return 0;
    }
    if (quarantine_retry->parsed() || quarantine_drop->parsed()) {
      std::cout << (quarantine_retry->parsed() ? "requeued " : "dropped ")
                << j.value("records", int64_t{0}) << " records of "
                << j["batches"].size() << " set-aside batches";
      if (quarantine_retry->parsed()) {
        std::cout << "; they go out again in new batches";
      }
      std::cout << "\n";
      return 0;
    }
    PrintDeliveryHealth(j["storage"]);
    PrintStorage(j["storage"]);
    if (j.contains("peek")) {
      std::cout << "oldest unsynced records:\n";
      for (const auto& line : j["peek"])
        std::cout << "  " << line.get<std::string>() << "\n";
    }
    if (j.contains("storage") && j["storage"].contains("details")) {
      for (const auto& [k, v] : j["storage"]["details"].items()) {
        std::cout << "  " << k << " = " << v.get<std::string>() << "\n";
      }
    }
    return 0;
  }
  if (debug_ping->parsed()) {
    absl::Status st = Ping(settings);
    return st.ok() ? 0 : Fail(st);
  }
  return 0;
}

}  // namespace
}  // namespace fleetd::agent

int main(int argc, char** argv) {
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  return fleetd::agent::Main(argc, argv);
}
