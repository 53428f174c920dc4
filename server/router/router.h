// Routes each decoded batch to every backend configured for its kind of data.
#ifndef FLEETD_SERVER_ROUTER_ROUTER_H_
#define FLEETD_SERVER_ROUTER_ROUTER_H_

#include <map>
#include <memory>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "server/model/batch.h"
#include "server/router/group_commit.h"

namespace fleetd::server {

// Immutable after construction; safe for concurrent use.
class Router {
 public:
  // Destinations per kind of data; the committers must outlive the router. A
  // kind may go to several backends (e.g. metrics to VictoriaMetrics and, for
  // analytics, ClickHouse).
  explicit Router(std::map<DataKind, std::vector<GroupCommitter*>> routes)
      : routes_(std::move(routes)) {}

  // Hands the batch to every destination of its kind at once and waits for all
  // of them. OK only if every destination accepted it. Otherwise returns the
  // most telling error: a destination's rejection of the batch (marked with
  // MarkBatchRejected, kept marked) if any, else another non-retryable error
  // (unmarked), else a retryable one (carrying its retry hint). UNIMPLEMENTED,
  // unmarked, when no backend is configured for the kind: a fault of the
  // server's setup, so devices keep the batch and retry.
  absl::Status Deliver(std::shared_ptr<const DecodedBatch> batch,
                       absl::Time deadline);

  // Deliver without waiting: `done` receives the same verdict once every
  // destination's flush carrying the batch ended (or it was refused at once),
  // exactly once, possibly before this returns, else on a committer's flusher
  // thread (GroupCommitter::Enqueue with a callback: `done` must be quick and
  // must not block). No deadline of its own.
  void DeliverAsync(std::shared_ptr<const DecodedBatch> batch,
                    absl::AnyInvocable<void(absl::Status) &&> done);

  bool HasRoute(DataKind kind) const;
  // Every committer, once each, for health checks and metrics.
  std::vector<GroupCommitter*> AllCommitters() const;

 private:
  const std::map<DataKind, std::vector<GroupCommitter*>> routes_;
};

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_ROUTER_ROUTER_H_
