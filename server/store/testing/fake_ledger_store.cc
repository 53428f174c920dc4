#include "server/store/testing/fake_ledger_store.h"

#include <algorithm>

namespace fleetd::server::testing {
namespace {

absl::Status Down() { return absl::UnavailableError("ledger store is down"); }

}  // namespace

bool FakeLedgerStore::IsApplied(const LedgerEntry& e) const {
  auto it = streams_.find({e.device_id, e.stream});
  if (it == streams_.end()) return false;
  return it->second.applied.count(e.sequence_number) > 0;
}

absl::StatusOr<std::vector<bool>> FakeLedgerStore::AreApplied(
    absl::Span<const LedgerEntry> entries) {
  absl::MutexLock lock(&mu_);
  if (down_) return Down();
  ++calls_.are_applied;
  calls_.entries_checked += static_cast<int64_t>(entries.size());
  std::vector<bool> out;
  out.reserve(entries.size());
  for (const LedgerEntry& e : entries) out.push_back(IsApplied(e));
  return out;
}

absl::Status FakeLedgerStore::RecordApplied(
    absl::Span<const LedgerEntry> entries) {
  return RecordAppliedCountingPresent(entries).status();
}

absl::StatusOr<int64_t> FakeLedgerStore::RecordAppliedCountingPresent(
    absl::Span<const LedgerEntry> entries) {
  absl::MutexLock lock(&mu_);
  if (down_) return Down();
  ++calls_.record;
  calls_.entries_recorded += static_cast<int64_t>(entries.size());
  int64_t present = 0;
  for (const LedgerEntry& e : entries) {
    if (IsApplied(e)) {
      ++present;
      continue;
    }
    streams_[{e.device_id, e.stream}].applied.insert(e.sequence_number);
  }
  if (in_doubt_) {
    return absl::UnavailableError("connection lost during COMMIT");
  }
  return present;
}

absl::StatusOr<std::vector<LedgerHistory>> FakeLedgerStore::LoadHistory(
    absl::Span<const LedgerKey> keys, int limit) {
  absl::MutexLock lock(&mu_);
  if (down_) return Down();
  ++calls_.load_history;
  calls_.keys_loaded += static_cast<int64_t>(keys.size());
  std::vector<LedgerHistory> out(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    auto it = streams_.find({keys[i].device_id, keys[i].stream});
    if (it == streams_.end()) continue;
    LedgerHistory& h = out[i];
    h.floor = it->second.floor;
    h.older = h.floor;
    for (auto seq = it->second.applied.rbegin();
         seq != it->second.applied.rend(); ++seq) {
      if (h.recent.size() == static_cast<size_t>(limit)) {
        h.older = std::max(h.floor, *seq);
        break;
      }
      h.recent.push_back(*seq);
    }
    std::reverse(h.recent.begin(), h.recent.end());
  }
  return out;
}

absl::StatusOr<std::vector<LedgerKey>> FakeLedgerStore::RecentKeys(
    absl::Duration within, size_t limit) {
  absl::MutexLock lock(&mu_);
  if (down_) return Down();
  std::vector<LedgerKey> out;
  for (const auto& [key, stream] : streams_) {
    if (out.size() == limit) break;
    if (!stream.applied.empty()) out.push_back({key.first, key.second});
  }
  return out;
}

void FakeLedgerStore::Compact(const std::string& device_id,
                              const std::string& stream, int64_t floor) {
  absl::MutexLock lock(&mu_);
  Stream& s = streams_[{device_id, stream}];
  s.floor = std::max(s.floor, floor);
  s.applied.erase(s.applied.begin(), s.applied.upper_bound(s.floor));
}

void FakeLedgerStore::SetRecordInDoubt(bool in_doubt) {
  absl::MutexLock lock(&mu_);
  in_doubt_ = in_doubt;
}

void FakeLedgerStore::SetDown(bool down) {
  absl::MutexLock lock(&mu_);
  down_ = down;
}

FakeLedgerStore::Calls FakeLedgerStore::calls() const {
  absl::MutexLock lock(&mu_);
  return calls_;
}

LedgerEntry TestEntry(const std::string& device, int64_t seq,
                      const std::string& stream) {
  return {device, stream, seq, 1};
}

absl::StatusOr<bool> AppliedIn(Ledger& ledger, const std::string& device,
                               int64_t seq) {
  LedgerEntry e = TestEntry(device, seq);
  absl::StatusOr<std::vector<bool>> r = ledger.AreApplied({&e, 1});
  if (!r.ok()) return r.status();
  return (*r)[0];
}

}  // namespace fleetd::server::testing
