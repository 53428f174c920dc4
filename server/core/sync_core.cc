#include "server/core/sync_core.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status/error_class.h"
#include "common/status/retry_after.h"
#include "common/status/retryable.h"
#include "common/status/status_macros.h"
#include "glog/logging.h"
#include "server/core/tier_config.h"

namespace fleetd::server {
namespace {

void SetTimestamp(google::protobuf::Timestamp* ts, absl::Time t) {
  int64_t nanos = absl::ToUnixNanos(t);
  ts->set_seconds(nanos / 1'000'000'000);
  ts->set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
}

std::string InflightKey(const DecodedBatch& b) {
  return absl::StrCat(b.device.device_id.size(), ":", b.device.device_id,
                      b.stream, "#", b.sequence_number);
}

}  // namespace

// Records applied batches in the ledger; run behind a GroupCommitter so that
// concurrent requests share one PostgreSQL transaction.
class SyncCore::LedgerWriter final : public Writer {
 public:
  explicit LedgerWriter(Ledger* ledger) : ledger_(ledger) {}
  absl::string_view name() const override { return "ledger"; }
  absl::Status Write(absl::Span<const DecodedBatch* const> batches) override {
    std::vector<LedgerEntry> entries;
    entries.reserve(batches.size());
    for (const DecodedBatch* b : batches) {
      entries.push_back({b->device.device_id, b->stream, b->sequence_number,
                         b->record_count()});
    }
    return ledger_->RecordApplied(entries);
  }
  absl::Status Ping() override { return absl::OkStatus(); }

 private:
  Ledger* const ledger_;
};

// A delivery under way: its owner's answer path and the calls that joined it.
struct SyncCore::Inflight {
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  absl::StatusOr<Applied> result ABSL_GUARDED_BY(mu) =
      absl::UnknownError("pending");
  int64_t sequence_number = 0;
  AppliedDone owner;
  std::vector<AppliedDone> joined ABSL_GUARDED_BY(mu);
};

// One caller's answer, given by whichever of the delivery and the deadline
// comes first.
struct SyncCore::OnceAnswer {
  absl::Mutex mu;
  bool given ABSL_GUARDED_BY(mu) = false;
  AppliedDone done ABSL_GUARDED_BY(mu);
  TimerQueue::Handle timer;  // set before the delivery starts

