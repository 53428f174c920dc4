#include "agent/collect/log_tailer.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/collect/collect_util.h"
#include "agent/collect/periodic.h"
#include "common/status/status_macros.h"
#include "common/text/utf8.h"
#include "glog/logging.h"

namespace fleetd::agent {
namespace {

using collect_internal::ReadSmallFile;
using collect_internal::ToProtoTimestamp;
using ::fleetd::SanitizeUtf8;

constexpr absl::string_view kStateHeader = "fleetd-log-tailer-state 1";
constexpr size_t kReadChunk = 64 * 1024;
// How far back from the end a first start looks for the last line's start.
constexpr int64_t kLastLineWindow = 64 * 1024;

absl::Status ErrnoStatus(absl::string_view what, const std::string& path,
                         int err) {
  std::string msg = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  if (err == ENOENT || err == ENOTDIR) return absl::NotFoundError(msg);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
  return absl::UnavailableError(msg);
}

std::string BaseName(absl::string_view path) {
  size_t slash = path.rfind('/');
  return std::string(slash == absl::string_view::npos ? path
                                                      : path.substr(slash + 1));
}

std::string DirName(absl::string_view path) {
  size_t slash = path.rfind('/');
  if (slash == absl::string_view::npos) return ".";
  if (slash == 0) return "/";
  return std::string(path.substr(0, slash));
}

// A regular file in `dir` whose inode is `inode`, or "" when there is none.
std::string FindInode(const std::string& dir, uint64_t inode) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return "";
  std::string found;
  while (struct dirent* e = ::readdir(d)) {
    if (e->d_ino != inode) continue;
    std::string candidate = absl::StrCat(dir, "/", e->d_name);
    struct stat st;
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        static_cast<uint64_t>(st.st_ino) == inode) {
      found = std::move(candidate);
      break;
    }
  }
  ::closedir(d);
  return found;
}

struct SavedPosition {
  uint64_t inode = 0;  // 0: known path, nothing open when saved
  int64_t offset = 0;
};

// Parses the state file. InvalidArgument/DataLoss when it is not one.
absl::StatusOr<std::map<std::string, SavedPosition>> ParseState(
    absl::string_view text) {
  std::map<std::string, SavedPosition> out;
  std::vector<absl::string_view> lines =
      absl::StrSplit(text, '\n', absl::SkipEmpty());
  if (lines.empty() || lines[0] != kStateHeader) {
    return absl::DataLossError("not a log tailer state file");
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    // "<inode> <offset> <path>": the path last, so it may hold spaces.
    std::vector<absl::string_view> f =
        absl::StrSplit(lines[i], absl::MaxSplits(' ', 2));
    SavedPosition pos;
    if (f.size() != 3 || !absl::SimpleAtoi(f[0], &pos.inode) ||
        !absl::SimpleAtoi(f[1], &pos.offset) || pos.offset < 0 ||
        f[2].empty()) {
      return absl::DataLossError(absl::StrCat("malformed state line ", i + 1));
    }
    out[std::string(f[2])] = pos;
  }
  return out;
}

absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view content) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("create", tmp, errno);
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return ErrnoStatus("write", tmp, err);
    }
    done += static_cast<size_t>(n);
  }
  // Without the fsync a crash could leave the renamed file empty.
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    return ErrnoStatus("fsync", tmp, err);
  }
  if (::close(fd) != 0) return ErrnoStatus("close", tmp, errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return ErrnoStatus("rename to", path, errno);
  }
  const std::string dir = DirName(path);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {  // best effort: makes the rename itself durable
    ::fsync(dfd);
    ::close(dfd);
  }
  return absl::OkStatus();
}

// Level of an upper-cased marker word, or "" when it is none.
absl::string_view LevelOfWord(absl::string_view upper) {
  static const auto* const kLevels =
      new std::map<absl::string_view, absl::string_view>{
          {"TRACE", "debug"},     {"DEBUG", "debug"}, {"DBG", "debug"},
          {"INFO", "info"},       {"NOTICE", "info"}, {"WARN", "warn"},
          {"WARNING", "warn"},    {"ERROR", "error"}, {"ERR", "error"},
          {"SEVERE", "error"},    {"FATAL", "fatal"}, {"CRITICAL", "fatal"},
          {"CRIT", "fatal"},      {"PANIC", "fatal"}, {"EMERG", "fatal"},
          {"EMERGENCY", "fatal"}, {"ALERT", "fatal"},
      };
  auto it = kLevels->find(upper);
  return it == kLevels->end() ? absl::string_view() : it->second;
}

