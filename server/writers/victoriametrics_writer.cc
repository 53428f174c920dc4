// Metrics → VictoriaMetrics (or any Prometheus remote-write receiver) through
// remote write: a snappy-compressed protobuf WriteRequest per coalesced write,
// encoded by RemoteWriteEncoder (remote_write.h) straight from the batches into
// a reused buffer. It replaced the JSON line import (/api/v1/import), whose
// per-sample JSON trees cost ~8 % of the machine in a load test; remote write
// is also what Prometheus, vminsert and Mimir accept, so only the path differs
// (VictoriaMetricsOptions::write_path).
//
// What VictoriaMetrics (single node, 1.79 as packaged by Debian) does that
// shapes this writer, each checked against the real binary:
//   - It answers a write before the rows are on disk: they stay in memory
//     (raw rows, then in-memory parts) for about five seconds, and a crash
//     (SIGKILL, power loss) loses them although they were acknowledged.
//     The group committer's replay window covers that (group_commit.h): it
//     keeps the last 30 s of acknowledged batches and writes them again when
//     InstanceId (process_start_time_seconds from /metrics) changes, at no
//     cost per write. For a crash of VictoriaMetrics and this server at once
//     there is flush_on_write (off by default, ~95 ms per write):
//     /internal/force_flush only makes rows searchable, it does not write
//     them to disk; /snapshot/create does: it flushes every in-memory part of
//     the data and the index to disk before it answers. So with
//     flush_on_write, each coalesced write is followed by one snapshot
//     create (and delete), and only then acknowledged. It needs a single
//     node (vminsert has no snapshots).
//   - It keeps duplicate samples unless started with -dedup.minScrapeInterval
//     (for remote write as for imports): a write retried after a lost answer
//     would show every sample twice. With it (1ms is enough: our timestamps
//     are deterministic), exports and queries see one sample per series and
//     interval. The writer reads /flags at start and on Ping, and warns (log,
//     gauge) when dedup is off.
//   - It silently drops samples outside [now - retentionPeriod, now + 2 days]
//     (answering 204, counting them in vm_rows_ignored_total). The writer
//     refuses such samples itself (INVALID_ARGUMENT, so the batch carrying them
//     is set aside, visible and counted on its device) instead of having them
//     vanish.
//   - It answers 400 "unsupported path requested" to a path it does not
//     serve, which would read as refused content and set every batch aside;
//     the writer reports it as its own misconfiguration (the write path).
#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/status/status_macros.h"
#include "glog/logging.h"
#include "nlohmann/json.hpp"
#include "server/writers/backends.h"
#include "server/writers/http_pool.h"
#include "server/writers/remote_write.h"

namespace fleetd::server {
namespace {

// VictoriaMetrics refuses samples more than two days ahead of its clock.
constexpr absl::Duration kMaxAhead = absl::Hours(48);
// Room for the time a batch may wait in the server and for clock differences
// between the server and VictoriaMetrics: a sample that passes here must still
// be inside the window when VictoriaMetrics stores it.
constexpr absl::Duration kWindowMargin = absl::Hours(1);
// -retentionPeriod's default (one month, which VictoriaMetrics counts as 31
// days).
constexpr absl::Duration kDefaultRetention = absl::Hours(24 * 31);

}  // namespace

absl::StatusOr<absl::Duration> ParseVictoriaMetricsRetention(
    absl::string_view value) {
  value = absl::StripAsciiWhitespace(value);
  absl::Duration unit = absl::Hours(24 * 31);  // no suffix: months
  if (!value.empty()) {
    switch (absl::ascii_tolower(static_cast<unsigned char>(value.back()))) {
      case 'h':
        unit = absl::Hours(1);
        break;
      case 'd':
        unit = absl::Hours(24);
        break;
      case 'w':
        unit = absl::Hours(24 * 7);
        break;
      case 'y':
        unit = absl::Hours(24 * 365);
        break;
      default:
        break;
    }
    if (unit != absl::Hours(24 * 31)) value.remove_suffix(1);
  }
  double amount = 0;
  if (!absl::SimpleAtod(value, &amount) || amount <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot parse retention period \"", value, "\""));
  }
  return amount * unit;
}

