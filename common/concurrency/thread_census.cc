#include "common/concurrency/thread_census.h"

#include <dirent.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace fleetd {

std::set<pid_t> ThreadIds() {
  std::set<pid_t> ids;
  DIR* dir = ::opendir("/proc/self/task");
  if (dir == nullptr) return ids;
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    ids.insert(static_cast<pid_t>(std::strtol(entry->d_name, nullptr, 10)));
  }
  ::closedir(dir);
  return ids;
}

std::string ThreadName(pid_t id) {
  std::ifstream comm(absl::StrCat("/proc/self/task/", id, "/comm"));
  std::string name;
  if (!std::getline(comm, name)) return "";
  return name;
}

pid_t CurrentThreadId() { return static_cast<pid_t>(::syscall(SYS_gettid)); }

}  // namespace fleetd