bool IsWordChar(char c) { return absl::ascii_isalnum(c) || c == '_'; }

// Whether s[0, i) ends with `level=`, `"level": "`, `lvl=` or `severity=`
// (keys in any case, optional quotes).
bool AfterLevelKey(absl::string_view s, size_t i) {
  size_t k = i;
  if (k > 0 && (s[k - 1] == '"' || s[k - 1] == '\'')) --k;
  while (k > 0 && s[k - 1] == ' ') --k;
  if (k == 0 || (s[k - 1] != '=' && s[k - 1] != ':')) return false;
  --k;
  if (k > 0 && (s[k - 1] == '"' || s[k - 1] == '\'')) --k;
  size_t end = k;
  while (k > 0 && absl::ascii_isalpha(s[k - 1])) --k;
  std::string key = absl::AsciiStrToLower(s.substr(k, end - k));
  return key == "level" || key == "lvl" || key == "severity";
}

}  // namespace

std::string GuessLogLevel(absl::string_view line) {
  absl::string_view s = line.substr(0, 256);
  // glog/absl: "E0102 15:04:05.000000 ..." (severity letter, month, day).
  if (s.size() >= 6 && std::strchr("IWEF", s[0]) != nullptr && s[0] != '\0' &&
      absl::ascii_isdigit(s[1]) && absl::ascii_isdigit(s[2]) &&
      absl::ascii_isdigit(s[3]) && absl::ascii_isdigit(s[4]) && s[5] == ' ') {
    switch (s[0]) {
      case 'W':
        return "warn";
      case 'E':
        return "error";
      case 'F':
        return "fatal";
      default:
        return "info";
    }
  }
  size_t i = 0;
  while (i < s.size()) {
    if (!absl::ascii_isalpha(s[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < s.size() && absl::ascii_isalpha(s[j])) ++j;
    bool whole_word = (i == 0 || !IsWordChar(s[i - 1])) &&
                      (j == s.size() || !IsWordChar(s[j]));
    if (whole_word) {
      absl::string_view word = s.substr(i, j - i);
      std::string upper = absl::AsciiStrToUpper(word);
      absl::string_view level = LevelOfWord(upper);
      if (!level.empty()) {
        bool shouted = upper == word;
        bool colon = j < s.size() && s[j] == ':';
        bool bracketed =
            i > 0 && s[i - 1] == '[' && j < s.size() && s[j] == ']';
        if (shouted || colon || bracketed || AfterLevelKey(s, i)) {
          return std::string(level);
        }
      }
    }
    i = j;
  }
  return "info";
}

struct LogTailer::File {
  std::string path;
  std::string source;  // base name
  int fd = -1;
  // Inode of the open file; with fd < 0, the one remembered from the state
  // file (0: none).
  uint64_t inode = 0;
  dev_t dev = 0;
  // Committed position: the first byte not yet appended to the store.
  int64_t offset = 0;
  // Whether the path is in the state (or was opened in this run): if so, a
  // file appearing there is new and read from 0.
  bool known = false;
  // Bytes [scan_from, scan_to) are an unterminated line without a newline
  // seen so far; scan_head holds its first bytes. Saves re-reading a growing
  // long line on every poll. Valid only while offset == scan_from.
  bool scan_valid = false;
  int64_t scan_from = 0;
  int64_t scan_to = 0;
  std::string scan_head;
  // Stages whose failure was logged and not yet recovered.
  std::set<std::string> failing;
  bool warned_cut = false;

  metrics::Counter* lines = nullptr;
  metrics::Counter* rotations = nullptr;
  metrics::Counter* truncations = nullptr;
  metrics::Counter* cut_lines = nullptr;
};

struct LogTailer::Batch {
  struct Line {
    std::string text;  // at most max_line_bytes + a little; see ReadBatch
    bool cut = false;  // the line was longer than `text`
  };
  std::vector<Line> lines;
  int64_t end_offset = 0;  // just past the last line's newline
  bool at_eof = false;
  // At EOF: the unterminated last line read so far (its first bytes), its
  // length, and the file position after it.
  std::string partial;
  int64_t partial_len = 0;
  int64_t eof_pos = 0;
};

absl::StatusOr<std::unique_ptr<LogTailer>> LogTailer::Create(
    LogTailerOptions options, Storage* storage, Clock* clock,
    metrics::Registry* registry) {
  if (options.paths.empty()) {
    return absl::InvalidArgumentError("log tailer: no files to follow");
  }
  std::set<std::string> seen;
  for (const std::string& path : options.paths) {
    if (path.empty() || path.find('\n') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("log tailer: invalid path \"", path, "\""));
    }
    if (!seen.insert(path).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("log tailer: path \"", path, "\" given twice"));
    }
  }
  if (options.max_line_bytes < 16 || options.max_batch_lines < 1 ||
      options.max_lines_per_poll < options.max_batch_lines ||
      options.poll_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "log tailer: max_line_bytes >= 16, max_batch_lines >= 1, "
        "max_lines_per_poll >= max_batch_lines and poll_interval > 0 "
        "required");
  }
  std::unique_ptr<LogTailer> tailer(
      new LogTailer(std::move(options), storage, clock, registry));
  absl::MutexLock lock(&tailer->mu_);
  tailer->LoadAndOpen().IgnoreError();  // logged and counted
  return tailer;
}

