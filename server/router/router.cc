#include "server/router/router.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status/error_class.h"
#include "common/status/retryable.h"

namespace fleetd::server {

namespace {

// The most telling of the destinations' outcomes (Router::Deliver).
class Verdict {
 public:
  void Add(const absl::Status& s) {
    if (s.ok()) return;
    if (IsBatchRejected(s)) {
      if (!rejected_.has_value()) rejected_ = s;
    } else if (IsRetryable(s.code())) {
      if (!retryable_.has_value()) retryable_ = s;
    } else if (!fatal_.has_value()) {
      fatal_ = s;
    }
  }
  absl::Status Get() const {
    // A backend's verdict on the batch itself stands whatever the others said
    // (those that accepted it dedupe it if it is ever sent again).
    if (rejected_.has_value()) return *rejected_;
    if (fatal_.has_value()) return *fatal_;
    if (retryable_.has_value()) return *retryable_;
    return absl::OkStatus();
  }

 private:
  std::optional<absl::Status> rejected_;
  std::optional<absl::Status> fatal_;
  std::optional<absl::Status> retryable_;
};

absl::Status NoRoute(DataKind kind) {
  return absl::UnimplementedError(
      absl::StrCat("no backend is configured for ", DataKindName(kind)));
}

}  // namespace

absl::Status Router::Deliver(std::shared_ptr<const DecodedBatch> batch,
                             absl::Time deadline) {
  auto it = routes_.find(batch->kind);
  if (it == routes_.end() || it->second.empty()) return NoRoute(batch->kind);
  // Enqueue everywhere first so the backends work in parallel, then collect.
  std::vector<
      std::pair<GroupCommitter*, absl::StatusOr<GroupCommitter::Ticket>>>
      tickets;
  tickets.reserve(it->second.size());
  for (GroupCommitter* c : it->second)
    tickets.emplace_back(c, c->Enqueue(batch));
  Verdict verdict;
  for (auto& [committer, ticket] : tickets) {
    verdict.Add(ticket.ok() ? committer->Wait(*ticket, deadline)
                            : ticket.status());
  }
  return verdict.Get();
}

void Router::DeliverAsync(std::shared_ptr<const DecodedBatch> batch,
                          absl::AnyInvocable<void(absl::Status) &&> done) {
  auto it = routes_.find(batch->kind);
  if (it == routes_.end() || it->second.empty()) {
    std::move(done)(NoRoute(batch->kind));
    return;
  }
  // Every destination reports once (its flush ended, or Enqueue refused the
  // batch at once); the last report answers.
  struct Gather {
    absl::Mutex mu;
    size_t left ABSL_GUARDED_BY(mu);
    Verdict verdict ABSL_GUARDED_BY(mu);
    absl::AnyInvocable<void(absl::Status) &&> done;

    void Arrive(const absl::Status& s) {
      absl::Status answer;
      {
        absl::MutexLock lock(&mu);
        verdict.Add(s);
        if (--left > 0) return;
        answer = verdict.Get();
      }
      std::move(done)(std::move(answer));
    }
  };
  auto gather = std::make_shared<Gather>();
  {
    absl::MutexLock lock(&gather->mu);
    gather->left = it->second.size();
  }
  gather->done = std::move(done);
  for (GroupCommitter* c : it->second) {
    absl::Status refused =
        c->Enqueue(batch, [gather](absl::Status s) { gather->Arrive(s); });
    if (!refused.ok()) gather->Arrive(refused);
  }
}

bool Router::HasRoute(DataKind kind) const {
  auto it = routes_.find(kind);
  return it != routes_.end() && !it->second.empty();
}

std::vector<GroupCommitter*> Router::AllCommitters() const {
  std::vector<GroupCommitter*> out;
  for (const auto& [kind, committers] : routes_) {
    for (GroupCommitter* c : committers) {
      if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(c);
    }
  }
  return out;
}

}  // namespace fleetd::server
