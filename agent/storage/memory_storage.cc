#include "agent/storage/memory_storage.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "agent/storage/record_codec.h"
#include "agent/storage/record_validation.h"
#include "common/status/status_macros.h"

namespace fleetd::agent {
namespace {

using storage_internal::AppendEventBody;
using storage_internal::AppendLogBody;
using storage_internal::AppendMetricPayload;
using storage_internal::DecodeEventBody;
using storage_internal::DecodeLogBody;
using storage_internal::DecodeMetricPayload;
using storage_internal::NanosToTimestamp;
using storage_internal::TimestampToNanos;

constexpr int64_t kMinCapacity = 4096;
constexpr absl::Duration kWarnInterval = absl::Seconds(10);

// Every slot in the ring starts with this header, 8-byte aligned. A slot never
// wraps around the end of the buffer: when the rest of the buffer is too small
// the writer fills it with a padding slot (which may be only 8 bytes: size and
// kind) and starts again at offset 0. Read
// and written with memcpy, never through a cast, so alignment does not matter
// to the compiler.
struct SlotHeader {
  uint32_t size;  // whole slot, header included, a multiple of 8
  uint8_t kind;   // RecordKind, or kPadding
  uint8_t flags;  // kSynced | kDeleted | kSetAside
  uint8_t pad;    // bytes after the payload up to `size`
  uint8_t reserved;
  int64_t id;
  int64_t ts;  // Unix nanoseconds
};
static_assert(sizeof(SlotHeader) == 24, "slot header layout");
constexpr uint8_t kPadding = 0xff;
constexpr uint8_t kSynced = 1;
constexpr uint8_t kDeleted = 2;
// In a set-aside batch (MemoryStorage::batches_ says which).
constexpr uint8_t kSetAside = 4;
// Flags of a record that is not waiting to be synced.
constexpr uint8_t kNotUnsynced = kSynced | kDeleted | kSetAside;
constexpr size_t kFlagsOffset = offsetof(SlotHeader, flags);

constexpr uint64_t Align8(uint64_t n) { return (n + 7) & ~uint64_t{7}; }

class MemoryStorage final : public Storage {
 public:
  MemoryStorage(uint64_t capacity, Clock* clock, StorageLogFn log)
      : capacity_(capacity),
        clock_(clock),
        log_(std::move(log)),
        buf_(new char[capacity]) {}

  absl::StatusOr<IdRange> AppendMetrics(
      absl::Span<const v1::Metric> metrics) override {
    absl::MutexLock lock(&mu_);
    return AppendAll(metrics, RecordKind::kMetric, "metric",
                     [](const v1::Metric& m, std::string* out) {
                       AppendMetricPayload(m, out);
                     });
  }

  absl::StatusOr<IdRange> AppendLogs(
      absl::Span<const v1::LogEntry> logs) override {
    absl::MutexLock lock(&mu_);
    return AppendAll(
        logs, RecordKind::kLog, "log entry",
        [](const v1::LogEntry& l, std::string* out) { AppendLogBody(l, out); });
  }

  absl::StatusOr<IdRange> AppendEvents(
      absl::Span<const v1::Event> events) override {
    absl::MutexLock lock(&mu_);
    return AppendAll(
        events, RecordKind::kEvent, "event",
        [](const v1::Event& e, std::string* out) { AppendEventBody(e, out); });
  }

  absl::StatusOr<std::vector<StoredMetric>> ReadMetrics(
      const ReadOptions& options) override {
    absl::MutexLock lock(&mu_);
    return Read<v1::Metric>(RecordKind::kMetric, options, DecodeMetricPayload);
  }

  absl::StatusOr<std::vector<StoredLog>> ReadLogs(
      const ReadOptions& options) override {
    absl::MutexLock lock(&mu_);
    return Read<v1::LogEntry>(RecordKind::kLog, options, DecodeLogBody);
  }

  absl::StatusOr<std::vector<StoredEvent>> ReadEvents(
      const ReadOptions& options) override {
    absl::MutexLock lock(&mu_);
    return Read<v1::Event>(RecordKind::kEvent, options, DecodeEventBody);
  }