absl::StatusOr<VictoriaMetricsFlags> ParseVictoriaMetricsFlags(
    absl::string_view body) {
  VictoriaMetricsFlags flags;
  flags.retention = kDefaultRetention;
  for (absl::string_view line : absl::StrSplit(body, '\n', absl::SkipEmpty())) {
    // -name="value"
    line = absl::StripAsciiWhitespace(line);
    if (!absl::ConsumePrefix(&line, "-")) continue;
    const size_t eq = line.find('=');
    if (eq == absl::string_view::npos) continue;
    absl::string_view name = line.substr(0, eq);
    absl::string_view value = line.substr(eq + 1);
    if (!absl::ConsumePrefix(&value, "\"") ||
        !absl::ConsumeSuffix(&value, "\"")) {
      continue;
    }
    if (name == "dedup.minScrapeInterval") {
      absl::Duration d;
      // Go durations; "0" and "0s" mean off.
      if (value == "0" || !absl::ParseDuration(value, &d)) {
        d = absl::ZeroDuration();
      }
      flags.dedup_interval = d;
    } else if (name == "retentionPeriod") {
      absl::StatusOr<absl::Duration> r = ParseVictoriaMetricsRetention(value);
      if (!r.ok()) return r.status();
      flags.retention = *r;
    }
  }
  return flags;
}

namespace {

class VictoriaMetricsWriter final : public Writer {
 public:
  explicit VictoriaMetricsWriter(const VictoriaMetricsOptions& options)
      : base_(absl::StripSuffix(options.url, "/")),
        write_url_(absl::StrCat(base_, options.write_path)),
        timeout_(options.timeout),
        flush_on_write_(options.flush_on_write),
        clock_(options.clock != nullptr ? options.clock : Clock::Real()) {
    if (options.metrics != nullptr) {
      dedup_gauge_ = &options.metrics->GetGauge(
          "fleetd_victoriametrics_dedup_enabled",
          "1 when VictoriaMetrics runs with -dedup.minScrapeInterval (retried "
          "writes then stay exactly once), 0 when it does not, -1 when "
          "unknown.");
      dedup_gauge_->Set(-1);
      auto& failures = options.metrics->CounterFamily(
          "fleetd_victoriametrics_flush_failures_total",
          "Snapshot calls that make imports durable and failed, by step.",
          {"step"});
      create_failures_ = &failures.WithLabels({"create"});
      delete_failures_ = &failures.WithLabels({"delete"});
      out_of_window_ = &options.metrics->GetCounter(
          "fleetd_victoriametrics_refused_samples_total",
          "Samples refused because VictoriaMetrics would silently drop them "
          "(timestamp outside its retention or more than 2 days ahead).");
    }
  }

  absl::string_view name() const override { return "victoriametrics"; }

  // Nothing to create; reads /flags so the operator hears about a setup that
  // cannot keep writes exactly once before the first write (a warning, never
  // an error: VictoriaMetrics may be down or /flags protected).
  absl::Status Migrate() override {
    (void)CheckFlags();
    return absl::OkStatus();
  }

  // One remote-write request for all batches of the flush (a series that
  // several batches share is one TimeSeries).
  absl::Status Write(absl::Span<const DecodedBatch* const> batches) override {
    bool flags_known;
    {
      absl::MutexLock lock(&mu_);
      flags_known = flags_.has_value();
    }
    if (!flags_known) (void)CheckFlags();  // retried on every write until known
    const absl::Status window = CheckWindow(batches);
    if (!window.ok()) return window;
    std::unique_ptr<Encoding> encoding = TakeEncoding();
    absl::Status written = Send(batches, *encoding);
    GiveBack(std::move(encoding));
    if (!written.ok() || !flush_on_write_) return written;
    return MakeDurable();
  }

  // process_start_time_seconds from /metrics: a new value means
  // VictoriaMetrics restarted and may have lost what it held in memory.
  absl::StatusOr<std::string> InstanceId() override {
    return ProcessStartInstanceId(pool_, "victoriametrics", base_);
  }

  // GET /health (VictoriaMetrics, vminsert). A receiver without it (404:
  // Prometheus, Mimir) answered, so it is reachable: not a failed /readyz.
  absl::Status Ping() override {
    HttpRequest request;
    request.url = absl::StrCat(base_, "/health");
    request.timeout = absl::Seconds(2);
    absl::StatusOr<HttpResponse> response = pool_.Send(request);
    if (!response.ok()) return response.status();
    if (response->status_code != 404) {
      RETURN_IF_ERROR(HttpStatusToStatus("victoriametrics", *response));
    }
    (void)CheckFlags();  // a warning and a gauge, never a failed /readyz
    return absl::OkStatus();
  }

 private:
  // A request being encoded and sent; kept between writes so that its
  // buffers (the encoder's scratch space, the body) are reused.
  struct Encoding {
    RemoteWriteEncoder encoder;
    HttpRequest request;
  };

  std::unique_ptr<Encoding> TakeEncoding() {
    {
      absl::MutexLock lock(&mu_);
      if (!idle_encodings_.empty()) {
        std::unique_ptr<Encoding> e = std::move(idle_encodings_.back());
        idle_encodings_.pop_back();
        return e;
      }
    }
    auto e = std::make_unique<Encoding>();
    e->request.method = "POST";
    e->request.url = write_url_;
    for (const auto& [name, value] : kRemoteWriteHeaders) {
      e->request.headers.emplace_back(name, value);
    }
    e->request.timeout = timeout_;
    return e;
  }

