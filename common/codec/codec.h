// Compression codecs for batches on the wire: none, gzip and zstd.
//
// Decompression is always bounded: the caller names the largest output it
// accepts, and both the size a zstd frame declares and the bytes actually
// produced are checked against it, so a small "bomb" that would expand to
// gigabytes fails fast with bounded memory.
#ifndef FLEETD_COMMON_CODEC_CODEC_H_
#define FLEETD_COMMON_CODEC_CODEC_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fleetd {

enum class Compression { kNone, kGzip, kZstd };

// Parses the wire names "none", "gzip" and "zstd" (case-insensitive; "" means
// none). Unknown names are InvalidArgument.
absl::StatusOr<Compression> ParseCompression(absl::string_view name);
// The wire name: "none", "gzip" or "zstd".
absl::string_view CompressionName(Compression compression);

struct CompressOptions {
  // 0 picks the codec's default (gzip 6, zstd 3). gzip takes 1..9, zstd 1..19.
  int level = 0;
};

// Compresses `input`. zstd frames record their content size. Fails only on an
// invalid level or an internal codec error (Internal).
absl::StatusOr<std::string> Compress(Compression compression,
                                     absl::string_view input,
                                     const CompressOptions& options = {});

// The largest zstd window Decompress accepts: 2^27 bytes (128 MiB, zstd's
// default limit). Fixed, whatever the output limit: frames from streaming
// encoders carry no content size and often a window larger than their content.
inline constexpr int kZstdMaxWindowLog = 27;

// Decompresses `input`, producing at most `max_output` bytes. Streaming: the
// input may be any number of zstd frames (with or without a content-size field,
// with any window up to 2^kZstdMaxWindowLog) or gzip members.
// Errors:
//   ResourceExhausted: the declared or actual output exceeds `max_output`;
//   InvalidArgument: the data is corrupt, truncated or not of this codec, or a
//     zstd frame needs a window above 2^kZstdMaxWindowLog.
// Memory use is bounded by `max_output` plus a fixed working set whatever the
// input claims: output is produced in 64 KiB steps and stops at the limit; the
// zstd decoder reserves at most a 2^kZstdMaxWindowLog window of address space
// and writes into it only as output is produced.
absl::StatusOr<std::string> Decompress(Compression compression,
                                       absl::string_view input,
                                       size_t max_output);

}  // namespace fleetd

#endif  // FLEETD_COMMON_CODEC_CODEC_H_
