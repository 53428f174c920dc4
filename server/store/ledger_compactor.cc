#include "server/store/ledger_compactor.h"

#include "glog/logging.h"

namespace fleetd::server {

absl::StatusOr<std::unique_ptr<LedgerCompactor>> LedgerCompactor::Start(
    PgStore* store, Clock* clock, Options options) {
  if (options.retention <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ledger retention must be positive");
  }
  if (options.interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "ledger compaction interval must be positive");
  }
  std::unique_ptr<LedgerCompactor> c(
      new LedgerCompactor(store, clock, options));
  c->thread_ = std::thread([p = c.get()] { p->Loop(); });
  return c;
}

LedgerCompactor::LedgerCompactor(PgStore* store, Clock* clock, Options options)
    : store_(store), clock_(clock), options_(options) {}

LedgerCompactor::~LedgerCompactor() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void LedgerCompactor::Loop() {
  do {
    RunOnce();
  } while (!clock_->SleepFor(options_.interval, &stop_));
}

void LedgerCompactor::RunOnce() {
  metrics::Registry* m = options_.metrics;
  auto result = [m](const char* r) -> metrics::Counter* {
    if (m == nullptr) return nullptr;
    return &m->CounterFamily("fleetd_ledger_compactions_total",
                             "Ledger compaction runs (retention), by result.",
                             {"result"})
                .WithLabels({r});
  };
  const absl::Time cutoff = clock_->Now() - options_.retention;
  absl::StatusOr<LedgerCompaction> done = store_->CompactLedger(cutoff);
  if (!done.ok()) {
    LOG(WARNING) << "ledger compaction failed (tried again in "
                 << options_.interval << "): " << done.status();
    if (auto* c = result("error")) c->Increment();
    ++runs_;
    return;
  }
  if (done->rows_deleted > 0) {
    LOG(INFO) << "ledger compaction: " << done->rows_deleted
              << " rows applied before " << cutoff << " folded into "
              << done->floors_raised << " floors";
  }
  if (auto* c = result("ok")) c->Increment();
  absl::StatusOr<LedgerSize> size = store_->GetLedgerSize();
  if (m != nullptr) {
    m->GetCounter("fleetd_ledger_compacted_rows_total",
                  "Ledger rows deleted by retention (folded into floors).")
        .Increment(static_cast<double>(done->rows_deleted));
    if (size.ok()) {
      m->GetGauge("fleetd_ledger_rows",
                  "Rows in the ledger table sync_ledger (at the last "
                  "compaction run).")
          .Set(static_cast<double>(size->rows));
      m->GetGauge("fleetd_ledger_floor_keys",
                  "Keys (device, stream) with a compaction floor.")
          .Set(static_cast<double>(size->floor_keys));
      m->GetGauge("fleetd_ledger_table_bytes",
                  "Disk size of the ledger tables with their indexes.")
          .Set(static_cast<double>(size->table_bytes));
    }
  }
  if (!size.ok()) {
    LOG(WARNING) << "could not read the ledger's size: " << size.status();
  }
  ++runs_;
}

}  // namespace fleetd::server