  void GiveBack(std::unique_ptr<Encoding> encoding) {
    absl::MutexLock lock(&mu_);
    idle_encodings_.push_back(std::move(encoding));
  }

  // Encodes `batches` into `encoding` and posts them to the write path.
  absl::Status Send(absl::Span<const DecodedBatch* const> batches,
                    Encoding& encoding) {
    const absl::Status encoded =
        encoding.encoder.Encode(batches, &encoding.request.body);
    if (!encoded.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot encode metrics: ", encoded.message()));
    }
    if (encoding.request.body.empty()) return absl::OkStatus();
    absl::StatusOr<HttpResponse> response = pool_.Send(encoding.request);
    if (!response.ok()) return response.status();
    // VictoriaMetrics' answer to a path it does not serve: not the data.
    if (response->status_code == 400 &&
        absl::StrContains(response->body, "unsupported path requested")) {
      return BackendMisconfigured(
          "path", absl::StrCat("victoriametrics does not serve ", write_url_,
                               " (FLEET_VICTORIAMETRICS_WRITE_PATH): ",
                               response->body.substr(0, 300)));
    }
    return HttpStatusToStatus("victoriametrics", *response);
  }

  // Reads GET /flags (the flags set on the command line) and records dedup and
  // retention. Logs a warning when deduplication is off, once per change.
  absl::Status CheckFlags() {
    HttpRequest request;
    request.url = absl::StrCat(base_, "/flags");
    request.timeout = absl::Seconds(2);
    absl::StatusOr<HttpResponse> response = pool_.Send(request);
    absl::Status s = response.ok()
                         ? HttpStatusToStatus("victoriametrics", *response)
                         : response.status();
    absl::StatusOr<VictoriaMetricsFlags> flags =
        s.ok() ? ParseVictoriaMetricsFlags(response->body)
               : absl::StatusOr<VictoriaMetricsFlags>(s);
    absl::MutexLock lock(&mu_);
    if (!flags.ok()) {
      if (!flags_warned_) {
        flags_warned_ = true;
        LOG(WARNING) << "cannot read VictoriaMetrics' /flags ("
                     << flags.status()
                     << "): cannot check that -dedup.minScrapeInterval is set "
                        "(needed for exactly-once writes) nor the retention "
                        "window; samples are checked against the default "
                        "retention (31 days) and the 2-day limit ahead";
      }
      return flags.status();
    }
    const bool dedup = flags->dedup_interval > absl::ZeroDuration();
    if (!flags_.has_value() ||
        (flags_->dedup_interval > absl::ZeroDuration()) != dedup) {
      if (dedup) {
        LOG(INFO) << "VictoriaMetrics deduplicates (-dedup.minScrapeInterval="
                  << absl::FormatDuration(flags->dedup_interval)
                  << "), retention " << absl::FormatDuration(flags->retention);
      } else {
        LOG(WARNING)
            << "VictoriaMetrics at " << base_
            << " runs without -dedup.minScrapeInterval: a write retried after "
               "a lost answer will show its samples twice. Start it with "
               "-dedup.minScrapeInterval=1ms";
      }
    }
    if (dedup_gauge_ != nullptr) dedup_gauge_->Set(dedup ? 1 : 0);
    flags_ = *flags;
    return absl::OkStatus();
  }

  // INVALID_ARGUMENT naming the first sample VictoriaMetrics would drop
  // silently, OK when there is none.
  absl::Status CheckWindow(absl::Span<const DecodedBatch* const> batches) {
    const absl::Time now = clock_->Now();
    const int64_t max_ms = absl::ToUnixMillis(now + kMaxAhead - kWindowMargin);
    absl::Duration retention = kDefaultRetention;  // when /flags is unknown
    {
      absl::MutexLock lock(&mu_);
      if (flags_.has_value()) retention = flags_->retention;
    }
    // VictoriaMetrics stores nothing before 1970.
    const int64_t min_ms = std::max<int64_t>(
        0, absl::ToUnixMillis(now - retention + kWindowMargin));
    for (const DecodedBatch* b : batches) {
      if (b->kind != DataKind::kMetrics) continue;
      const MetricSamples& m = b->metrics;
      for (int i = 0; i < m.size(); ++i) {
        const int64_t ms = m.timestamp_millis(i);
        if (ms >= min_ms && ms <= max_ms) continue;
        int64_t refused = 0;
        for (int k = 0; k < m.size(); ++k) {
          const int64_t t = m.timestamp_millis(k);
          if (t < min_ms || t > max_ms) ++refused;
        }
        if (out_of_window_ != nullptr) out_of_window_->Increment(refused);
        std::string message = absl::StrCat(
            "metric ", m.name(i), " of device ", b->device.device_id,
            " has timestamp ", ms, " ms, outside what VictoriaMetrics stores (",
            min_ms, " to ", max_ms,
            " ms: its retention period, at most 2 days ahead); it would be "
            "dropped silently");
        LOG(WARNING) << "refusing " << refused << " samples of device "
                     << b->device.device_id << ": " << message;
        return absl::InvalidArgumentError(message);
      }
    }
    return absl::OkStatus();
  }

