// Log-line splitting in the agent's log tailer (agent/collect/log_tailer.h).
// The splitter is internal to LogTailer (ReadBatch reads a file descriptor), so
// this target drives the public interface: it writes the input to a real file,
// appends more of it or rotates the file between polls, and checks every line
// that lands in a memory store. GuessLogLevel is fed the same bytes.
//
// Input: four parameter bytes, then the file content:
//   [0] max_line_bytes = 16 + value,
//   [1] bit 0: put a filler line first so the content straddles the tailer's
//       64 KiB read chunk (offset by (value >> 1) % 128 bytes); bit 1: rotate
//       (rename and recreate) the file between the two writes,
//   [2] where the content is split between the first and second write
//       (value / 255 of it),
//   [3] max_batch_lines = 1 + value % 16.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "agent/collect/log_tailer.h"
#include "agent/storage/memory_storage.h"
#include "agent/storage/storage.h"
#include "common/clock/clock.h"
#include "fuzz/fuzz_input.h"
#include "glog/logging.h"

namespace {

using ::fleetd::fuzz::FuzzInput;
namespace agent = ::fleetd::agent;

// log_tailer.cc reads files in chunks of this size.
constexpr size_t kReadChunk = 64 * 1024;

std::string* dir = nullptr;

void WriteFile(const std::string& path, absl::string_view data, bool append) {
  int fd = ::open(path.c_str(),
                  O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0644);
  FUZZ_CHECK(fd >= 0);
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    FUZZ_CHECK(n > 0);
    data.remove_prefix(static_cast<size_t>(n));
  }
  ::close(fd);
}

bool IsValidUtf8(absl::string_view s) {
  for (size_t i = 0; i < s.size();) {
    auto b = static_cast<uint8_t>(s[i]);
    size_t n = b < 0x80         ? 1
               : (b >> 5) == 6  ? 2
               : (b >> 4) == 14 ? 3
               : (b >> 3) == 30 ? 4
                                : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? b : b & (0x7f >> n);
    for (size_t k = 1; k < n; ++k) {
      auto c = static_cast<uint8_t>(s[i + k]);
      if ((c >> 6) != 2) return false;
      cp = (cp << 6) | (c & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += n;
  }
  return true;
}

// The complete lines of `content`, plus its unterminated tail when `final`.
void AddLines(absl::string_view content, bool final,
              std::vector<std::string>* lines) {
  std::vector<absl::string_view> parts = absl::StrSplit(content, '\n');
  absl::string_view tail = parts.back();
  parts.pop_back();
  for (absl::string_view p : parts) lines->emplace_back(p);
  if (final && !tail.empty()) lines->emplace_back(tail);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  FLAGS_minloglevel = 2;  // the tailer warns about every cut line
  const char* tmp = std::getenv("TMPDIR");
  std::string templ =
      std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") +
      "/fleetd-fuzz-log.XXXXXX";
  FUZZ_CHECK(::mkdtemp(templ.data()) != nullptr);
  dir = new std::string(templ);
  std::atexit([] {
    std::remove((*dir + "/app.log").c_str());
    std::remove((*dir + "/app.log.1").c_str());
    ::rmdir(dir->c_str());
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzInput in(data, size);
  const size_t max_line = 16 + in.Byte();
  const uint8_t mode = in.Byte();
  const uint8_t split = in.Byte();
  const size_t batch_lines = 1 + in.Byte() % 16;
  const absl::string_view content = in.Rest();

  // GuessLogLevel sees any line.
  std::string level = agent::GuessLogLevel(content);
  FUZZ_CHECK(level == "debug" || level == "info" || level == "warn" ||
             level == "error" || level == "fatal");

  std::string filler;
  if (mode & 1) {
    filler.assign(kReadChunk - (mode >> 1) % 128 - 1, 'x');
    filler += '\n';
  }
  const bool rotate = (mode & 2) != 0;
  const size_t cut = content.size() * split / 255;
  const std::string first = filler + std::string(content.substr(0, cut));
  const absl::string_view second = content.substr(cut);
  const std::string path = *dir + "/app.log";
  WriteFile(path, first, /*append=*/false);

  fleetd::SimulatedClock clock;
  auto storage = agent::NewMemoryStorage(
      {.capacity_bytes = 4 << 20,
       .clock = &clock,
       .log = [](absl::LogSeverity, absl::string_view) {}});
  FUZZ_CHECK(storage.ok());
  agent::LogTailerOptions options;
  options.paths = {path};
  options.read_existing_from_start = true;
  options.max_line_bytes = max_line;
  options.max_batch_lines = batch_lines;
  auto tailer =
      agent::LogTailer::Create(options, storage->get(), &clock, nullptr);
  FUZZ_CHECK(tailer.ok());
  FUZZ_CHECK((*tailer)->PollOnce().ok());
  if (rotate) {
    FUZZ_CHECK(::rename(path.c_str(), (path + ".1").c_str()) == 0);
    WriteFile(path, second, /*append=*/false);
  } else {
    WriteFile(path, second, /*append=*/true);
  }
  FUZZ_CHECK((*tailer)->PollOnce().ok());
  FUZZ_CHECK((*tailer)->PollOnce().ok());
  tailer->reset();

  std::vector<std::string> expected;
  if (rotate) {
    AddLines(first, /*final=*/true, &expected);
    AddLines(second, /*final=*/false, &expected);
  } else {
    AddLines(first + std::string(second), /*final=*/false, &expected);
  }
  auto info = (*storage)->Info();
  FUZZ_CHECK(info.ok());
  if (info->kinds[static_cast<int>(agent::RecordKind::kLog)].dropped_unsynced >
      0)
    return 0;
  auto logs = (*storage)->ReadLogs({.max_records = 1 << 20});
  FUZZ_CHECK(logs.ok());
  // Every line once, in order; cut to the limit and valid UTF-8; a line that
  // needed neither is kept byte for byte (without its '\r').
  FUZZ_CHECK(logs->size() == expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const std::string& message = (*logs)[i].record.message();
    FUZZ_CHECK(message.size() <= max_line);
    FUZZ_CHECK(IsValidUtf8(message));
    absl::string_view line = expected[i];
    if (absl::EndsWith(line, "\r")) line.remove_suffix(1);
    bool truncated = (*logs)[i].record.fields().contains("truncated");
    if (line.size() <= max_line && IsValidUtf8(line)) {
      FUZZ_CHECK(message == line);
      FUZZ_CHECK(!truncated);
    }
    if (expected[i].size() > max_line + 8) FUZZ_CHECK(truncated);
  }
  return 0;
}