  absl::StatusOr<int64_t> MarkSynced(RecordKind kind, IdRange ids) override {
    absl::MutexLock lock(&mu_);
    if (ids.empty()) return 0;
    const int k = static_cast<int>(kind);
    uint64_t pos = std::max(head_, scan_[k]);
    uint64_t clean_until = pos;
    bool clean_prefix = true;
    int64_t changed = 0;
    while (pos < tail_) {
      SlotHeader h = HeaderAt(pos);
      if (h.kind == k && (h.flags & kDeleted) == 0) {
        if (h.id > ids.last) break;
        if ((h.flags & kNotUnsynced) == 0 && h.id >= ids.first) {
          buf_[Physical(pos) + kFlagsOffset] |= kSynced;
          h.flags |= kSynced;
          ++changed;
        }
        if ((h.flags & kNotUnsynced) == 0) clean_prefix = false;
      }
      pos += h.size;
      if (clean_prefix) clean_until = pos;
    }
    if (clean_prefix) clean_until = pos;
    scan_[k] = clean_until;
    kinds_[k].unsynced -= changed;
    kinds_[k].synced += changed;
    return changed;
  }

  absl::StatusOr<StorageInfo> Info() override {
    absl::MutexLock lock(&mu_);
    StorageInfo info;
    info.backend = "memory";
    info.kinds = kinds_;
    for (int k = 0; k < kRecordKindCount; ++k) {
      if (kinds_[k].unsynced == 0) continue;
      for (uint64_t pos = std::max(head_, scan_[k]); pos < tail_;) {
        SlotHeader h = HeaderAt(pos);
        if (h.kind == k && (h.flags & kNotUnsynced) == 0) {
          info.kinds[k].oldest_unsynced_time = absl::FromUnixNanos(h.ts);
          break;
        }
        pos += h.size;
      }
    }
    for (uint64_t pos = head_; pos < tail_;) {
      SlotHeader h = HeaderAt(pos);
      if (h.kind != kPadding && (h.flags & kDeleted) == 0) {
        info.oldest_record_time = absl::FromUnixNanos(h.ts);
        break;
      }
      pos += h.size;
    }
    info.bytes_used = static_cast<int64_t>(tail_ - head_);
    info.max_bytes = static_cast<int64_t>(capacity_);
    info.full_events = full_events_;
    info.set_aside_batches = static_cast<int64_t>(batches_.size());
    info.details["capacity_bytes"] = absl::StrCat(capacity_);
    return info;
  }

  absl::StatusOr<int64_t> CleanOlderThan(absl::Duration age,
                                         CleanScope scope) override {
    absl::MutexLock lock(&mu_);
    if (age < absl::ZeroDuration()) {
      return absl::InvalidArgumentError("clean age must not be negative");
    }
    const int64_t cutoff = absl::ToUnixNanos(clock_->Now() - age);
    int64_t removed = 0;
    int64_t removed_unsynced = 0;
    for (uint64_t pos = head_; pos < tail_;) {
      SlotHeader h = HeaderAt(pos);
      if (h.kind != kPadding && (h.flags & (kDeleted | kSetAside)) == 0 &&
          h.ts < cutoff) {
        const bool synced = (h.flags & kSynced) != 0;
        if (synced || scope == CleanScope::kAll) {
          buf_[Physical(pos) + kFlagsOffset] |= kDeleted;
          KindInfo& ki = kinds_[h.kind];
          (synced ? ki.synced : ki.unsynced) -= 1;
          ki.cleaned += 1;
          ++removed;
          if (!synced) ++removed_unsynced;
        }
      }
      pos += h.size;
    }
    TrimHead();
    if (removed_unsynced > 0) {
      log_(absl::LogSeverity::kWarning,
           absl::StrCat("clean removed ", removed_unsynced,
                        " unsynced records from the memory ring"));
    }
    return removed;
  }

  absl::Status SavePendingBatch(const PendingBatch& batch) override {
    absl::MutexLock lock(&mu_);
    if (batch.stream.empty()) {
      return absl::InvalidArgumentError("pending batch needs a stream name");
    }
    pending_[batch.stream] = batch;
    return absl::OkStatus();
  }

  absl::StatusOr<std::optional<PendingBatch>> LoadPendingBatch(
      absl::string_view stream) override {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(stream);
    if (it == pending_.end()) return std::nullopt;
    return it->second;
  }

  absl::Status ClearPendingBatch(absl::string_view stream) override {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(stream);
    if (it != pending_.end()) pending_.erase(it);
    return absl::OkStatus();
  }

