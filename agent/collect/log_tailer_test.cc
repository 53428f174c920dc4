#include "agent/collect/log_tailer.h"

#include <unistd.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/collect/collect_test_util.h"
#include "common/clock/clock.h"
#include "common/metrics/metrics.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::agent {
namespace {

using collect_testing::AllLogs;
using collect_testing::FlakyStorage;
using collect_testing::Messages;
using collect_testing::NewTestStorage;
using collect_testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

class LogTailerTest : public ::testing::Test {
 protected:
  std::unique_ptr<LogTailer> NewTailer(
      std::function<void(LogTailerOptions&)> tweak = nullptr) {
    LogTailerOptions options;
    options.paths = {dir_.File("app.log")};
    options.state_path = dir_.File("tail.state");
    if (tweak) tweak(options);
    auto tailer = LogTailer::Create(options, &storage_, &clock_, &registry_);
    EXPECT_THAT(tailer, testing::IsOk());
    return tailer.ok() ? *std::move(tailer) : nullptr;
  }

  double Count(const std::string& name) {
    return registry_.CounterFamily(name, "", {"file"})
        .WithLabels({dir_.File("app.log")})
        .Value();
  }

  void Rename(const std::string& from, const std::string& to) {
    ASSERT_EQ(std::rename(dir_.File(from).c_str(), dir_.File(to).c_str()), 0);
  }

  TempDir dir_;
  SimulatedClock clock_;
  std::unique_ptr<Storage> memory_ = NewTestStorage(&clock_);
  FlakyStorage storage_{memory_.get()};
  metrics::Registry registry_;
};

TEST_F(LogTailerTest, FirstStartSkipsExistingLines) {
  dir_.Write("app.log", "old 1\nold 2\n");
  auto tailer = NewTailer();
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), IsEmpty());
  dir_.Append("app.log", "new 1\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("new 1"));
}

TEST_F(LogTailerTest, FirstStartKeepsTheLineBeingWritten) {
  dir_.Write("app.log", "old 1\nhalf a li");
  auto tailer = NewTailer();
  dir_.Append("app.log", "ne\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("half a line"));
}

TEST_F(LogTailerTest, ReadExistingFromStartWhenConfigured) {
  dir_.Write("app.log", "old 1\nold 2\n");
  auto tailer =
      NewTailer([](LogTailerOptions& o) { o.read_existing_from_start = true; });
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("old 1", "old 2"));
}

TEST_F(LogTailerTest, FileAppearingLaterIsReadFromTheStart) {
  auto tailer = NewTailer();
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());  // not there yet
  dir_.Write("app.log", "first\nsecond\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("first", "second"));
}

TEST_F(LogTailerTest, PartialLastLineWaitsForItsNewline) {
  auto tailer = NewTailer();
  dir_.Write("app.log", "a\nb\npar");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("a", "b"));
  dir_.Append("app.log", "ti");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("a", "b"));
  dir_.Append("app.log", "al\r\nc\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("a", "b", "partial", "c"));
}

