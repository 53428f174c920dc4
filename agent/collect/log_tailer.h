// Follows log files and appends their lines to the store as LogEntry records.
//
// Poll-based (no inotify): every `poll_interval` on the injected clock, each
// file is read from its position to the end, in batches. A line becomes a
// LogEntry with
//   level   guessed from markers (GuessLogLevel),
//   message the line without its newline (and a trailing '\r'), made valid
//           UTF-8 and cut to `max_line_bytes` (field truncated="true" then),
//   source  the file's base name, field path = the configured path,
//   timestamp the clock's Now() when the line was read.
// An unterminated last line is not emitted until its newline arrives (except
// when its file was rotated away: see below).
//
// Rotation: when the path names a different inode than the open file (rename
// and create, as logrotate does), the old file's remainder is read to its end
// first (its unterminated last line, if any, emitted as a final line), then
// the new file is read from offset 0. While the path is missing the old file
// keeps being read; an old file that was deleted (no links left) is closed
// once drained. Truncation (size below the position, e.g. copytruncate) starts
// the file over at 0. Limitations: a copytruncate that refills the file beyond
// the old position between two polls cannot be seen; nor can a file replaced
// by one that got the same inode number (possible once the old one is deleted)
// and is at least as long as the position. Lines the writer adds to a rotated
// file after it was drained are not read.
//
// Positions survive restarts: (inode, offset) per path is kept in a small
// state file, replaced atomically (write temp, fsync, rename) after each
// successful append of a batch, so the state never claims lines the store
// does not have. A crash between an append and the state write re-reads that
// batch (at most `max_batch_lines` lines) on restart: collection is
// at-least-once, with a window of one batch. On restart, a path whose inode
// changed while the agent was down is handled like a rotation: the old inode
// is looked for in the same directory (e.g. app.log.1) and its remainder read
// first.
//
// Where a file starts: a path found at Create() with no saved position (the
// first start, or a newly configured file) starts at its last line's end
// unless `read_existing_from_start`, so a huge existing file is not ingested;
// files that appear later, new files after rotation and files replaced while
// the agent was down start at 0.
//
// Failures (unreadable file, store refusing a batch, state not writable) are
// logged when they start, counted, and retried on the next poll; the store
// refusing a batch leaves the position where it was, so nothing is skipped.
#ifndef FLEETD_AGENT_COLLECT_LOG_TAILER_H_
#define FLEETD_AGENT_COLLECT_LOG_TAILER_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/storage/storage.h"
#include "common/clock/clock.h"
#include "common/metrics/metrics.h"

namespace fleetd::agent {

namespace collect_internal {
class PeriodicRunner;
}  // namespace collect_internal

// The state file's usual name in the agent's data directory.
inline constexpr char kLogTailerStateFile[] = "log_tailer.state";

struct LogTailerOptions {
  // Files to follow (regular files; no glob patterns). Need not exist yet.
  std::vector<std::string> paths;
  // The state file, e.g. <data dir>/log_tailer.state (kLogTailerStateFile).
  // Empty: positions are not kept across restarts (every start is a first
  // start).
  std::string state_path;
  absl::Duration poll_interval = absl::Seconds(1);
  // First start: read files that already exist from offset 0 instead of from
  // their end.
  bool read_existing_from_start = false;
  // Longest message kept; longer lines are cut (>= 16).
  size_t max_line_bytes = 16 * 1024;
  // Lines per store append, and so the most a crash can re-read per file
  // (>= 1).
  size_t max_batch_lines = 500;
  // Lines read from one file per poll, so a busy file cannot starve the
  // others (>= max_batch_lines).
  size_t max_lines_per_poll = 20000;
};

// Counters:
//   fleetd_log_tailer_lines_total{file}              lines appended
//   fleetd_log_tailer_errors_total{file,stage}       stage = read, append,
//                                                    state
//   fleetd_log_tailer_rotations_total{file}
//   fleetd_log_tailer_truncations_total{file}
//   fleetd_log_tailer_truncated_lines_total{file}    lines cut to the limit
//                                                    (warned once per file)
//   fleetd_log_tailer_state_errors_total             state file unreadable
//                                                    or not writable
//
// Thread-safety: PollOnce/Start/Stop may be called from any thread; polls
// never overlap.
class LogTailer {
 public:
  // Loads the state file (a missing one is a first start; an unreadable or
  // corrupt one is logged, counted as a state error and ignored) and opens the
  // files that exist. `storage` and `clock` must outlive the tailer; `registry`
  // may be null.
  // Errors: InvalidArgument for bad options (no paths, a duplicate or empty
  // path, a newline in a path, limits out of range).
  static absl::StatusOr<std::unique_ptr<LogTailer>> Create(
      LogTailerOptions options, Storage* storage, Clock* clock,
      metrics::Registry* registry);
  ~LogTailer();  // Stop()s and closes the files.
  LogTailer(const LogTailer&) = delete;
  LogTailer& operator=(const LogTailer&) = delete;

  // Reads every file once as described above. Returns OK, or the first error
  // met (the other files are still polled).
  absl::Status PollOnce();

  // Polls right away, then every poll_interval, in a background thread.
  void Start();
  // Waits for a poll in progress. Idempotent.
  void Stop();

 private:
  struct File;
  struct Batch;

  LogTailer(LogTailerOptions options, Storage* storage, Clock* clock,
            metrics::Registry* registry);
  absl::Status LoadAndOpen() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PollFile(File& f) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status OpenPath(File& f, bool first_start)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Batch> ReadBatch(File& f, size_t max_lines)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Commit(File& f, const Batch& batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WriteState() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CloseFile(File& f) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Failed(File& f, absl::string_view stage, const absl::Status& s)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const LogTailerOptions options_;
  Storage* const storage_;
  Clock* const clock_;
  std::unique_ptr<metrics::Registry> owned_registry_;
  metrics::Registry* registry_;

  absl::Mutex mu_;
  std::vector<std::unique_ptr<File>> files_ ABSL_GUARDED_BY(mu_);
  bool state_dirty_ ABSL_GUARDED_BY(mu_) = false;
  bool state_failing_ ABSL_GUARDED_BY(mu_) = false;

  std::unique_ptr<collect_internal::PeriodicRunner> runner_;
};

// The level a log line most likely has: "debug", "info", "warn", "error" or
// "fatal". Looks at the first 256 bytes for, in order of appearance, a glog
// prefix ("E0102 ..."), an upper-case word (ERROR, ERR, WARN, WARNING, INFO,
// NOTICE, DEBUG, TRACE, FATAL, CRITICAL, CRIT, PANIC, EMERG, ALERT, SEVERE),
// or such a word in any case when followed by ':' ("error:"), in brackets
// ("[warn]") or after "level=" / "lvl="; the first one found wins. "info"
// when there is none.
std::string GuessLogLevel(absl::string_view line);

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_COLLECT_LOG_TAILER_H_