LogTailer::LogTailer(LogTailerOptions options, Storage* storage, Clock* clock,
                     metrics::Registry* registry)
    : options_(std::move(options)), storage_(storage), clock_(clock) {
  if (registry == nullptr) {
    owned_registry_ = std::make_unique<metrics::Registry>();
    registry = owned_registry_.get();
  }
  registry_ = registry;
  auto& lines =
      registry_->CounterFamily("fleetd_log_tailer_lines_total",
                               "Log lines appended to the store", {"file"});
  auto& rotations =
      registry_->CounterFamily("fleetd_log_tailer_rotations_total",
                               "Log file rotations followed", {"file"});
  auto& truncations = registry_->CounterFamily(
      "fleetd_log_tailer_truncations_total",
      "Log files found truncated and read again from the start", {"file"});
  auto& cut = registry_->CounterFamily(
      "fleetd_log_tailer_truncated_lines_total",
      "Log lines cut to the maximum message length", {"file"});
  absl::MutexLock lock(&mu_);
  for (const std::string& path : options_.paths) {
    auto f = std::make_unique<File>();
    f->path = path;
    f->source = BaseName(path);
    f->lines = &lines.WithLabels({path});
    f->rotations = &rotations.WithLabels({path});
    f->truncations = &truncations.WithLabels({path});
    f->cut_lines = &cut.WithLabels({path});
    files_.push_back(std::move(f));
  }
  runner_ = std::make_unique<collect_internal::PeriodicRunner>(
      clock_, options_.poll_interval, [this] { PollOnce().IgnoreError(); });
}

LogTailer::~LogTailer() {
  Stop();
  absl::MutexLock lock(&mu_);
  for (auto& f : files_) CloseFile(*f);
}

void LogTailer::Start() { runner_->Start(); }

void LogTailer::Stop() { runner_->Stop(); }

void LogTailer::Failed(File& f, absl::string_view stage,
                       const absl::Status& s) {
  registry_
      ->CounterFamily("fleetd_log_tailer_errors_total",
                      "Log tailer failures, retried on the next poll",
                      {"file", "stage"})
      .WithLabels({f.path, std::string(stage)})
      .Increment();
  if (f.failing.insert(std::string(stage)).second) {
    LOG(WARNING) << "log tailer: " << f.path << ": " << stage
                 << " failed (retrying every poll): " << s;
  }
}

void LogTailer::CloseFile(File& f) {
  if (f.fd >= 0) ::close(f.fd);
  f.fd = -1;
  f.inode = 0;
  f.offset = 0;
  f.scan_valid = false;
}

