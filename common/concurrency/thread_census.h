// The threads of this process, from /proc/self/task (Linux), for tests that
// assert a component creates no threads under load.
#ifndef FLEETD_COMMON_CONCURRENCY_THREAD_CENSUS_H_
#define FLEETD_COMMON_CONCURRENCY_THREAD_CENSUS_H_

#include <sys/types.h>

#include <set>
#include <string>

namespace fleetd {

// The kernel thread ids of every live thread of this process, sorted; empty if
// /proc/self/task cannot be read. A thread id that appears later and was not
// here before belongs to a thread created in between (ids are reused only
// after many thousands of threads).
std::set<pid_t> ThreadIds();

// The name of thread `id` of this process (/proc/self/task/ID/comm, at most 15
// characters); empty once the thread has ended.
std::string ThreadName(pid_t id);

// The calling thread's kernel id (as in ThreadIds()).
pid_t CurrentThreadId();

}  // namespace fleetd

#endif  // FLEETD_COMMON_CONCURRENCY_THREAD_CENSUS_H_