  // Writes everything imported so far to disk: a snapshot flushes the
  // in-memory parts of data and index (then it is deleted again; its files
  // are hard links).
  absl::Status MakeDurable() {
    HttpRequest create;
    create.url = absl::StrCat(base_, "/snapshot/create");
    create.timeout = timeout_;
    absl::StatusOr<HttpResponse> response = pool_.Send(create);
    absl::Status s = response.ok()
                         ? HttpStatusToStatus("victoriametrics", *response)
                         : response.status();
    std::string snapshot;
    if (s.ok()) {
      nlohmann::json j = nlohmann::json::parse(response->body, nullptr, false);
      if (j.is_object() && j.value("status", "") == "ok" &&
          j.contains("snapshot") && j["snapshot"].is_string()) {
        snapshot = j["snapshot"].get<std::string>();
      } else {
        s = absl::UnavailableError(absl::StrCat(
            "victoriametrics: unexpected /snapshot/create answer: ",
            response->body.substr(0, 300)));
      }
    }
    if (!s.ok()) {
      if (create_failures_ != nullptr) create_failures_->Increment();
      LOG(WARNING) << "imported into VictoriaMetrics but could not make it "
                      "durable (will retry the write): "
                   << s;
      // Retryable whatever the answer: the samples may be lost on a crash, so
      // the devices must keep them. A retry imports them again, which
      // deduplication hides. VictoriaMetrics answers 400 when
      // -snapshotAuthKey is set (the server sends none): the server's setup.
      const std::string message =
          absl::StrCat("imported but not made durable: ", s.message());
      if (std::optional<std::string> reason = MisconfigurationReason(s)) {
        return BackendMisconfigured(*reason, message);
      }
      if (s.code() == absl::StatusCode::kUnavailable ||
          s.code() == absl::StatusCode::kDeadlineExceeded ||
          s.code() == absl::StatusCode::kResourceExhausted) {
        return absl::Status(s.code(), message);
      }
      return BackendMisconfigured("snapshot", message);
    }
    HttpRequest remove;
    remove.url =
        absl::StrCat(base_, "/snapshot/delete?snapshot=", UrlEscape(snapshot));
    remove.timeout = timeout_;
    absl::StatusOr<HttpResponse> removed = pool_.Send(remove);
    absl::Status d = removed.ok()
                         ? HttpStatusToStatus("victoriametrics", *removed)
                         : removed.status();
    if (!d.ok()) {
      // The data is durable; only a snapshot is left behind (hard links, but
      // it keeps merged-away parts on disk until deleted).
      if (delete_failures_ != nullptr) delete_failures_->Increment();
      LOG(WARNING) << "could not delete VictoriaMetrics snapshot " << snapshot
                   << " (delete it with /snapshot/delete): " << d;
    }
    return absl::OkStatus();
  }

  static std::string UrlEscape(absl::string_view s) {
    std::string out;
    for (unsigned char c : s) {
      if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.') {
        out.push_back(static_cast<char>(c));
      } else {
        absl::StrAppend(&out, "%", absl::Hex(c, absl::kZeroPad2));
      }
    }
    return out;
  }

  const std::string base_;
  const std::string write_url_;
  const absl::Duration timeout_;
  const bool flush_on_write_;
  Clock* const clock_;
  HttpPool pool_;
  metrics::Gauge* dedup_gauge_ = nullptr;
  metrics::Counter* create_failures_ = nullptr;
  metrics::Counter* delete_failures_ = nullptr;
  metrics::Counter* out_of_window_ = nullptr;

  absl::Mutex mu_;
  std::optional<VictoriaMetricsFlags> flags_ ABSL_GUARDED_BY(mu_);
  bool flags_warned_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::unique_ptr<Encoding>> idle_encodings_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<Writer>> NewVictoriaMetricsWriter(
    const VictoriaMetricsOptions& options) {
  if (options.url.empty()) {
    return absl::InvalidArgumentError("FLEET_VICTORIAMETRICS_URL is not set");
  }
  if (!absl::StartsWith(options.write_path, "/")) {
    return absl::InvalidArgumentError(
        absl::StrCat("FLEET_VICTORIAMETRICS_WRITE_PATH must start with /, not "
                     "\"",
                     options.write_path, "\""));
  }
  return std::unique_ptr<Writer>(new VictoriaMetricsWriter(options));
}

}  // namespace fleetd::server