absl::Status LogTailer::LoadAndOpen() {
  std::map<std::string, SavedPosition> saved;
  absl::Status load_error;
  if (!options_.state_path.empty()) {
    absl::StatusOr<std::string> text = ReadSmallFile(options_.state_path);
    absl::StatusOr<std::map<std::string, SavedPosition>> parsed =
        text.ok() ? ParseState(*text)
                  : absl::StatusOr<std::map<std::string, SavedPosition>>(
                        text.status());
    if (parsed.ok()) {
      saved = *std::move(parsed);
    } else if (!absl::IsNotFound(parsed.status())) {
      load_error = parsed.status();
      registry_
          ->GetCounter("fleetd_log_tailer_state_errors_total",
                       "Log tailer state file reads and writes that failed")
          .Increment();
      LOG(WARNING) << "log tailer: ignoring state file " << options_.state_path
                   << ": " << parsed.status()
                   << "; files start as on a first start";
    }
  }
  absl::Status first_error = load_error;
  for (auto& fp : files_) {
    File& f = *fp;
    auto it = saved.find(f.path);
    absl::Status s;
    if (it == saved.end()) {
      s = OpenPath(f, /*first_start=*/true);
    } else {
      f.known = true;
      const SavedPosition& pos = it->second;
      struct stat st;
      bool same = pos.inode != 0 && ::stat(f.path.c_str(), &st) == 0 &&
                  static_cast<uint64_t>(st.st_ino) == pos.inode;
      std::string old_path;
      if (pos.inode != 0 && !same) {
        // Rotated while the agent was down: finish the old file first if it
        // is still next to the path.
        old_path = FindInode(DirName(f.path), pos.inode);
      }
      if (same || !old_path.empty()) {
        const std::string& open_path = same ? f.path : old_path;
        int fd = ::open(open_path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        struct stat fst;
        if (fd >= 0 && ::fstat(fd, &fst) == 0 &&
            static_cast<uint64_t>(fst.st_ino) == pos.inode) {
          f.fd = fd;
          f.inode = pos.inode;
          f.dev = fst.st_dev;
          f.offset = pos.offset;
          if (fst.st_size < pos.offset) {
            LOG(WARNING) << "log tailer: " << open_path << " shrank to "
                         << fst.st_size << " bytes while the agent was down "
                         << "(position " << pos.offset << "); reading from 0";
            f.truncations->Increment();
            f.offset = 0;
          }
          if (!same) {
            LOG(INFO) << "log tailer: " << f.path << " was rotated while the "
                      << "agent was down; finishing " << old_path << " first";
          }
        } else {
          if (fd >= 0) ::close(fd);
          s = OpenPath(f, /*first_start=*/false);
        }
      } else {
        // Gone, or replaced and the old file is gone too: what is at the path
        // now is new.
        s = OpenPath(f, /*first_start=*/false);
      }
    }
    if (!s.ok()) {
      Failed(f, "read", s);
      if (first_error.ok()) first_error = s;
    }
    f.known = true;
  }
  state_dirty_ = true;
  absl::Status w = WriteState();
  return first_error.ok() ? w : first_error;
}

absl::Status LogTailer::OpenPath(File& f, bool first_start) {
  int fd = ::open(f.path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return absl::OkStatus();  // not there (yet)
    return ErrnoStatus("open", f.path, err);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return ErrnoStatus("stat", f.path, err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat(f.path, " is not a regular file"));
  }
  int64_t offset = 0;
  if (first_start && !options_.read_existing_from_start && st.st_size > 0) {
    // Start after the last complete line, so that a line being written now
    // is not cut in half.
    int64_t from = std::max<int64_t>(0, st.st_size - kLastLineWindow);
    std::string tail(static_cast<size_t>(st.st_size - from), '\0');
    ssize_t n = ::pread(fd, tail.data(), tail.size(), from);
    offset = st.st_size;
    if (n > 0) {
      size_t nl =
          absl::string_view(tail.data(), static_cast<size_t>(n)).rfind('\n');
      if (nl != absl::string_view::npos) {
        offset = from + static_cast<int64_t>(nl) + 1;
      } else if (from == 0) {
        offset = 0;
      }
    }
  }
  f.fd = fd;
  f.inode = static_cast<uint64_t>(st.st_ino);
  f.dev = st.st_dev;
  f.offset = offset;
  f.scan_valid = false;
  f.known = true;
  state_dirty_ = true;
  return absl::OkStatus();
}

absl::StatusOr<LogTailer::Batch> LogTailer::ReadBatch(File& f,
                                                      size_t max_lines) {
  // Keeps a few bytes beyond the limit so that a trailing '\r' and a cut
  // UTF-8 character can still be told apart from a longer line.
  const size_t keep = options_.max_line_bytes + 8;
  Batch b;
  b.end_offset = f.offset;
  int64_t pos = f.offset;
  std::string carry;
  int64_t carry_len = 0;
  if (f.scan_valid && f.scan_from == f.offset) {
    pos = f.scan_to;
    carry = f.scan_head;
    carry_len = f.scan_to - f.scan_from;
  }
  std::string buf(kReadChunk, '\0');
  while (b.lines.size() < max_lines) {
    ssize_t n = ::pread(f.fd, buf.data(), buf.size(), pos);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("read", f.path, errno);
    }
    if (n == 0) {
      b.at_eof = true;
      break;
    }
    size_t i = 0;
    const size_t len = static_cast<size_t>(n);
    while (i < len && b.lines.size() < max_lines) {
      const void* nl = std::memchr(buf.data() + i, '\n', len - i);
      size_t end =
          nl == nullptr
              ? len
              : static_cast<size_t>(static_cast<const char*>(nl) - buf.data());
      size_t room = keep > carry.size() ? keep - carry.size() : 0;
      carry.append(buf.data() + i, std::min(end - i, room));
      carry_len += static_cast<int64_t>(end - i);
      if (nl == nullptr) {
        i = len;
        break;
      }
      Batch::Line& line = b.lines.emplace_back();
      line.cut = carry_len > static_cast<int64_t>(carry.size());
      line.text = std::move(carry);
      carry.clear();
      carry_len = 0;
      i = end + 1;
      b.end_offset = pos + static_cast<int64_t>(i);
    }
    pos += static_cast<int64_t>(i);
    if (i < len) break;  // batch full in the middle of the chunk
  }
  if (b.at_eof) {
    b.eof_pos = pos;
    b.partial_len = carry_len;
    b.partial = carry;
  }
  // Remember the unterminated line for the next read, valid once end_offset
  // is committed.
  f.scan_valid = b.at_eof && carry_len > 0;
  f.scan_from = b.end_offset;
  f.scan_to = pos;
  f.scan_head = std::move(carry);
  return b;
}

