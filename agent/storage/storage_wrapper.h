// A Storage that forwards every call to another one, for decorators that
// change a few calls (fault injection, recording in tests), as LevelDB's
// EnvWrapper does for Env.
#ifndef FLEETD_AGENT_STORAGE_STORAGE_WRAPPER_H_
#define FLEETD_AGENT_STORAGE_STORAGE_WRAPPER_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "agent/storage/storage.h"

namespace fleetd::agent {

// Thread-safety is the wrapped store's. `base` must outlive the wrapper.
class StorageWrapper : public Storage {
 public:
  explicit StorageWrapper(Storage* base) : base_(base) {}

  Storage* base() const { return base_; }

  absl::StatusOr<IdRange> AppendMetrics(
      absl::Span<const v1::Metric> metrics) override {
    return base_->AppendMetrics(metrics);
  }
  absl::StatusOr<IdRange> AppendLogs(
      absl::Span<const v1::LogEntry> logs) override {
    return base_->AppendLogs(logs);
  }
  absl::StatusOr<IdRange> AppendEvents(
      absl::Span<const v1::Event> events) override {
    return base_->AppendEvents(events);
  }
  absl::StatusOr<std::vector<StoredMetric>> ReadMetrics(
      const ReadOptions& options) override {
    return base_->ReadMetrics(options);
  }
  absl::StatusOr<std::vector<StoredLog>> ReadLogs(
      const ReadOptions& options) override {
    return base_->ReadLogs(options);
  }
  absl::StatusOr<std::vector<StoredEvent>> ReadEvents(
      const ReadOptions& options) override {
    return base_->ReadEvents(options);
  }
  absl::StatusOr<int64_t> MarkSynced(RecordKind kind, IdRange ids) override {
    return base_->MarkSynced(kind, ids);
  }
  absl::StatusOr<StorageInfo> Info() override { return base_->Info(); }
  absl::StatusOr<int64_t> CleanOlderThan(absl::Duration age,
                                         CleanScope scope) override {
    return base_->CleanOlderThan(age, scope);
  }
  absl::Status SavePendingBatch(const PendingBatch& batch) override {
    return base_->SavePendingBatch(batch);
  }
  absl::StatusOr<std::optional<PendingBatch>> LoadPendingBatch(
      absl::string_view stream) override {
    return base_->LoadPendingBatch(stream);
  }
  absl::Status ClearPendingBatch(absl::string_view stream) override {
    return base_->ClearPendingBatch(stream);
  }
  absl::Status SetMaxBytes(int64_t max_bytes) override {
    return base_->SetMaxBytes(max_bytes);
  }
  absl::Status SetAside(const SetAsideBatch& batch) override {
    return base_->SetAside(batch);
  }
  absl::StatusOr<std::vector<SetAsideBatch>> ListSetAside() override {
    return base_->ListSetAside();
  }
  absl::StatusOr<int64_t> RetrySetAside(absl::string_view stream,
                                        int64_t sequence_number) override {
    return base_->RetrySetAside(stream, sequence_number);
  }
  absl::StatusOr<int64_t> DropSetAside(absl::string_view stream,
                                       int64_t sequence_number) override {
    return base_->DropSetAside(stream, sequence_number);
  }

 private:
  Storage* const base_;
};

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_STORAGE_STORAGE_WRAPPER_H_
