// Bounded decompression (common/codec): gzip and zstd as they arrive in
// request bodies, envelopes and in-message compressed_data.
//
// Input: a codec byte ('n' none, 'g' gzip, 'z' zstd; others by value mod 3),
// a limit byte (the output limit: 0, 1, 100, 4 KiB, 64 KiB or 1 MiB, by value
// mod 6), then the compressed bytes.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/codec/codec.h"
#include "fuzz/fuzz_input.h"

namespace {

using ::fleetd::Compression;
using ::fleetd::fuzz::FuzzInput;

Compression CodecOf(uint8_t b) {
  switch (b) {
    case 'n':
      return Compression::kNone;
    case 'g':
      return Compression::kGzip;
    case 'z':
      return Compression::kZstd;
    default:
      return static_cast<Compression>(b % 3);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static constexpr size_t kLimits[] = {0, 1, 100, 4096, 64 << 10, 1 << 20};
  FuzzInput in(data, size);
  Compression codec = CodecOf(in.Byte());
  size_t limit = kLimits[in.Byte() % 6];
  absl::string_view input = in.Rest();

  // Never more than the limit; only the documented error codes.
  auto out = fleetd::Decompress(codec, input, limit);
  if (out.ok()) {
    FUZZ_CHECK(out->size() <= limit);
    // Anything that decodes within a limit decodes the same within a larger
    // one.
    auto wide = fleetd::Decompress(codec, input, size_t{1} << 20);
    FUZZ_CHECK(wide.ok() && *wide == *out);
  } else {
    absl::StatusCode code = out.status().code();
    FUZZ_CHECK(code == absl::StatusCode::kInvalidArgument ||
               code == absl::StatusCode::kResourceExhausted);
  }

  // Our own output always comes back, exactly at its size.
  auto packed = fleetd::Compress(codec, input, {.level = 1});
  FUZZ_CHECK(packed.ok());
  auto back = fleetd::Decompress(codec, *packed, input.size());
  FUZZ_CHECK(back.ok() && *back == input);
  return 0;
}