  void Give(absl::StatusOr<Applied> result) {
    AppliedDone d;
    {
      absl::MutexLock lock(&mu);
      if (given) return;
      given = true;
      d = std::move(done);
    }
    std::move(d)(std::move(result));
  }
};

SyncCore::SyncCore(Authenticator* auth, Ledger* ledger, DeviceRegistry* devices,
                   Router* router, Clock* clock, metrics::Registry* metrics,
                   Options options)
    : auth_(auth),
      ledger_(ledger),
      devices_(devices),
      router_(router),
      clock_(clock),
      metrics_(metrics),
      options_(options),
      ledger_writer_(std::make_unique<LedgerWriter>(ledger)),
      ledger_commit_(std::make_unique<GroupCommitter>(
          ledger_writer_.get(), clock, metrics, options.ledger_commit)),
      deadlines_(clock) {
  if (metrics_ != nullptr) {
    rpc_requests_ = &metrics_->CounterFamily(
        "fleetd_rpc_requests_total", "RPCs handled, by method and result.",
        {"method", "protocol", "code"});
    rpc_duration_ = &metrics_->HistogramFamily(
        "fleetd_rpc_duration_seconds", "Time to handle an RPC.", {"method"},
        metrics::LatencyBuckets());
    auto& records = metrics_->CounterFamily(
        "fleetd_records_received_total",
        "Records in valid batches received, by kind.", {"kind"});
    auto& batches = metrics_->CounterFamily(
        "fleetd_batches_total", "Device batches by kind and outcome.",
        {"kind", "result"});
    for (DataKind kind :
         {DataKind::kMetrics, DataKind::kLogs, DataKind::kEvents}) {
      const int k = static_cast<int>(kind);
      const std::string name(DataKindName(kind));
      records_received_[k] = &records.WithLabels({name});
      int r = 0;
      for (const char* result : {"applied", "duplicate", "failed"}) {
        batches_[k][r++] = &batches.WithLabels({name, result});
      }
    }
  }
  last_seen_thread_ = std::thread([this] { LastSeenLoop(); });
}

SyncCore::~SyncCore() {
  {
    // The flushers finish what was handed to them; their answers use this.
    absl::MutexLock lock(&deliveries_mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(deliveries_mu_) {
      return deliveries_ == 0;
    };
    deliveries_mu_.Await(absl::Condition(&idle));
  }
  stop_.Notify();
  last_seen_thread_.join();
  FlushLastSeen();
}

absl::Time SyncCore::MonotonicDeadline(const CallContext& context) {
  absl::Time now = clock_->MonotonicNow();
  absl::Duration wait = options_.max_wait;
  if (context.deadline != absl::InfiniteFuture()) {
    wait = std::min(wait, context.deadline - clock_->Now());
  }
  return now + wait;
}

void SyncCore::Touch(const std::string& device_id) {
  absl::MutexLock lock(&seen_mu_);
  seen_[device_id] = clock_->Now();
}

void SyncCore::NoteHealth(const std::string& device_id,
                          const SyncHealth& health, bool persist) {
  absl::MutexLock lock(&seen_mu_);
  auto [it, inserted] = health_.emplace(device_id, SyncHealth{});
  SyncHealth before = it->second;
  if (!inserted && before == health) return;
  it->second = health;
  if (persist) {
    health_pending_[device_id] = {device_id, health, clock_->Now()};
  }
  health_sum_.set_aside_batches +=
      health.set_aside_batches - before.set_aside_batches;
  health_sum_.set_aside_records +=
      health.set_aside_records - before.set_aside_records;
  health_sum_.evicted_records +=
      health.evicted_records - before.evicted_records;
  devices_with_set_aside_ += (health.set_aside_batches > 0 ? 1 : 0) -
                             (before.set_aside_batches > 0 ? 1 : 0);
  if (health.set_aside_batches > before.set_aside_batches) {
    LOG(WARNING) << "device " << device_id << " reports "
                 << health.set_aside_batches << " batches ("
                 << health.set_aside_records
                 << " records) set aside after this server rejected them";
  }
  if (metrics_ == nullptr) return;
  if (health.set_aside_batches > before.set_aside_batches) {
    metrics_
        ->GetCounter("fleetd_device_set_aside_batches_reported_total",
                     "Increases of the set-aside batch counts devices report "
                     "(batches a device moved aside after a rejection).")
        .Increment(static_cast<double>(health.set_aside_batches -
                                       before.set_aside_batches));
  }
  metrics_
      ->GetGauge("fleetd_devices_set_aside_batches",
                 "Batches kept set aside on devices, summed over the latest "
                 "report of every device seen by this server.")
      .Set(static_cast<double>(health_sum_.set_aside_batches));
  metrics_
      ->GetGauge("fleetd_devices_set_aside_records",
                 "Records in batches kept set aside on devices (latest "
                 "reports, summed).")
      .Set(static_cast<double>(health_sum_.set_aside_records));
  metrics_
      ->GetGauge("fleetd_devices_evicted_records",
                 "Records devices report evicted by their storage quota "
                 "(latest reports, summed).")
      .Set(static_cast<double>(health_sum_.evicted_records));
  metrics_
      ->GetGauge("fleetd_devices_with_set_aside_batches",
                 "Devices whose latest report has set-aside batches.")
      .Set(static_cast<double>(devices_with_set_aside_));
}

void SyncCore::FlushLastSeen() {
  std::map<std::string, absl::Time> seen;
  std::map<std::string, SyncHealthReport> health;
  {
    absl::MutexLock lock(&seen_mu_);
    seen.swap(seen_);
    health.swap(health_pending_);
  }
  if (!health.empty()) {
    std::vector<SyncHealthReport> reports;
    reports.reserve(health.size());
    for (const auto& [id, r] : health) reports.push_back(r);
    absl::Status s = devices_->RecordSyncHealth(reports);
    if (!s.ok()) {
      LOG(WARNING) << "could not record delivery health of " << reports.size()
                   << " devices: " << s;
      absl::MutexLock lock(&seen_mu_);
      for (auto& [id, r] : health) health_pending_.emplace(id, r);
    }
  }
  if (seen.empty()) return;
  std::vector<std::string> ids;
  absl::Time latest = absl::InfinitePast();
  for (const auto& [id, t] : seen) {
    ids.push_back(id);
    latest = std::max(latest, t);
  }
  absl::Status s = devices_->TouchDevices(ids, latest);
  if (!s.ok()) {
    LOG(WARNING) << "could not record last-seen for " << ids.size()
                 << " devices: " << s;
    absl::MutexLock lock(&seen_mu_);
    for (const auto& [id, t] : seen)
      seen_.emplace(id, t);  // keep newer entries
  }
}

void SyncCore::LastSeenLoop() {
  while (!clock_->SleepFor(options_.last_seen_flush_interval, &stop_))
    FlushLastSeen();
}

void SyncCore::Observe(absl::string_view rpc, const CallContext& context,
                       const absl::Status& status, absl::Time start) {
  if (metrics_ == nullptr) return;
  rpc_requests_
      ->WithLabels({std::string(rpc), context.protocol,
                    std::string(absl::StatusCodeToString(status.code()))})
      .Increment();
  rpc_duration_->WithLabels({std::string(rpc)})
      .Observe(absl::ToDoubleSeconds(clock_->MonotonicNow() - start));
}

void SyncCore::DeliverAsync(std::shared_ptr<const DecodedBatch> batch,
                            AppliedDone done) {
  // Join a delivery of the same batch that is already under way.
  std::string key = InflightKey(*batch);
  auto mine = std::make_shared<Inflight>();
  std::shared_ptr<Inflight> theirs;
  {
    absl::MutexLock lock(&inflight_mu_);
    auto [it, inserted] = inflight_.emplace(key, mine);
    if (!inserted) theirs = it->second;
  }
  if (theirs != nullptr) {
    absl::StatusOr<Applied> r;
    {
      absl::MutexLock lock(&theirs->mu);
      if (!theirs->done) {
        theirs->joined.push_back(std::move(done));
        return;
      }
      r = theirs->result;
    }
    if (r.ok()) r->duplicate = true;
    std::move(done)(std::move(r));
    return;
  }
  mine->sequence_number = batch->sequence_number;
  mine->owner = std::move(done);
  {
    absl::MutexLock lock(&deliveries_mu_);
    ++deliveries_;
  }
  LedgerEntry entry{batch->device.device_id, batch->stream,
                    batch->sequence_number, batch->record_count()};
  absl::StatusOr<std::vector<bool>> applied = ledger_->AreApplied({&entry, 1});
  if (!applied.ok()) return Finish(key, mine, applied.status());
  if ((*applied)[0])
    return Finish(key, mine, Applied{entry.sequence_number, true});
  router_->DeliverAsync(batch, [this, batch, key, mine](absl::Status s) {
    if (!s.ok()) return Finish(key, mine, std::move(s));
    // Every backend has it: record it, then acknowledge.
    absl::Status refused =
        ledger_commit_->Enqueue(batch, [this, key, mine](absl::Status s) {
          if (!s.ok()) return Finish(key, mine, std::move(s));
          Finish(key, mine, Applied{mine->sequence_number, false});
        });
    if (!refused.ok()) Finish(key, mine, std::move(refused));
  });
}

void SyncCore::Finish(const std::string& key,
                      const std::shared_ptr<Inflight>& mine,
                      absl::StatusOr<Applied> result) {
  std::vector<AppliedDone> joined;
  {
    absl::MutexLock lock(&mine->mu);
    mine->result = result;
    mine->done = true;
    joined.swap(mine->joined);
  }
  {
    absl::MutexLock lock(&inflight_mu_);
    inflight_.erase(key);
  }
  absl::StatusOr<Applied> shared = result;
  if (shared.ok()) shared->duplicate = true;
  for (AppliedDone& d : joined) std::move(d)(shared);
  std::move(mine->owner)(std::move(result));
  absl::MutexLock lock(&deliveries_mu_);
  --deliveries_;
}

void SyncCore::ApplyAsync(const CallContext& context, absl::string_view rpc,
                          const Decoder& decode, AppliedDone done) {
  absl::StatusOr<DeviceIdentity> identity =
      auth_->Authenticate(context.api_key);
  if (!identity.ok()) return std::move(done)(identity.status());
  absl::StatusOr<DecodedBatch> decoded = decode(*identity);
  if (!decoded.ok()) {
    LOG(WARNING) << rpc << " from " << identity->device_id
                 << " rejected: " << decoded.status();
    return std::move(done)(decoded.status());
  }
  Touch(identity->device_id);
  if (metrics_ != nullptr) {
    records_received_[static_cast<int>(decoded->kind)]->Increment(
        decoded->record_count());
  }
  auto batch = std::make_shared<const DecodedBatch>(*std::move(decoded));
  const DataKind kind = batch->kind;
  // The caller is answered by the delivery or by the deadline, whichever
  // comes first; a delivery that outlives the deadline goes on and is
  // recorded, so the device's retry is acknowledged as a duplicate.
  auto answer = std::make_shared<OnceAnswer>();
  answer->done = std::move(done);
  answer->timer = deadlines_.Schedule(MonotonicDeadline(context), [answer] {
    answer->Give(absl::DeadlineExceededError(
        "deadline passed waiting for the backends"));
  });
  DeliverAsync(std::move(batch), [this, kind, answer](
                                     absl::StatusOr<Applied> applied) mutable {
    deadlines_.Cancel(answer->timer);
    if (metrics_ != nullptr) {
      const int result = !applied.ok() ? 2 : applied->duplicate ? 1 : 0;
      batches_[static_cast<int>(kind)][result]->Increment();
    }
    answer->Give(std::move(applied));
  });
}

absl::StatusOr<SyncCore::Applied> SyncCore::Apply(const CallContext& context,
                                                  absl::string_view rpc,
                                                  const Decoder& decode) {
  struct Answer {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    absl::StatusOr<Applied> result ABSL_GUARDED_BY(mu);
  };
  // Shared: the callback may still be leaving the lock when this returns.
  auto answer = std::make_shared<Answer>();
  ApplyAsync(context, rpc, decode, [answer](absl::StatusOr<Applied> r) {
    absl::MutexLock lock(&answer->mu);
    answer->result = std::move(r);
    answer->done = true;
  });
  // ApplyAsync answers by the call's deadline at the latest.
  absl::MutexLock lock(&answer->mu);
  answer->mu.Await(absl::Condition(&answer->done));
  return answer->result;
}

template <typename Response>
Response SyncCore::Acknowledgement(const Applied& applied) {
  Response response;
  response.set_success(true);
  response.set_last_sequence_ack(applied.sequence_number);
  response.set_duplicate(applied.duplicate);
  SetTimestamp(response.mutable_server_time(), clock_->Now());
  return response;
}

template <typename Response>
void SyncCore::ApplyRpcAsync(const CallContext& context, absl::string_view rpc,
                             const Decoder& decode, Reply<Response> done) {
  const absl::Time start = clock_->MonotonicNow();
  ApplyAsync(context, rpc, decode,
             [this, rpc, protocol = context.protocol, start,
              done = std::move(done)](absl::StatusOr<Applied> applied) mutable {
               CallContext observed;
               observed.protocol = std::move(protocol);
               Observe(rpc, observed, applied.status(), start);
               if (!applied.ok()) return std::move(done)(applied.status());
               std::move(done)(Acknowledgement<Response>(*applied));
             });
}

absl::StatusOr<v1::SyncMetricsResponse> SyncCore::SyncMetrics(
    const CallContext& context, const v1::SyncMetricsRequest& request) {
  absl::Time start = clock_->MonotonicNow();
  absl::StatusOr<Applied> applied =
      Apply(context, "SyncMetrics", [&](const DeviceIdentity& id) {
        return DecodeMetrics(request, id, options_.limits, clock_->Now());
      });
  Observe("SyncMetrics", context, applied.status(), start);
  if (!applied.ok()) return applied.status();
  return Acknowledgement<v1::SyncMetricsResponse>(*applied);
}

absl::StatusOr<v1::SyncLogsResponse> SyncCore::SyncLogs(
    const CallContext& context, const v1::SyncLogsRequest& request) {
  absl::Time start = clock_->MonotonicNow();
  absl::StatusOr<Applied> applied =
      Apply(context, "SyncLogs", [&](const DeviceIdentity& id) {
        return DecodeLogs(request, id, options_.limits, clock_->Now());
      });
  Observe("SyncLogs", context, applied.status(), start);
  if (!applied.ok()) return applied.status();
  return Acknowledgement<v1::SyncLogsResponse>(*applied);
}

absl::StatusOr<v1::SyncEventsResponse> SyncCore::SyncEvents(
    const CallContext& context, const v1::SyncEventsRequest& request) {
  absl::Time start = clock_->MonotonicNow();
  absl::StatusOr<Applied> applied =
      Apply(context, "SyncEvents", [&](const DeviceIdentity& id) {
        return DecodeEvents(request, id, options_.limits, clock_->Now());
      });
  Observe("SyncEvents", context, applied.status(), start);
  if (!applied.ok()) return applied.status();
  return Acknowledgement<v1::SyncEventsResponse>(*applied);
}

void SyncCore::SyncMetricsAsync(const CallContext& context,
                                const v1::SyncMetricsRequest& request,
                                Reply<v1::SyncMetricsResponse> done) {
  ApplyRpcAsync(
      context, "SyncMetrics",
      [&](const DeviceIdentity& id) {
        return DecodeMetrics(request, id, options_.limits, clock_->Now());
      },
      std::move(done));
}

void SyncCore::SyncMetricsWireAsync(const CallContext& context,
                                    absl::string_view request,
                                    Reply<v1::SyncMetricsResponse> done) {
  ApplyRpcAsync(
      context, "SyncMetrics",
      [&](const DeviceIdentity& id) {
        return DecodeMetricsWire(request, id, options_.limits, clock_->Now());
      },
      std::move(done));
}

void SyncCore::SyncLogsAsync(const CallContext& context,
                             const v1::SyncLogsRequest& request,
                             Reply<v1::SyncLogsResponse> done) {
  ApplyRpcAsync(
      context, "SyncLogs",
      [&](const DeviceIdentity& id) {
        return DecodeLogs(request, id, options_.limits, clock_->Now());
      },
      std::move(done));
}

void SyncCore::SyncEventsAsync(const CallContext& context,
                               const v1::SyncEventsRequest& request,
                               Reply<v1::SyncEventsResponse> done) {
  ApplyRpcAsync(
      context, "SyncEvents",
      [&](const DeviceIdentity& id) {
        return DecodeEvents(request, id, options_.limits, clock_->Now());
      },
      std::move(done));
}

absl::StatusOr<v1::GetSyncConfigResponse> SyncCore::GetSyncConfig(
    const CallContext& context, const v1::GetSyncConfigRequest& request) {
  absl::Time start = clock_->MonotonicNow();
  absl::StatusOr<DeviceIdentity> identity =
      auth_->Authenticate(context.api_key);
  absl::Status status = identity.status();
  if (identity.ok() && !request.device_id().empty() &&
      request.device_id() != identity->device_id) {
    status = absl::PermissionDeniedError(
        "device_id names another device than the API key's");
  }
  Observe("GetSyncConfig", context, status, start);
  RETURN_IF_ERROR(status);
  Touch(identity->device_id);
  int tier = TierOf(request.capability());
  v1::GetSyncConfigResponse response;
  *response.mutable_config() = ConfigForTier(tier);
  response.set_enable_compression(response.config().compression_enabled());
  response.set_enable_batching(true);
  response.set_enable_edge_analytics(tier == 1);
  return response;
}

absl::StatusOr<v1::UpdateDeviceInfoResponse> SyncCore::UpdateDeviceInfo(
    const CallContext& context, const v1::UpdateDeviceInfoRequest& request) {
  absl::Time start = clock_->MonotonicNow();
  auto run = [&]() -> absl::StatusOr<v1::UpdateDeviceInfoResponse> {
    ASSIGN_OR_RETURN(DeviceIdentity identity,
                     auth_->Authenticate(context.api_key));
    RETURN_IF_ERROR(CheckMetadataIdentity(request.metadata(), identity));
    const v1::SyncDeviceCapability* capability =
        request.metadata().has_capability() ? &request.metadata().capability()
                                            : nullptr;
    RETURN_IF_ERROR(devices_->UpdateDeviceInfo(identity, request.info(),
                                               capability, clock_->Now()));
    NoteHealth(
        identity.device_id,
        {request.info().set_aside_batches(), request.info().set_aside_records(),
         request.info().evicted_records()},
        /*persist=*/false);
    v1::UpdateDeviceInfoResponse response;
    response.set_success(true);
    SetTimestamp(response.mutable_server_time(), clock_->Now());
    if (capability != nullptr) {
      *response.mutable_config_update() = ConfigForTier(TierOf(*capability));
    }
    return response;
  };
  absl::StatusOr<v1::UpdateDeviceInfoResponse> response = run();
  Observe("UpdateDeviceInfo", context, response.status(), start);
  return response;
}

// One StreamSync call: each batch is delivered like a unary call and answered
// with an ack; heartbeats may draw a flush, and overload draws a pause, then a
// resume.
class SyncCore::Session final : public StreamSession {
 public:
  Session(SyncCore* core, CallContext context, DeviceIdentity identity,
          StreamSink* sink)
      : core_(core),
        context_(std::move(context)),
        identity_(std::move(identity)),
        sink_(sink) {}

  absl::Status OnRequest(const v1::StreamSyncRequest& request) override {
    if (request.metadata().has_capability() && !sent_config_) {
      v1::StreamSyncResponse r;
      *r.mutable_config_update() =
          ConfigForTier(TierOf(request.metadata().capability()));
      Send(r);
      sent_config_ = true;
    }
    switch (request.data_case()) {
      case v1::StreamSyncRequest::kMetrics: {
        v1::SyncMetricsRequest unary;
        *unary.mutable_metadata() = request.metadata();
        *unary.mutable_batch() = request.metrics();
        return HandleBatch(
            "metrics", request.metadata(), [&](const DeviceIdentity& id) {
              return DecodeMetrics(unary, id, core_->options_.limits,
                                   core_->clock_->Now());
            });
      }
      case v1::StreamSyncRequest::kLogs: {
        v1::SyncLogsRequest unary;
        *unary.mutable_metadata() = request.metadata();
        *unary.mutable_batch() = request.logs();
        return HandleBatch(
            "logs", request.metadata(), [&](const DeviceIdentity& id) {
              return DecodeLogs(unary, id, core_->options_.limits,
                                core_->clock_->Now());
            });
      }
      case v1::StreamSyncRequest::kEvents: {
        v1::SyncEventsRequest unary;
        *unary.mutable_metadata() = request.metadata();
        *unary.mutable_batch() = request.events();
        return HandleBatch(
            "events", request.metadata(), [&](const DeviceIdentity& id) {
              return DecodeEvents(unary, id, core_->options_.limits,
                                  core_->clock_->Now());
            });
      }
      case v1::StreamSyncRequest::kHeartbeat:
        return HandleHeartbeat(request.heartbeat());
      case v1::StreamSyncRequest::kAck:
        return absl::OkStatus();  // the device confirms a command; nothing to
                                  // do
      case v1::StreamSyncRequest::DATA_NOT_SET:
        return absl::InvalidArgumentError("stream message carries no data");
    }
    return absl::InvalidArgumentError("unknown stream message");
  }

  absl::Status Finish() override { return absl::OkStatus(); }

 private:
  absl::Status HandleBatch(
      absl::string_view stream, const v1::SyncMetadata& metadata,
      const std::function<absl::StatusOr<DecodedBatch>(const DeviceIdentity&)>&
          decode) {
    absl::Time start = core_->clock_->MonotonicNow();
    absl::StatusOr<Applied> applied =
        core_->Apply(context_, "StreamSync", decode);
    core_->Observe("StreamSync", context_, applied.status(), start);
    absl::Status s = applied.status();
    // A key that stopped working ends the stream; a bad batch does not.
    if (absl::IsUnauthenticated(s) || absl::IsPermissionDenied(s)) return s;
    v1::StreamSyncResponse r;
    v1::SyncAck* ack = r.mutable_ack();
    ack->set_sequence_number(metadata.sequence_number());
    ack->set_stream(metadata.stream().empty() ? std::string(stream)
                                              : metadata.stream());
    ack->set_success(s.ok());
    if (!s.ok()) {
      ack->set_error_message(std::string(s.message()));
      // Only our definite verdict on the batch lets the device set it aside;
      // everything else (INTERNAL, UNIMPLEMENTED, a backend's trouble, ...) is
      // retried.
      ack->set_retryable(ClassifyError(s) != ErrorClass::kSetAside);
      if (auto hint = GetRetryAfter(s); hint.has_value()) {
        ack->set_retry_after_ms(
            static_cast<int32_t>(absl::ToInt64Milliseconds(*hint)));
      }
    }
    Send(r);
    if (absl::IsResourceExhausted(s)) {
      absl::Duration pause = GetRetryAfter(s).value_or(absl::Seconds(1));
      v1::StreamSyncResponse p;
      p.mutable_pause()->set_duration_seconds(static_cast<int32_t>(
          std::max<int64_t>(1, absl::ToInt64Seconds(pause))));
      p.mutable_pause()->set_reason("server overloaded");
      Send(p);
      paused_until_ = core_->clock_->MonotonicNow() + pause;
    }
    return absl::OkStatus();
  }

  absl::Status HandleHeartbeat(const v1::SyncHeartbeat& heartbeat) {
    RETURN_IF_ERROR(core_->auth_->Authenticate(context_.api_key).status());
    core_->Touch(identity_.device_id);
    core_->NoteHealth(
        identity_.device_id,
        {heartbeat.set_aside_batches(), heartbeat.set_aside_records(),
         heartbeat.evicted_records()},
        /*persist=*/true);
    absl::Time now = core_->clock_->MonotonicNow();
    if (paused_until_.has_value()) {
      if (now < *paused_until_) return absl::OkStatus();
      paused_until_.reset();
      v1::StreamSyncResponse r;
      r.mutable_resume()->set_reason("server accepting data again");
      Send(r);
    }
    int64_t backlog = heartbeat.unsynced_metrics() + heartbeat.unsynced_logs();
    if (backlog > 0) {
      v1::StreamSyncResponse r;
      r.mutable_flush()->set_force(false);
      r.mutable_flush()->set_reason(
          absl::StrCat("device reports ", backlog, " unsynced records"));
      Send(r);
    }
    return absl::OkStatus();
  }

  void Send(v1::StreamSyncResponse& r) {
    SetTimestamp(r.mutable_server_time(), core_->clock_->Now());
    sink_->Send(r);
  }

  SyncCore* const core_;
  const CallContext context_;
  const DeviceIdentity identity_;
  StreamSink* const sink_;
  bool sent_config_ = false;
  std::optional<absl::Time> paused_until_;
};

absl::StatusOr<std::unique_ptr<StreamSession>> SyncCore::OpenStream(
    const CallContext& context, StreamSink* sink) {
  ASSIGN_OR_RETURN(DeviceIdentity identity,
                   auth_->Authenticate(context.api_key));
  return std::make_unique<Session>(this, context, std::move(identity), sink);
}

}  // namespace fleetd::server