absl::Status LogTailer::Commit(File& f, const Batch& batch) {
  const google::protobuf::Timestamp now = ToProtoTimestamp(clock_->Now());
  std::vector<v1::LogEntry> entries;
  entries.reserve(batch.lines.size());
  int64_t cut_lines = 0;
  for (const Batch::Line& line : batch.lines) {
    absl::string_view text = line.text;
    if (!line.cut && absl::EndsWith(text, "\r")) text.remove_suffix(1);
    bool cut = false;
    std::string message = SanitizeUtf8(text, options_.max_line_bytes, &cut);
    cut = cut || line.cut;
    v1::LogEntry& e = entries.emplace_back();
    e.set_level(GuessLogLevel(message));
    e.set_message(std::move(message));
    e.set_source(f.source);
    *e.mutable_timestamp() = now;
    (*e.mutable_fields())["path"] = f.path;
    if (cut) {
      (*e.mutable_fields())["truncated"] = "true";
      ++cut_lines;
    }
  }
  absl::StatusOr<IdRange> ids = storage_->AppendLogs(entries);
  if (!ids.ok()) {
    Failed(f, "append", ids.status());
    f.scan_valid = false;
    return ids.status();
  }
  if (f.failing.erase("append") > 0) {
    LOG(INFO) << "log tailer: " << f.path << ": the store accepts lines again";
  }
  f.offset = batch.end_offset;
  f.lines->Increment(static_cast<double>(entries.size()));
  if (cut_lines > 0) {
    f.cut_lines->Increment(static_cast<double>(cut_lines));
    if (!f.warned_cut) {
      LOG(WARNING) << "log tailer: " << f.path << ": lines longer than "
                   << options_.max_line_bytes << " bytes are cut (marked "
                   << "truncated=true; counted, warned once)";
      f.warned_cut = true;
    }
  }
  state_dirty_ = true;
  return WriteState();
}

