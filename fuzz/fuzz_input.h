// Splits a fuzzer input into the arguments of a parser that takes several.
//
// The layout is plain text so seed inputs can be written by hand: a selector
// byte (Byte), then fields each ending at the next '\n' (Line), then the
// rest (Rest). Every call succeeds: missing fields are empty.
#ifndef FLEETD_FUZZ_FUZZ_INPUT_H_
#define FLEETD_FUZZ_FUZZ_INPUT_H_

#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"

namespace fleetd::fuzz {

class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size)
      : rest_(reinterpret_cast<const char*>(data), size) {}

  // The next byte (0 when none is left).
  uint8_t Byte() {
    if (rest_.empty()) return 0;
    uint8_t b = static_cast<uint8_t>(rest_[0]);
    rest_.remove_prefix(1);
    return b;
  }

  // Up to the next '\n', which is consumed; all that is left when there is
  // none.
  absl::string_view Line() {
    size_t nl = rest_.find('\n');
    absl::string_view line = rest_.substr(0, nl);
    rest_.remove_prefix(nl == absl::string_view::npos ? rest_.size() : nl + 1);
    return line;
  }

  // Everything not consumed yet.
  absl::string_view Rest() {
    absl::string_view r = rest_;
    rest_ = {};
    return r;
  }

 private:
  absl::string_view rest_;
};

// Stops the fuzzer with a message when an invariant of the code under test is
// broken (libFuzzer reports the abort as a crash and saves the input).
#define FUZZ_CHECK(cond)                               \
  do {                                                 \
    if (!(cond)) {                                     \
      ::fleetd::fuzz::Fail(__FILE__, __LINE__, #cond); \
    }                                                  \
  } while (false)

[[noreturn]] void Fail(const char* file, int line, const char* what);

}  // namespace fleetd::fuzz

#endif  // FLEETD_FUZZ_FUZZ_INPUT_H_
