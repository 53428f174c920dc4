#include "fuzz/fuzz_input.h"

#include <cstdio>
#include <cstdlib>

namespace fleetd::fuzz {

void Fail(const char* file, int line, const char* what) {
  std::fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", file, line, what);
  std::abort();
}

}  // namespace fleetd::fuzz
