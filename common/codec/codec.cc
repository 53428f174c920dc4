#include "common/codec/codec.h"

#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace fleetd {
namespace {

constexpr size_t kChunk = 64 * 1024;
// Largest zstd decoder a thread keeps between calls (a decoder sized for the
// usual small windows of device batches is far below it).
constexpr size_t kKeptDecoderBytes = 4 << 20;
// Largest zstd window accepted: 2^27 = 128 MiB, zstd's own default limit and
// the most any mainstream encoder uses without being told otherwise (levels
// 1..19 stay at or below 2^27). It is fixed, not derived from the output
// limit: a streaming encoder does not know the content size, so it writes a
// frame whose window can be far larger than the content (level 3 uses 2^21
// for a 300-byte batch), and such a frame must decode whatever the caller's
// limit. Memory stays bounded all the same: the decoder reserves the window
// as address space but writes it only as output is produced, and output stops
// at the caller's limit (see ZstdDecompress).
constexpr int kMaxWindowLog = kZstdMaxWindowLog;

absl::Status TooLarge(size_t max_output) {
  return absl::ResourceExhaustedError(absl::StrCat(
      "decompressed size exceeds the limit of ", max_output, " bytes"));
}

// ---- gzip
// ------------------------------------------------------------------------------

absl::StatusOr<std::string> GzipCompress(absl::string_view input, int level) {
  if (level == 0) level = 6;
  if (level < 1 || level > 9) {
    return absl::InvalidArgumentError(
        absl::StrCat("gzip level must be 1..9, got ", level));
  }
  z_stream zs{};
  // 15 window bits + 16 selects the gzip wrapper.
  if (deflateInit2(&zs, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) !=
      Z_OK) {
    return absl::InternalError("deflateInit2 failed");
  }
  std::string out;
  out.resize(deflateBound(&zs, input.size()) + 32);
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(input.data()));
  zs.avail_in = static_cast<uInt>(input.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  int rc = deflate(&zs, Z_FINISH);
  size_t produced = zs.total_out;
  deflateEnd(&zs);
  if (rc != Z_STREAM_END) return absl::InternalError("gzip compression failed");
  out.resize(produced);
  return out;
}

// The common case in one step: a single gzip member whose trailer's ISIZE
// (its length mod 2^32) fits the limit, inflated straight into a result of
// that size by a decoder the thread keeps (inflateReset keeps its window).
// Anything else (several members, an ISIZE that does not match, corrupt or
// truncated data) returns nullopt and is left to the streaming path, which
// enforces the limit and says what is wrong.
std::optional<std::string> GzipDecompressSingleMember(absl::string_view input,
                                                      size_t max_output) {
  // Header (10) and trailer (8) at least.
  if (input.size() < 18 || input.size() > (1u << 30)) return std::nullopt;
  const auto* tail =
      reinterpret_cast<const unsigned char*>(input.data() + input.size() - 4);
  const size_t isize =
      static_cast<size_t>(tail[0]) | static_cast<size_t>(tail[1]) << 8 |
      static_cast<size_t>(tail[2]) << 16 | static_cast<size_t>(tail[3]) << 24;
  // Deflate expands at most 1032:1, so a larger ISIZE is a lie: not worth
  // allocating for (a tiny request must not buy a large zeroed buffer).
  if (isize == 0 || isize > max_output || isize > (1u << 30) ||
      isize / 1032 > input.size()) {
    return std::nullopt;
  }
  struct Inflater {
    z_stream zs{};
    bool ready = false;
    ~Inflater() {
      if (ready) inflateEnd(&zs);
    }
  };
  thread_local Inflater inflater;
  if (!inflater.ready) {
    if (inflateInit2(&inflater.zs, 15 + 16) != Z_OK) return std::nullopt;
    inflater.ready = true;
  } else if (inflateReset(&inflater.zs) != Z_OK) {
    return std::nullopt;
  }
  z_stream& zs = inflater.zs;
  std::string out;
  out.resize(isize);
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(input.data()));
  zs.avail_in = static_cast<uInt>(input.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  const int rc = inflate(&zs, Z_FINISH);
  if (rc != Z_STREAM_END || zs.avail_in != 0 || zs.avail_out != 0) {
    return std::nullopt;
  }
  return out;
}

absl::StatusOr<std::string> GzipDecompress(absl::string_view input,
                                           size_t max_output) {
  if (std::optional<std::string> out =
          GzipDecompressSingleMember(input, max_output)) {
    return *std::move(out);
  }
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 16) != Z_OK)
    return absl::InternalError("inflateInit2 failed");
  std::unique_ptr<z_stream, int (*)(z_stream*)> guard(&zs, inflateEnd);
  std::string out;
  char buf[kChunk];
  // zlib counts input in uInt: feed larger inputs in pieces.
  absl::string_view rest = input;
  auto refill = [&zs, &rest] {
    size_t n = std::min<size_t>(rest.size(), 1u << 30);
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(rest.data()));
    zs.avail_in = static_cast<uInt>(n);
    rest.remove_prefix(n);
  };
  refill();
  while (true) {
    if (zs.avail_in == 0 && !rest.empty()) refill();
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof(buf);
    int rc = inflate(&zs, Z_NO_FLUSH);
    size_t got = sizeof(buf) - zs.avail_out;
    if (out.size() + got > max_output) return TooLarge(max_output);
    out.append(buf, got);
    if (rc == Z_STREAM_END) {
      // Concatenated gzip members form one stream, as RFC 1952 allows.
      if (zs.avail_in == 0 && rest.empty()) return out;
      if (inflateReset(&zs) != Z_OK)
        return absl::InternalError("inflateReset failed");
      continue;
    }
    if (rc == Z_OK) continue;
    if (rc == Z_BUF_ERROR && zs.avail_in == 0) {
      if (!rest.empty()) continue;
      return absl::InvalidArgumentError("gzip data is truncated");
    }
    return absl::InvalidArgumentError(
        absl::StrCat("gzip data is corrupt: ",
                     zs.msg != nullptr ? zs.msg : "inflate error"));
  }
}