absl::Status LogTailer::WriteState() {
  if (!state_dirty_) return absl::OkStatus();
  if (options_.state_path.empty()) {
    state_dirty_ = false;
    return absl::OkStatus();
  }
  std::string content = absl::StrCat(kStateHeader, "\n");
  for (const auto& f : files_) {
    if (!f->known) continue;
    absl::StrAppend(&content, f->inode, " ", f->inode == 0 ? 0 : f->offset, " ",
                    f->path, "\n");
  }
  absl::Status s = WriteFileAtomically(options_.state_path, content);
  if (!s.ok()) {
    registry_
        ->GetCounter("fleetd_log_tailer_state_errors_total",
                     "Log tailer state file reads and writes that failed")
        .Increment();
    if (!state_failing_) {
      LOG(WARNING) << "log tailer: cannot save positions (a restart may "
                   << "read lines again): " << s;
    }
    state_failing_ = true;
    return s;
  }
  if (state_failing_) LOG(INFO) << "log tailer: positions saved again";
  state_failing_ = false;
  state_dirty_ = false;
  return absl::OkStatus();
}

absl::Status LogTailer::PollOnce() {
  absl::MutexLock lock(&mu_);
  absl::Status first_error;
  for (auto& f : files_) {
    absl::Status s = PollFile(*f);
    if (!s.ok() && first_error.ok()) first_error = s;
  }
  absl::Status w = WriteState();  // positions moved without an append
  return first_error.ok() ? w : first_error;
}

absl::Status LogTailer::PollFile(File& f) {
  if (f.fd < 0) {
    // Missing until now, or closed after a rotation: whatever is there now
    // was written since, so it is read from 0.
    absl::Status s = OpenPath(f, /*first_start=*/false);
    if (!s.ok()) {
      Failed(f, "read", s);
      return s;
    }
    if (f.fd < 0) return absl::OkStatus();
  }
  size_t done = 0;
  while (true) {
    struct stat st;
    if (::fstat(f.fd, &st) != 0) {
      absl::Status s = ErrnoStatus("stat", f.path, errno);
      Failed(f, "read", s);
      return s;
    }
    if (st.st_size < f.offset) {
      LOG(WARNING) << "log tailer: " << f.path << " was truncated to "
                   << st.st_size << " bytes (position " << f.offset
                   << "); reading it again from the start";
      f.truncations->Increment();
      f.offset = 0;
      f.scan_valid = false;
      state_dirty_ = true;
    }
    if (f.scan_valid && st.st_size < f.scan_to) f.scan_valid = false;
    const size_t want =
        std::min(options_.max_batch_lines, options_.max_lines_per_poll - done);
    if (want == 0) break;  // enough for this poll; the rest comes next time
    absl::StatusOr<Batch> batch = ReadBatch(f, want);
    if (!batch.ok()) {
      Failed(f, "read", batch.status());
      return batch.status();
    }
    if (f.failing.erase("read") > 0) {
      LOG(INFO) << "log tailer: " << f.path << " readable again";
    }
    if (!batch->lines.empty()) {
      RETURN_IF_ERROR(Commit(f, *batch));
      done += batch->lines.size();
      if (!batch->at_eof) continue;
    }
    // At the end of the open file: is it still the one at the path?
    struct stat pst;
    bool path_exists = ::stat(f.path.c_str(), &pst) == 0;
    bool replaced =
        path_exists &&
        (static_cast<uint64_t>(pst.st_ino) != f.inode || pst.st_dev != f.dev);
    bool deleted = st.st_nlink == 0;
    if (!replaced && !deleted) break;
    if (batch->partial_len > 0) {
      // The old file will not grow any more: its unterminated last line is
      // complete.
      Batch last;
      last.lines.push_back(
          {batch->partial,
           batch->partial_len > static_cast<int64_t>(batch->partial.size())});
      last.end_offset = batch->eof_pos;
      RETURN_IF_ERROR(Commit(f, last));
    }
    if (replaced) {
      LOG(INFO) << "log tailer: " << f.path << " was rotated; following the "
                << "new file from its start";
      f.rotations->Increment();
    }
    CloseFile(f);
    state_dirty_ = true;
    if (!path_exists) break;
    absl::Status s = OpenPath(f, /*first_start=*/false);
    if (!s.ok()) {
      Failed(f, "read", s);
      return s;
    }
    if (f.fd < 0) break;
  }
  return absl::OkStatus();
}

}  // namespace fleetd::agent