  absl::Status SetAside(const SetAsideBatch& batch) override {
    absl::MutexLock lock(&mu_);
    const int k = static_cast<int>(batch.kind);
    if (batch.stream.empty() || k < 0 || k >= kRecordKindCount) {
      return absl::InvalidArgumentError(
          "a set-aside batch needs a stream name and a record kind");
    }
    if (FindBatch(batch.stream, batch.sequence_number) != batches_.end()) {
      return absl::AlreadyExistsError(
          absl::StrCat("batch ", batch.sequence_number, " of stream ",
                       batch.stream, " is already set aside"));
    }
    MemBatch b;
    b.batch = batch;
    b.batch.set_aside_at = clock_->Now();
    int64_t moved = 0;
    if (!batch.ids.empty()) {
      for (uint64_t pos = std::max(head_, scan_[k]); pos < tail_;) {
        SlotHeader h = HeaderAt(pos);
        if (h.kind == k && (h.flags & kDeleted) == 0) {
          if (h.id > batch.ids.last) break;
          if ((h.flags & kNotUnsynced) == 0 && h.id >= batch.ids.first) {
            buf_[Physical(pos) + kFlagsOffset] |= kSetAside;
            if (!b.runs.empty() && b.runs.back().last + 1 == h.id) {
              b.runs.back().last = h.id;
            } else {
              b.runs.push_back({h.id, h.id});
            }
            ++moved;
          }
        }
        pos += h.size;
      }
    }
    b.batch.record_count = static_cast<int32_t>(moved);
    kinds_[k].unsynced -= moved;
    kinds_[k].set_aside += moved;
    batches_.push_back(std::move(b));
    pending_.erase(batch.stream);
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<SetAsideBatch>> ListSetAside() override {
    absl::MutexLock lock(&mu_);
    std::vector<SetAsideBatch> out;
    out.reserve(batches_.size());
    for (const MemBatch& b : batches_) out.push_back(b.batch);
    return out;
  }

  absl::StatusOr<int64_t> RetrySetAside(absl::string_view stream,
                                        int64_t sequence_number) override {
    absl::MutexLock lock(&mu_);
    auto it = FindBatch(stream, sequence_number);
    if (it == batches_.end()) return NotFound(stream, sequence_number);
    const MemBatch b = std::move(*it);
    batches_.erase(it);
    const RecordKind kind = b.batch.kind;
    const int k = static_cast<int>(kind);
    // Copy the records out, then append them again with fresh ids, so no
    // batch read before the retry can span them and acknowledge them unsent.
    // The copies may overwrite the oldest records like any append.
    batch_.clear();
    offsets_.clear();
    times_.clear();
    ForEachBatchSlot(
        b, [&](uint64_t pos, const SlotHeader& h)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
                 offsets_.push_back(batch_.size());
                 times_.push_back(h.ts);
                 batch_.append(buf_.get() + Physical(pos) + sizeof(SlotHeader),
                               h.size - sizeof(SlotHeader) - h.pad);
                 buf_[Physical(pos) + kFlagsOffset] = kDeleted;
               });
    offsets_.push_back(batch_.size());
    const auto requeued = static_cast<int64_t>(times_.size());
    KindInfo& ki = kinds_[k];
    ki.set_aside -= requeued;
    TrimHead();
    const int64_t first = ki.next_id;
    for (int64_t i = 0; i < requeued; ++i) {
      Put(kind, ki.next_id++, times_[i],
          absl::string_view(batch_.data() + offsets_[i],
                            offsets_[i + 1] - offsets_[i]));
      ++ki.unsynced;
    }
    log_(absl::LogSeverity::kInfo,
         absl::StrCat("requeued ", requeued, " records of set-aside batch ",
                      sequence_number, " of stream ", stream,
                      " in the memory ring (now ids ", first, "-",
                      ki.next_id - 1, ")"));
    return requeued;
  }

