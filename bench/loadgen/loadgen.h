// fleetd-loadgen: simulates a fleet of devices syncing to a Fleet server.
//
// N devices (each with its own API key and sequence numbers) share a small
// pool of sender threads; one scheduler thread releases each device's batches
// at their intended send times for the target rate (open loop, see
// scheduler.h), and every latency is measured from the intended send time.
// gRPC devices share one channel (one stub each); Connect devices share one
// libcurl connection per sender thread.
#ifndef FLEETD_BENCH_LOADGEN_LOADGEN_H_
#define FLEETD_BENCH_LOADGEN_LOADGEN_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bench/loadgen/keys_csv.h"
#include "bench/loadgen/latency.h"
#include "common/clock/clock.h"

namespace fleetd::bench {

struct LoadgenOptions {
  std::string server_url;
  // "grpc" or "connect".
  std::string transport = "grpc";
  // PEM CA bundle for https:// URLs.
  std::string ca_file;
  // At least `devices` keys; device i uses keys[i].
  std::vector<DeviceKey> keys;
  int devices = 10;
  // Batches are scheduled in [start, start + duration).
  absl::Duration duration = absl::Seconds(30);
  // Target metric samples per second over all devices (open loop).
  double rate = 20000;
  // Samples per metrics batch; 0 picks the tier mix (per device: 20 % tier 1
  // with 1000-sample zstd batches, 40 % tier 2 with 100-sample gzip batches,
  // 40 % tier 3 with 10-sample uncompressed batches).
  int batch = 0;
  // Log entries sent per metric sample: with each metrics batch of B samples
  // a device also sends a logs batch of max(1, round(B * ratio)) entries.
  // 0 sends no logs.
  double logs_ratio = 0.05;
  // > 0: backlog mode. Instead of the periodic schedule each device starts
  // with this many metrics batches queued (as after an outage) and sends them
  // one after another as fast as the server allows, retrying retryable errors
  // after the server's retry hint (same sequence number). The batches are
  // built (generated, serialized, compressed, checksummed) before the clock
  // starts, as a device's backlog sits ready in its store: the run measures
  // sending them, not making them.
  int backlog_batches = 0;
  // Sender threads (= most calls in flight).
  int concurrency = 64;
  // gRPC: connections the devices are spread over (each device always uses
  // the same one), at most one per device; 0: one per sender thread, as the
  // Connect transport has (a curl handle each). Devices each hold their own
  // connection: calls multiplexed on a single one would be read and answered
  // in shared syscalls no fleet gives the server (measured: 0.54-0.64
  // CPU-s per M samples on one connection against 0.80-0.89 on 128).
  int grpc_connections = 0;
  // Per-call deadline.
  absl::Duration call_timeout = absl::Seconds(10);
  // After `duration`, calls still queued in the load generator are sent for
  // at most this long; the rest are counted as unsent.
  absl::Duration grace = absl::Seconds(5);
  // Jobs waiting for a sender beyond this are dropped (counted) instead of
  // growing memory without bound.
  int max_queue = 200000;
  uint64_t seed = 1;
};

struct LoadgenReport {
  std::string transport;
  int devices = 0;
  // Devices that sent at least one batch.
  int active_devices = 0;
  double duration_s = 0;
  // Window the rates are computed over: [start, max(duration, last ack)] in
  // periodic mode, [start, last ack] in backlog mode.
  double window_s = 0;
  double target_rate = 0;
  int64_t samples_acked = 0;
  int64_t logs_acked = 0;
  int64_t batches_acked = 0;
  int64_t duplicates = 0;
  int64_t samples_offered = 0;
  int64_t calls = 0;
  double samples_per_second = 0;
  double logs_per_second = 0;
  double batches_per_second = 0;
  LatencySummary latency_ms;
  // Status code name (e.g. RESOURCE_EXHAUSTED) -> failed calls.
  std::map<std::string, int64_t> errors;
  int64_t retries = 0;
  // Jobs never sent: left over after the grace period, or dropped by a full
  // queue, or backlog retries that fell after the end.
  int64_t unsent = 0;
  // Backlog mode: seconds from start until the last backlog batch was acked,
  // and whether every batch was.
  double drain_s = 0;
  bool drained = false;
  // CPU time the load generator itself used (it shares the machine).
  double client_cpu_s = 0;
  // Request and response bytes as the transports count them (stats()).
  int64_t bytes_sent = 0;
  int64_t bytes_received = 0;
  // Of bytes_sent: the metrics requests, and the samples they carried (every
  // attempt), for bytes per sample on the wire.
  int64_t metrics_bytes_sent = 0;
  int64_t samples_sent = 0;
};

// Runs the load. Fails only on bad options or a transport that cannot be set
// up; server errors are counted in the report.
absl::StatusOr<LoadgenReport> RunLoadgen(const LoadgenOptions& options,
                                         Clock* clock);

// Writes the metrics the devices of `options` would send in `rounds` rounds
// (each device one batch of its tier per round, from the same generator and
// seeds) as VictoriaMetrics /api/v1/import JSON lines, with the device_id and
// org_id labels the server adds: one line per series per batch, as the
// server's writer groups them. For baselines fed the same samples. Returns
// the number of samples written.
absl::StatusOr<int64_t> ExportVmJsonl(const LoadgenOptions& options, int rounds,
                                      const std::string& path, Clock* clock);

// Writes the same samples as ExportVmJsonl (same batches, labels including
// device_id and org_id, timestamps; the same clock reading gives the same
// values) as Prometheus remote-write request bodies, the way devices running
// a remote-write agent would send them: one file per device batch, each a
// snappy-compressed prometheus.WriteRequest encoded by the server's
// RemoteWriteEncoder (server/writers/remote_write.h; send it with
// kRemoteWriteHeaders). Creates `dir` if needed; the files are named
// r<round>-d<device>.rw, zero-padded, so that their names sort round by
// round, as a fleet draining a backlog sends them. Returns the number of
// samples written.
absl::StatusOr<int64_t> ExportRemoteWrite(const LoadgenOptions& options,
                                          int rounds, const std::string& dir,
                                          Clock* clock);

// The report as JSON (pretty-printed).
std::string ReportToJson(const LoadgenReport& report);

// Tier (1..3) and samples per batch of device `index` under the tier mix.
int TierOfDevice(int index);
int TierBatchSize(int tier);

}  // namespace fleetd::bench

#endif  // FLEETD_BENCH_LOADGEN_LOADGEN_H_