// ---- zstd
// ------------------------------------------------------------------------------

absl::StatusOr<std::string> ZstdCompress(absl::string_view input, int level) {
  if (level == 0) level = 3;
  if (level < 1 || level > 19) {
    return absl::InvalidArgumentError(
        absl::StrCat("zstd level must be 1..19, got ", level));
  }
  std::string out;
  out.resize(ZSTD_compressBound(input.size()));
  size_t n =
      ZSTD_compress(out.data(), out.size(), input.data(), input.size(), level);
  if (ZSTD_isError(n)) {
    return absl::InternalError(
        absl::StrCat("zstd compression failed: ", ZSTD_getErrorName(n)));
  }
  out.resize(n);
  return out;
}

absl::StatusOr<std::string> ZstdDecompress(absl::string_view input,
                                           size_t max_output) {
  if (input.empty()) return absl::InvalidArgumentError("zstd data is empty");
  // Check what every frame declares before producing anything.
  size_t declared_total = 0;
  bool all_declared = true;
  for (absl::string_view rest = input; !rest.empty();) {
    unsigned long long declared =
        ZSTD_getFrameContentSize(rest.data(), rest.size());
    if (declared == ZSTD_CONTENTSIZE_ERROR) {
      return absl::InvalidArgumentError(
          "zstd data is corrupt: bad frame header");
    }
    if (declared != ZSTD_CONTENTSIZE_UNKNOWN) {
      if (declared > max_output || declared_total + declared > max_output) {
        return absl::ResourceExhaustedError(
            absl::StrCat("zstd frame declares ", declared,
                         " bytes, over the limit of ", max_output, " bytes"));
      }
      declared_total += declared;
    } else {
      all_declared = false;
    }
    size_t frame = ZSTD_findFrameCompressedSize(rest.data(), rest.size());
    if (ZSTD_isError(frame)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "zstd data is corrupt or truncated: ", ZSTD_getErrorName(frame)));
    }
    rest.remove_prefix(frame);
  }

  // One decoder per thread, reused: creating one per call was about 4 % of
  // decoding a 1,000-sample batch. A session reset forgets any frame an
  // earlier call left half read; parameters (the window cap) stay.
  thread_local std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> dctx(
      nullptr, ZSTD_freeDCtx);
  if (dctx == nullptr) {
    dctx.reset(ZSTD_createDCtx());
    if (dctx == nullptr) return absl::InternalError("ZSTD_createDCtx failed");
    // Fixed cap; see kMaxWindowLog.
    size_t rc =
        ZSTD_DCtx_setParameter(dctx.get(), ZSTD_d_windowLogMax, kMaxWindowLog);
    if (ZSTD_isError(rc)) {
      dctx.reset();
      return absl::InternalError(
          absl::StrCat("zstd windowLogMax: ", ZSTD_getErrorName(rc)));
    }
  }
  ZSTD_DCtx_reset(dctx.get(), ZSTD_reset_session_only);
  // A frame with a large window leaves up to 2^27 bytes of buffers in the
  // decoder; a thread does not keep that much after the call (128 workers
  // would hold gigabytes).
  absl::Cleanup shrink = [] {
    if (dctx != nullptr && ZSTD_sizeof_DCtx(dctx.get()) > kKeptDecoderBytes) {
      dctx.reset();
    }
  };

  std::string out;
  if (all_declared) {
    // Every frame says its size (encoders that compress a whole buffer, the
    // agent's included, write it): decode straight into the result, which
    // spares the decoder's window buffer and two copies of every byte. The
    // sizes are checked against the limit above, and a frame whose content
    // does not match its declared size is an error.
    out.resize(declared_total);
    const size_t n = ZSTD_decompressDCtx(dctx.get(), out.data(), out.size(),
                                         input.data(), input.size());
    if (ZSTD_isError(n)) {
      return absl::InvalidArgumentError(
          absl::StrCat("zstd data is corrupt: ", ZSTD_getErrorName(n)));
    }
    if (n != declared_total) {
      return absl::InvalidArgumentError(
          "zstd data is corrupt: content shorter than its frames declare");
    }
    return out;
  }
  out.reserve(std::min(declared_total, max_output));
  char buf[kChunk];
  ZSTD_inBuffer in{input.data(), input.size(), 0};
  size_t last = 0;
  while (in.pos < in.size) {
    ZSTD_outBuffer ob{buf, sizeof(buf), 0};
    last = ZSTD_decompressStream(dctx.get(), &ob, &in);
    if (ZSTD_isError(last)) {
      if (ZSTD_getErrorCode(last) == ZSTD_error_frameParameter_windowTooLarge) {
        // A property of the data, not of the load: retrying cannot help.
        return absl::InvalidArgumentError(absl::StrCat(
            "zstd frame window exceeds the decoder's cap of 2^", kMaxWindowLog,
            " bytes (encode with windowLog <= ", kMaxWindowLog, ")"));
      }
      return absl::InvalidArgumentError(
          absl::StrCat("zstd data is corrupt: ", ZSTD_getErrorName(last)));
    }
    if (out.size() + ob.pos > max_output) return TooLarge(max_output);
    out.append(buf, ob.pos);
  }
  // Flush whatever the decoder still holds for the last frame.
  while (last != 0) {
    ZSTD_outBuffer ob{buf, sizeof(buf), 0};
    last = ZSTD_decompressStream(dctx.get(), &ob, &in);
    if (ZSTD_isError(last)) {
      return absl::InvalidArgumentError(
          absl::StrCat("zstd data is corrupt: ", ZSTD_getErrorName(last)));
    }
    if (out.size() + ob.pos > max_output) return TooLarge(max_output);
    out.append(buf, ob.pos);
    if (ob.pos == 0 && last != 0)
      return absl::InvalidArgumentError("zstd data is truncated");
  }
  return out;
}

}  // namespace