  absl::StatusOr<int64_t> DropSetAside(absl::string_view stream,
                                       int64_t sequence_number) override {
    absl::MutexLock lock(&mu_);
    auto it = FindBatch(stream, sequence_number);
    if (it == batches_.end()) return NotFound(stream, sequence_number);
    const MemBatch b = std::move(*it);
    batches_.erase(it);
    int64_t deleted = 0;
    ForEachBatchSlot(b, [&](uint64_t pos, const SlotHeader&)
                            ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
                              buf_[Physical(pos) + kFlagsOffset] = kDeleted;
                              ++deleted;
                            });
    KindInfo& ki = kinds_[static_cast<int>(b.batch.kind)];
    ki.set_aside -= deleted;
    ki.set_aside_dropped += deleted;
    TrimHead();
    log_(
        absl::LogSeverity::kWarning,
        absl::StrCat(
            "dropped set-aside batch ", sequence_number, " of stream ", stream,
            ": deleted ", deleted, " ", RecordKindName(b.batch.kind),
            " from the memory ring (set aside because: ", b.batch.reason, ")"));
    return deleted;
  }

 private:
  // A set-aside batch and the runs of ids its records have (a batch can span
  // records that were not moved with it, such as an earlier set-aside batch).
  struct MemBatch {
    SetAsideBatch batch;
    std::vector<IdRange> runs;

    bool Contains(int64_t id) const {
      for (const IdRange& r : runs) {
        if (r.first <= id && id <= r.last) return true;
      }
      return false;
    }
  };

  std::vector<MemBatch>::iterator FindBatch(absl::string_view stream,
                                            int64_t sequence_number)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return std::find_if(batches_.begin(), batches_.end(),
                        [&](const MemBatch& b) {
                          return b.batch.stream == stream &&
                                 b.batch.sequence_number == sequence_number;
                        });
  }

  static absl::Status NotFound(absl::string_view stream,
                               int64_t sequence_number) {
    return absl::NotFoundError(absl::StrCat(
        "no set-aside batch ", sequence_number, " of stream ", stream));
  }

  // Calls fn(position, header) for every live record of `b`, oldest first.
  template <typename Fn>
  void ForEachBatchSlot(const MemBatch& b, Fn&& fn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (b.runs.empty()) return;
    const int k = static_cast<int>(b.batch.kind);
    for (uint64_t pos = head_; pos < tail_;) {
      const SlotHeader h = HeaderAt(pos);
      if (h.kind == k && (h.flags & kSetAside) != 0 &&
          (h.flags & kDeleted) == 0) {
        if (h.id > b.runs.back().last) break;
        if (b.Contains(h.id)) fn(pos, h);
      }
      pos += h.size;
    }
  }

  // A set-aside record was overwritten: its batch loses it, and a batch that
  // lost its last record is forgotten (and logged: it is gone for good).
  void LoseSetAsideRecord(RecordKind kind, int64_t id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (auto it = batches_.begin(); it != batches_.end(); ++it) {
      if (it->batch.kind != kind || !it->Contains(id)) continue;
      if (--it->batch.record_count <= 0) {
        log_(absl::LogSeverity::kWarning,
             absl::StrCat("memory ring full: overwrote the last record of "
                          "set-aside batch ",
                          it->batch.sequence_number, " of stream ",
                          it->batch.stream,
                          " (set aside because: ", it->batch.reason, ")"));
        batches_.erase(it);
      }
      return;
    }
  }

