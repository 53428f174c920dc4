#include "agent/control/control.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::agent {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::testing::HasSubstr;

class ControlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/fleetd-control-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/fleetd.sock";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_, path_;
};

TEST_F(ControlTest, RequestReachesHandlerAndAnswerComesBack) {
  std::vector<std::string> seen;
  auto server =
      ControlServer::Start(path_, [&](const std::vector<std::string>& args) {
        seen = args;
        return std::string(R"({"ok":true,"echo":")") + args.back() + "\"}";
      });
  ASSERT_THAT(server, IsOk());
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "only the agent's user may control it";
  auto answer =
      CallControl(path_, {"storage", "clean", "7d"}, absl::Seconds(10));
  ASSERT_THAT(answer, IsOk());
  EXPECT_EQ(*answer, "{\"ok\":true,\"echo\":\"7d\"}\n");
  EXPECT_THAT(seen, ::testing::ElementsAre("storage", "clean", "7d"));
}

TEST_F(ControlTest, NoAgentMeansUnavailableWithAClearMessage) {
  EXPECT_THAT(
      CallControl(path_, {"status"}, absl::Seconds(2)),
      StatusIs(absl::StatusCode::kUnavailable, HasSubstr("not running")));
}

TEST_F(ControlTest, StaleSocketIsReplacedButALiveAgentIsNot) {
  {
    auto first = ControlServer::Start(
        path_, [](const auto&) { return std::string("{}"); });
    ASSERT_THAT(first, IsOk());
    EXPECT_THAT(ControlServer::Start(
                    path_, [](const auto&) { return std::string("{}"); }),
                StatusIs(absl::StatusCode::kFailedPrecondition));
  }
  EXPECT_FALSE(std::filesystem::exists(path_))
      << "a clean stop removes the socket";
  // A crashed agent leaves its socket file behind, with nobody listening.
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, path_.c_str());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(fd);
  ASSERT_TRUE(std::filesystem::exists(path_));
  auto again = ControlServer::Start(
      path_, [](const auto&) { return std::string("{}"); });
  ASSERT_THAT(again, IsOk());
  EXPECT_THAT(CallControl(path_, {"ping"}, absl::Seconds(5)), IsOk());
}

}  // namespace
}  // namespace fleetd::agent