absl::StatusOr<Compression> ParseCompression(absl::string_view name) {
  std::string lower = absl::AsciiStrToLower(name);
  if (lower.empty() || lower == "none" || lower == "identity")
    return Compression::kNone;
  if (lower == "gzip") return Compression::kGzip;
  if (lower == "zstd") return Compression::kZstd;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown compression \"", name, "\" (want none, gzip or zstd)"));
}

absl::string_view CompressionName(Compression compression) {
  switch (compression) {
    case Compression::kNone:
      return "none";
    case Compression::kGzip:
      return "gzip";
    case Compression::kZstd:
      return "zstd";
  }
  return "none";
}

absl::StatusOr<std::string> Compress(Compression compression,
                                     absl::string_view input,
                                     const CompressOptions& options) {
  switch (compression) {
    case Compression::kNone:
      return std::string(input);
    case Compression::kGzip:
      return GzipCompress(input, options.level);
    case Compression::kZstd:
      return ZstdCompress(input, options.level);
  }
  return absl::InvalidArgumentError("unknown compression");
}

absl::StatusOr<std::string> Decompress(Compression compression,
                                       absl::string_view input,
                                       size_t max_output) {
  switch (compression) {
    case Compression::kNone:
      if (input.size() > max_output) return TooLarge(max_output);
      return std::string(input);
    case Compression::kGzip:
      return GzipDecompress(input, max_output);
    case Compression::kZstd:
      return ZstdDecompress(input, max_output);
  }
  return absl::InvalidArgumentError("unknown compression");
}

}  // namespace fleetd