  // Gives the space of a removed prefix back at once.
  void TrimHead() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    while (head_ < tail_) {
      SlotHeader h = HeaderAt(head_);
      if (h.kind != kPadding && (h.flags & kDeleted) == 0) break;
      head_ += h.size;
    }
    if (head_ == tail_) {
      head_ = tail_ = 0;
      scan_.fill(0);
    }
  }

  uint64_t Physical(uint64_t logical) const { return logical % capacity_; }

  SlotHeader HeaderAt(uint64_t logical) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SlotHeader h;
    const uint64_t p = Physical(logical);
    // A padding slot may be only 8 bytes long at the very end.
    const size_t n = std::min<uint64_t>(sizeof(h), capacity_ - p);
    std::memset(&h, 0, sizeof(h));
    std::memcpy(&h, buf_.get() + p, n);
    return h;
  }

  // Drops the oldest slot, counting a live record as overwritten.
  void PopHead() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    SlotHeader h = HeaderAt(head_);
    if (h.kind != kPadding && (h.flags & kDeleted) == 0) {
      KindInfo& ki = kinds_[h.kind];
      if (h.flags & kSetAside) {
        --ki.set_aside;
        ++ki.set_aside_dropped;
        ++overwritten_set_aside_;
        LoseSetAsideRecord(static_cast<RecordKind>(h.kind), h.id);
      } else if (h.flags & kSynced) {
        --ki.synced;
        ++ki.evicted_synced;
        ++overwritten_synced_;
      } else {
        --ki.unsynced;
        ++ki.dropped_unsynced;
        ++overwritten_unsynced_;
      }
    }
    head_ += h.size;
  }

  void MakeFree(uint64_t n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    while (capacity_ - (tail_ - head_) < n) PopHead();
  }

  // Writes one slot at the tail, overwriting the oldest slots as needed.
  void Put(RecordKind kind, int64_t id, int64_t ts, absl::string_view payload)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const uint64_t size = Align8(sizeof(SlotHeader) + payload.size());
    uint64_t p = Physical(tail_);
    if (p + size > capacity_) {
      const uint64_t rest = capacity_ - p;
      MakeFree(rest);
      SlotHeader pad{};
      pad.size = static_cast<uint32_t>(rest);
      pad.kind = kPadding;
      std::memcpy(buf_.get() + p, &pad, std::min<uint64_t>(rest, sizeof(pad)));
      tail_ += rest;
      p = 0;
    }
    MakeFree(size);
    SlotHeader h{};
    h.size = static_cast<uint32_t>(size);
    h.kind = static_cast<uint8_t>(kind);
    h.pad = static_cast<uint8_t>(size - sizeof(SlotHeader) - payload.size());
    h.id = id;
    h.ts = ts;
    char* dst = buf_.get() + p;
    std::memcpy(dst, &h, sizeof(h));
    std::memcpy(dst + sizeof(h), payload.data(), payload.size());
    tail_ += size;
  }

  template <typename T, typename EncodeFn>
  absl::StatusOr<IdRange> AppendAll(absl::Span<const T> records,
                                    RecordKind kind, absl::string_view what,
                                    EncodeFn encode)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int k = static_cast<int>(kind);
    KindInfo& ki = kinds_[k];
    if (records.empty()) return IdRange{ki.next_id, ki.next_id - 1};
    // Encode and check everything first: a batch goes in whole or not at all.
    batch_.clear();
    offsets_.clear();
    times_.clear();
    const int64_t now = absl::ToUnixNanos(clock_->Now());
    const uint64_t max_slot = capacity_ / 4;
    for (size_t i = 0; i < records.size(); ++i) {
      const T& r = records[i];
      RETURN_IF_ERROR(ValidateBatchRecordText(r, what, i));
      int64_t ts = now;
      if (r.has_timestamp()) {
        absl::StatusOr<int64_t> nanos = TimestampToNanos(r.timestamp());
        if (!nanos.ok()) {
          return absl::InvalidArgumentError(absl::StrCat(
              what, " ", i, " of the batch: ", nanos.status().message()));
        }
        ts = *nanos;
      }
      const size_t start = batch_.size();
      encode(r, &batch_);
      if (Align8(sizeof(SlotHeader) + batch_.size() - start) > max_slot) {
        return absl::InvalidArgumentError(absl::StrCat(
            what, " ", i, " of the batch takes ", batch_.size() - start,
            " bytes, more than the memory ring allows per record (", max_slot,
            ")"));
      }
      offsets_.push_back(start);
      times_.push_back(ts);
    }
    offsets_.push_back(batch_.size());

    const int64_t dropped_before = overwritten_unsynced_;
    const int64_t evicted_before = overwritten_synced_;
    const int64_t set_aside_before = overwritten_set_aside_;
    const int64_t first = ki.next_id;
    for (size_t i = 0; i < records.size(); ++i) {
      Put(kind, ki.next_id++, times_[i],
          absl::string_view(batch_.data() + offsets_[i],
                            offsets_[i + 1] - offsets_[i]));
      ++ki.unsynced;
    }
    if (overwritten_synced_ != evicted_before ||
        overwritten_unsynced_ != dropped_before ||
        overwritten_set_aside_ != set_aside_before) {
      ++full_events_;
      if (overwritten_unsynced_ != dropped_before ||
          overwritten_set_aside_ != set_aside_before) {
        Warn(absl::StrCat("memory ring full: overwrote ", overwritten_unsynced_,
                          " unsynced, ", overwritten_set_aside_,
                          " set-aside and ", overwritten_synced_,
                          " synced records so far (capacity ", capacity_,
                          " bytes)"));
      }
    }
    return IdRange{first, ki.next_id - 1};
  }

  template <typename T, typename DecodeFn>
  absl::StatusOr<std::vector<StoredRecord<T>>> Read(RecordKind kind,
                                                    const ReadOptions& options,
                                                    DecodeFn decode)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (options.max_records <= 0) {
      return absl::InvalidArgumentError("max_records must be positive");
    }
    const int k = static_cast<int>(kind);
    std::vector<StoredRecord<T>> out;
    out.reserve(static_cast<size_t>(std::min<int64_t>(
        options.max_records,
        kinds_[k].unsynced + (options.include_synced ? kinds_[k].synced : 0))));
    uint64_t pos = options.include_synced ? head_ : std::max(head_, scan_[k]);
    int64_t bytes = 0;
    while (pos < tail_ &&
           out.size() < static_cast<size_t>(options.max_records)) {
      const SlotHeader h = HeaderAt(pos);
      const uint64_t here = pos;
      pos += h.size;
      if (h.kind != k || (h.flags & kDeleted) != 0) continue;
      if (options.until_id > 0 && h.id > options.until_id) break;
      if (h.id <= options.after_id) continue;
      if ((h.flags & kSetAside) != 0) continue;
      if (!options.include_synced && (h.flags & kSynced) != 0) continue;
      absl::string_view payload(
          buf_.get() + Physical(here) + sizeof(SlotHeader),
          h.size - sizeof(SlotHeader) - h.pad);
      out.emplace_back();
      out.back().id = h.id;
      absl::Status s = decode(payload, &out.back().record);
      if (!s.ok()) {
        return absl::InternalError(absl::StrCat("memory ring record ", h.id,
                                                " is damaged: ", s.message()));
      }
      NanosToTimestamp(h.ts, out.back().record.mutable_timestamp());
      bytes += static_cast<int64_t>(h.size);
      if (options.max_bytes > 0 && bytes >= options.max_bytes) break;
    }
    return out;
  }

  void Warn(const std::string& message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const absl::Time now = clock_->MonotonicNow();
    if (warned_ && now - last_warning_ < kWarnInterval) return;
    log_(absl::LogSeverity::kWarning, message);
    warned_ = true;
    last_warning_ = now;
  }

  const uint64_t capacity_;
  Clock* const clock_;
  const StorageLogFn log_;

  absl::Mutex mu_;
  // The ring itself; its bytes are only touched under mu_.
  const std::unique_ptr<char[]> buf_;
  // Logical byte positions: the live slots are [head_, tail_), at physical
  // offsets modulo capacity_. tail_ - head_ <= capacity_.
  uint64_t head_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t tail_ ABSL_GUARDED_BY(mu_) = 0;
  // Per kind: no unsynced record of that kind lies before this position.
  std::array<uint64_t, kRecordKindCount> scan_ ABSL_GUARDED_BY(mu_){};
  std::array<KindInfo, kRecordKindCount> kinds_ ABSL_GUARDED_BY(mu_);
  int64_t overwritten_unsynced_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t overwritten_synced_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t overwritten_set_aside_ ABSL_GUARDED_BY(mu_) = 0;
  // Set-aside batches, oldest first.
  std::vector<MemBatch> batches_ ABSL_GUARDED_BY(mu_);
  int64_t full_events_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, PendingBatch, std::less<>> pending_
      ABSL_GUARDED_BY(mu_);
  bool warned_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time last_warning_ ABSL_GUARDED_BY(mu_);

  // Reused per append: encoded payloads, their offsets and timestamps.
  std::string batch_ ABSL_GUARDED_BY(mu_);
  std::vector<size_t> offsets_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> times_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<Storage>> NewMemoryStorage(
    const MemoryStorageOptions& options) {
  if (options.capacity_bytes < kMinCapacity ||
      options.capacity_bytes > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory ring capacity must be from ", kMinCapacity,
                     " to 4 GiB bytes, got ", options.capacity_bytes));
  }
  Clock* clock = options.clock != nullptr ? options.clock : Clock::Real();
  StorageLogFn log = options.log ? options.log : StderrStorageLog();
  const auto capacity = static_cast<uint64_t>(options.capacity_bytes) & ~7ull;
  return std::unique_ptr<Storage>(
      std::make_unique<MemoryStorage>(capacity, clock, std::move(log)));
}

}  // namespace fleetd::agent