TEST_F(LogTailerTest, EntriesCarryLevelSourcePathAndClockTime) {
  auto tailer = NewTailer();
  dir_.Write("app.log",
             "2024-05-01 10:00:00 ERROR disk full\n"
             "warning: low memory\n"
             "just a line\n"
             "E0501 10:00:00.000000  123 main.cc:1] boom\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  std::vector<v1::LogEntry> logs = AllLogs(*memory_);
  ASSERT_EQ(logs.size(), 4u);
  EXPECT_EQ(logs[0].level(), "error");
  EXPECT_EQ(logs[1].level(), "warn");
  EXPECT_EQ(logs[2].level(), "info");
  EXPECT_EQ(logs[3].level(), "error");
  for (const v1::LogEntry& e : logs) {
    EXPECT_EQ(e.source(), "app.log");
    EXPECT_EQ(e.fields().at("path"), dir_.File("app.log"));
    EXPECT_EQ(e.fields().count("truncated"), 0u);
    EXPECT_EQ(e.timestamp().seconds(), absl::ToUnixSeconds(clock_.Now()));
  }
  EXPECT_EQ(Count("fleetd_log_tailer_lines_total"), 4);
}

TEST_F(LogTailerTest, AppendsInBatches) {
  auto tailer = NewTailer([](LogTailerOptions& o) { o.max_batch_lines = 2; });
  dir_.Write("app.log", "1\n2\n3\n4\n5\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("1", "2", "3", "4", "5"));
  EXPECT_EQ(storage_.appends(), 3);
}

TEST_F(LogTailerTest, PollReadsAtMostMaxLinesPerPoll) {
  auto tailer = NewTailer([](LogTailerOptions& o) {
    o.max_batch_lines = 2;
    o.max_lines_per_poll = 3;
  });
  dir_.Write("app.log", "1\n2\n3\n4\n5\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("1", "2", "3"));
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("1", "2", "3", "4", "5"));
}

TEST_F(LogTailerTest, RotationFinishesTheOldFileFirst) {
  auto tailer = NewTailer();
  dir_.Write("app.log", "one\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  dir_.Append("app.log", "two\n");
  Rename("app.log", "app.log.1");
  // The writer has not reopened yet: it still appends to the renamed file.
  dir_.Append("app.log.1", "three\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("one", "two", "three"));
  dir_.Write("app.log", "four\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("one", "two", "three", "four"));
  EXPECT_EQ(Count("fleetd_log_tailer_rotations_total"), 1);
  dir_.Append("app.log", "five\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_),
              ElementsAre("one", "two", "three", "four", "five"));
}

TEST_F(LogTailerTest, RotationInOnePollAndUnterminatedTail) {
  auto tailer = NewTailer();
  dir_.Write("app.log", "a\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  dir_.Append("app.log", "b\nno newline");
  Rename("app.log", "app.log.1");
  dir_.Write("app.log", "c\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("a", "b", "no newline", "c"));
}

TEST_F(LogTailerTest, TruncationStartsOver) {
  auto tailer = NewTailer();
  dir_.Write("app.log", "a long first line\nb\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  dir_.Write("app.log", "c\n");  // O_TRUNC: shorter than the position
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("a long first line", "b", "c"));
  EXPECT_EQ(Count("fleetd_log_tailer_truncations_total"), 1);
}

TEST_F(LogTailerTest, RestartResumesWithoutDuplicates) {
  {
    auto tailer = NewTailer();
    dir_.Write("app.log", "a\nb\npart");
    ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  }
  dir_.Append("app.log", "ial\nc\n");
  auto tailer = NewTailer();
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("a", "b", "partial", "c"));
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("a", "b", "partial", "c"));
}

TEST_F(LogTailerTest, RestartAfterRotationWhileDownReadsOldRemainderFirst) {
  {
    auto tailer = NewTailer();
    dir_.Write("app.log", "a\n");
    ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  }
  dir_.Append("app.log", "b\n");
  Rename("app.log", "app.log.1");
  dir_.Write("app.log", "c\n");
  auto tailer = NewTailer();
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("a", "b", "c"));
}

TEST_F(LogTailerTest, RestartAfterOldFileIsGoneReadsNewFileFromStart) {
  {
    auto tailer = NewTailer();
    dir_.Write("app.log", "a\n");
    ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  }
  Rename("app.log", "app.log.1");
  // The new file is created before the old one is deleted, so it cannot get
  // the old inode number back (a documented limitation, see log_tailer.h;
  // the test failed once that way).
  dir_.Write("app.log", "b\n");
  ASSERT_EQ(::unlink(dir_.File("app.log.1").c_str()), 0);
  auto tailer = NewTailer();
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("a", "b"));
}

TEST_F(LogTailerTest, PathKnownFromStateIsReadFromStartWhenItAppears) {
  {
    auto tailer = NewTailer();  // app.log does not exist yet
    ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  }
  dir_.Write("app.log", "written while the agent was down\n");
  auto tailer = NewTailer();
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_),
              ElementsAre("written while the agent was down"));
}

TEST_F(LogTailerTest, FailedAppendKeepsThePosition) {
  auto tailer = NewTailer();
  dir_.Write("app.log", "a\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  const std::string state_before = dir_.Read("tail.state");

  dir_.Append("app.log", "b\nc\n");
  storage_.FailAppends(absl::UnavailableError("disk busy"));
  EXPECT_THAT(tailer->PollOnce(),
              testing::StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(dir_.Read("tail.state"), state_before);  // nothing claimed
  EXPECT_EQ(registry_
                .CounterFamily("fleetd_log_tailer_errors_total", "",
                               {"file", "stage"})
                .WithLabels({dir_.File("app.log"), "append"})
                .Value(),
            1);

  storage_.FailAppends(absl::OkStatus());
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("a", "b", "c"));
  EXPECT_NE(dir_.Read("tail.state"), state_before);
}

TEST_F(LogTailerTest, FailureThenRestartReadsEachLineOnce) {
  {
    auto tailer = NewTailer();
    dir_.Write("app.log", "a\n");
    ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
    dir_.Append("app.log", "b\n");
    storage_.FailAppends(absl::UnavailableError("disk busy"));
    EXPECT_FALSE(tailer->PollOnce().ok());
  }
  storage_.FailAppends(absl::OkStatus());
  auto tailer = NewTailer();
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("a", "b"));
}

TEST_F(LogTailerTest, LongLinesAreCutAndInvalidUtf8Replaced) {
  auto tailer = NewTailer([](LogTailerOptions& o) { o.max_line_bytes = 16; });
  dir_.Write("app.log", std::string(100, 'x') + "\nbad \xff byte\nshort\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  std::vector<v1::LogEntry> logs = AllLogs(*memory_);
  ASSERT_EQ(logs.size(), 3u);
  EXPECT_EQ(logs[0].message(), std::string(16, 'x'));
  EXPECT_EQ(logs[0].fields().at("truncated"), "true");
  EXPECT_EQ(logs[1].message(), "bad \xEF\xBF\xBD byte");
  EXPECT_EQ(logs[2].message(), "short");
  EXPECT_EQ(Count("fleetd_log_tailer_truncated_lines_total"), 1);
}

TEST_F(LogTailerTest, LongUnterminatedLineGrowingOverPolls) {
  auto tailer = NewTailer([](LogTailerOptions& o) { o.max_line_bytes = 16; });
  dir_.Write("app.log", "");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  for (int i = 0; i < 5; ++i) {
    dir_.Append("app.log", std::string(100 * 1024, 'a' + i));
    ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
    EXPECT_THAT(Messages(*memory_), IsEmpty());
  }
  dir_.Append("app.log", "\nnext\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre(std::string(16, 'a'), "next"));
}

TEST_F(LogTailerTest, CorruptStateFileIsIgnoredAndCounted) {
  dir_.Write("tail.state", "garbage\n");
  dir_.Write("app.log", "old\n");
  auto tailer = NewTailer();
  EXPECT_EQ(
      registry_.GetCounter("fleetd_log_tailer_state_errors_total", "").Value(),
      1);
  dir_.Append("app.log", "new\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  EXPECT_THAT(Messages(*memory_), ElementsAre("new"));
  EXPECT_THAT(dir_.Read("tail.state"), HasSubstr("fleetd-log-tailer-state 1"));
}

TEST_F(LogTailerTest, SeveralFiles) {
  auto tailer = NewTailer([&](LogTailerOptions& o) {
    o.paths = {dir_.File("a.log"), dir_.File("b.log")};
  });
  dir_.Write("a.log", "from a\n");
  dir_.Write("b.log", "from b\n");
  ASSERT_THAT(tailer->PollOnce(), testing::IsOk());
  std::vector<v1::LogEntry> logs = AllLogs(*memory_);
  ASSERT_EQ(logs.size(), 2u);
  EXPECT_EQ(logs[0].source(), "a.log");
  EXPECT_EQ(logs[1].source(), "b.log");
}

TEST_F(LogTailerTest, PollsOnTheClockInTheBackground) {
  auto tailer = NewTailer(
      [](LogTailerOptions& o) { o.poll_interval = absl::Seconds(1); });
  tailer->Start();
  ASSERT_TRUE(clock_.AwaitSleepers(1, absl::Seconds(30)));
  dir_.Write("app.log", "hello\n");
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(testing::WaitFor([&] { return Messages(*memory_).size() == 1; }));
  tailer->Stop();
  EXPECT_THAT(Messages(*memory_), ElementsAre("hello"));
}

TEST_F(LogTailerTest, RejectsBadOptions) {
  LogTailerOptions options;
  EXPECT_THAT(LogTailer::Create(options, &storage_, &clock_, nullptr),
              testing::StatusIs(absl::StatusCode::kInvalidArgument));
  options.paths = {"/a", "/a"};
  EXPECT_THAT(LogTailer::Create(options, &storage_, &clock_, nullptr),
              testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                HasSubstr("twice")));
}

TEST(GuessLogLevelTest, CommonMarkers) {
  EXPECT_EQ(GuessLogLevel("2024-01-01 ERROR failed"), "error");
  EXPECT_EQ(GuessLogLevel("[ERR] x"), "error");
  EXPECT_EQ(GuessLogLevel("error: cannot open"), "error");
  EXPECT_EQ(GuessLogLevel("Error: cannot open"), "error");
  EXPECT_EQ(GuessLogLevel("2023/01/01 [error] 12#0: upstream"), "error");
  EXPECT_EQ(GuessLogLevel("time=1 level=warn msg=x"), "warn");
  EXPECT_EQ(GuessLogLevel(R"({"level":"debug","msg":"x"})"), "debug");
  EXPECT_EQ(GuessLogLevel("WARN disk at 90%"), "warn");
  EXPECT_EQ(GuessLogLevel("WARNING: x"), "warn");
  EXPECT_EQ(GuessLogLevel("FATAL: x"), "fatal");
  EXPECT_EQ(GuessLogLevel("kernel panic: x"), "fatal");
  EXPECT_EQ(GuessLogLevel("DEBUG x"), "debug");
  EXPECT_EQ(GuessLogLevel("W0102 12:00:00.000 1 f.cc:1] x"), "warn");
  EXPECT_EQ(GuessLogLevel("F0102 12:00:00.000 1 f.cc:1] x"), "fatal");
  // The first marker wins: the line is an INFO about an error.
  EXPECT_EQ(GuessLogLevel("INFO retrying after ERROR"), "info");
  // Not markers: lower case prose, parts of identifiers.
  EXPECT_EQ(GuessLogLevel("no error occurred"), "info");
  EXPECT_EQ(GuessLogLevel("got ERR_CONNECTION_REFUSED"), "info");
  EXPECT_EQ(GuessLogLevel("TERRORS"), "info");
  EXPECT_EQ(GuessLogLevel(""), "info");
}

}  // namespace
}  // namespace fleetd::agent
