#include "server/router/router.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/status/error_class.h"
#include "common/status/retryable.h"

namespace fleetd::server {

absl::Status Router::Deliver(std::shared_ptr<const DecodedBatch> batch,
                             absl::Time deadline) {
  auto it = routes_.find(batch->kind);
  if (it == routes_.end() || it->second.empty()) {
    return absl::UnimplementedError(absl::StrCat(
        "no backend is configured for ", DataKindName(batch->kind)));
  }
  // Enqueue everywhere first so the backends work in parallel, then collect.
  std::vector<
      std::pair<GroupCommitter*, absl::StatusOr<GroupCommitter::Ticket>>>
      tickets;
  tickets.reserve(it->second.size());
  for (GroupCommitter* c : it->second)
    tickets.emplace_back(c, c->Enqueue(batch));
  std::optional<absl::Status> rejected;
  std::optional<absl::Status> fatal;
  std::optional<absl::Status> retryable;
  for (auto& [committer, ticket] : tickets) {
    absl::Status s =
        ticket.ok() ? committer->Wait(*ticket, deadline) : ticket.status();
    if (s.ok()) continue;
    if (IsBatchRejected(s)) {
      if (!rejected.has_value()) rejected = s;
    } else if (IsRetryable(s.code())) {
      if (!retryable.has_value()) retryable = s;
    } else if (!fatal.has_value()) {
      fatal = s;
    }
  }
  // A backend's verdict on the batch itself stands whatever the others said
  // (those that accepted it dedupe it if it is ever sent again).
  if (rejected.has_value()) return *rejected;
  if (fatal.has_value()) return *fatal;
  if (retryable.has_value()) return *retryable;
  return absl::OkStatus();
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
