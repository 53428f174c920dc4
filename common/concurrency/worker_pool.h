// A fixed set of worker threads with a bounded FIFO queue, for work that
// blocks (waiting for a backend write, a group commit, a lock held across I/O)
// and therefore must not run on an event loop's threads, such as gRPC's
// callback reactions.
//
// The threads are all created by Start and all joined by Shutdown: the pool
// never grows or shrinks, so a burst of work costs no thread creation and the
// process's thread count does not move with load. Tasks start in submission
// order (FIFO) as workers become free; with more than one worker they run
// concurrently and may end in any order.
//
// Idle workers are woken one at a time, the last to go idle first: a
// submission wakes one unless a woken worker is already on its way, and a
// worker that takes a task while more wait wakes the next. So a stream of
// short tasks runs on a few hot threads instead of waking every idle one (a
// pool of 128 waking a fresh thread per task cost 13 % more CPU per sample in
// the server's burst than one of 16), and parallelism still grows to every
// worker while tasks queue.
//
// Overload is explicit: at most `max_queued` tasks wait for a worker, and
// Submit refuses more with RESOURCE_EXHAUSTED instead of queueing without
// bound (counted). Work that must not be refused because it ends something
// already admitted (closing a stream whose session is open) can pass the bound
// with Admission::kAlways; its amount is bounded by what was admitted before.
//
// Shutdown is orderly: nothing new is admitted, and every task that was
// admitted is either run or told it was rejected (its Task is called with a
// non-OK status), never silently dropped, so whoever waits on it can answer.
#ifndef FLEETD_COMMON_CONCURRENCY_WORKER_POOL_H_
#define FLEETD_COMMON_CONCURRENCY_WORKER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/metrics/metrics.h"

namespace fleetd {

class WorkerPool {
 public:
  // Called exactly once: on a worker thread with OkStatus() to do the work,
  // or, if Shutdown(kRejectQueued) found it still queued, with CANCELLED on
  // the thread calling Shutdown (it should then only release what it holds and
  // answer its caller). A task must not throw.
  using Task = absl::AnyInvocable<void(absl::Status)>;

  enum class Admission {
    // Refused with RESOURCE_EXHAUSTED when `max_queued` tasks are waiting.
    kBounded,
    // Admitted past the bound; refused only after Shutdown.
    kAlways,
  };

  enum class ShutdownMode {
    // Workers run every queued task, then exit.
    kRunQueued,
    // Queued tasks are called with CANCELLED instead of running; tasks already
    // running finish.
    kRejectQueued,
  };

  struct Options {
    // Names the threads ("<name>-<i>", cut to 15 characters) and labels the
    // metrics.
    std::string name = "worker";
    // Worker threads, all created by Start. Must be at least 1.
    int32_t threads = 4;
    // Most tasks waiting for a worker: a kBounded submission is refused when
    // `threads + max_queued` admitted tasks have not finished yet. 0: refuse
    // whenever every worker is taken.
    int64_t max_queued = 1024;
    // Where the gauges fleetd_worker_pool_{threads,busy,queued}{pool} and the
    // counter fleetd_worker_pool_refused_total{pool,reason} go; may be null.
    // Not owned; must outlive the pool.
    metrics::Registry* metrics = nullptr;
  };

  // Creates the threads and returns once all of them run. Errors:
  // InvalidArgument for threads < 1 or max_queued < 0; ResourceExhausted when
  // the system refuses a thread (the threads already created are stopped).
  static absl::StatusOr<std::unique_ptr<WorkerPool>> Start(Options options);

  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;
  // Shutdown(kRunQueued) if not shut down yet.
  ~WorkerPool();

  // Queues `task` for a worker. On OK the task will be called exactly once
  // (see Task). On error it is destroyed without being called and the caller
  // answers for it: ResourceExhausted when the queue is at its bound (kBounded
  // only), Unavailable after Shutdown began. Safe for concurrent use, also
  // from inside a task.
  absl::Status Submit(Task task, Admission admission = Admission::kBounded);

  // Stops admitting, disposes of the queue as `mode` says, waits for running
  // tasks and joins every thread. Idempotent (a later call returns once the
  // first has finished). REQUIRES: not called from one of this pool's tasks.
  void Shutdown(ShutdownMode mode = ShutdownMode::kRunQueued);

  // Snapshots, for tests and gauges. Safe for concurrent use.
  int32_t threads() const { return static_cast<int32_t>(threads_.size()); }
  int64_t queued() const;
  int32_t busy() const;

 private:
  struct Metrics {
    metrics::Gauge* threads = nullptr;
    metrics::Gauge* busy = nullptr;
    metrics::Gauge* queued = nullptr;
    metrics::Counter* refused_full = nullptr;
    metrics::Counter* refused_shut_down = nullptr;
  };

  explicit WorkerPool(Options options);
  void Run(int index);
  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Wakes the worker that went idle last, if any.
  void WakeOneLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // A worker waiting for a task. Its fields are guarded by mu_.
  struct Idle {
    absl::CondVar cv;
    bool woken = false;  // set by WakeOneLocked
  };

  const Options options_;
  Metrics metrics_;
  std::vector<std::thread> threads_;  // set by Start, joined by Shutdown

  mutable absl::Mutex mu_;
  std::deque<Task> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<Idle*> idle_ ABSL_GUARDED_BY(mu_);  // last idle at the back
  // A worker was woken and has not yet looked at the queue.
  bool waking_ ABSL_GUARDED_BY(mu_) = false;
  int32_t busy_ ABSL_GUARDED_BY(mu_) = 0;
  int32_t started_ ABSL_GUARDED_BY(mu_) = 0;  // threads that are running
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  absl::Mutex join_mu_;  // serializes Shutdown's joining
  bool joined_ ABSL_GUARDED_BY(join_mu_) = false;
};

}  // namespace fleetd

#endif  // FLEETD_COMMON_CONCURRENCY_WORKER_POOL_H_
