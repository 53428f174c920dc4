#include "common/codec/codec.h"

#include <sys/resource.h>
#include <zstd.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>

#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::IsOkAndHolds;
using ::fleetd::testing::StatusIs;
using ::testing::HasSubstr;

constexpr size_t kMiB = 1024 * 1024;

std::string TextLike(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  static constexpr char kWords[][12] = {"cpu",        "memory",      "disk",
                                        "device_id=", "rpi-0042",    "0.25",
                                        "1700000000", "temperature", "net_rx"};
  std::string s;
  while (s.size() < n) {
    s += kWords[rng() % 9];
    s += ' ';
  }
  s.resize(n);
  return s;
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// A zstd frame of raw RLE blocks: each 4-byte block expands to 128 KiB, the
// format's largest block. With `declared_size` set, the frame header also
// states a content size.
std::string ZstdRleBomb(int blocks, uint64_t declared_size = 0) {
  std::string f = {'\x28', '\xb5', '\x2f', '\xfd'};  // magic, little-endian
  if (declared_size == 0) {
    f += '\x00';  // no content size, not single-segment: a window descriptor
                  // follows
    f += '\x38';  // window descriptor: exponent 7, so a 2^17 = 128 KiB window
  } else {
    f += '\xc0';  // content size field of 8 bytes, window descriptor follows
    f += '\x38';
    for (int i = 0; i < 8; ++i)
      f += static_cast<char>((declared_size >> (8 * i)) & 0xff);
  }
  constexpr uint32_t kBlock = 128 * 1024;
  for (int i = 0; i < blocks; ++i) {
    uint32_t last = (i == blocks - 1) ? 1 : 0;
    uint32_t header = last | (1u << 1) | (kBlock << 3);  // type 1 = RLE
    f += static_cast<char>(header & 0xff);
    f += static_cast<char>((header >> 8) & 0xff);
    f += static_cast<char>((header >> 16) & 0xff);
    f += 'A';
  }
  return f;
}

// A zstd frame with a window of 2^`window_log` bytes (not single-segment, so
// the header has a window descriptor), an optional content-size field, and
// `blocks` RLE blocks of `block_bytes` bytes of 'A' each.
std::string ZstdRleFrame(int window_log, std::optional<uint64_t> content_size,
                         int blocks, uint32_t block_bytes) {
  std::string f = {'\x28', '\xb5', '\x2f', '\xfd'};
  f += content_size ? '\xc0' : '\x00';  // 8-byte content size field, or none
  f += static_cast<char>((window_log - 10) << 3);  // exponent, no mantissa
  if (content_size) {
    for (int i = 0; i < 8; ++i)
      f += static_cast<char>((*content_size >> (8 * i)) & 0xff);
  }
  for (int i = 0; i < blocks; ++i) {
    uint32_t last = (i == blocks - 1) ? 1 : 0;
    uint32_t header = last | (1u << 1) | (block_bytes << 3);  // type 1 = RLE
    f += static_cast<char>(header & 0xff);
    f += static_cast<char>((header >> 8) & 0xff);
    f += static_cast<char>((header >> 16) & 0xff);
    f += 'A';
  }
  return f;
}

// What a streaming encoder writes: the input fed in pieces with
// ZSTD_e_continue and no pledged size, then ZSTD_e_end, so the frame header has
// no content size. `window_log` 0 keeps the level's default window.
std::string ZstdStreamEncode(absl::string_view input, int level,
                             int window_log) {
  std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> cctx(ZSTD_createCCtx(),
                                                          ZSTD_freeCCtx);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, level);
  if (window_log != 0)
    ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_windowLog, window_log);
  std::string out;
  std::string buf(ZSTD_CStreamOutSize(), '\0');
  auto drain = [&](absl::string_view piece, ZSTD_EndDirective mode) {
    ZSTD_inBuffer in{piece.data(), piece.size(), 0};
    size_t left;
    do {
      ZSTD_outBuffer ob{buf.data(), buf.size(), 0};
      left = ZSTD_compressStream2(cctx.get(), &ob, &in, mode);
      EXPECT_FALSE(ZSTD_isError(left)) << ZSTD_getErrorName(left);
      if (ZSTD_isError(left)) return;
      out.append(buf.data(), ob.pos);
    } while (mode == ZSTD_e_end ? left != 0 : in.pos < in.size);
  };
  for (size_t i = 0; i < input.size(); i += 1000)
    drain(input.substr(i, 1000), ZSTD_e_continue);
  drain("", ZSTD_e_end);
  return out;
}

// The window log a frame header declares (0 for single-segment frames).
int FrameWindowLog(absl::string_view frame) {
  if (frame.size() < 6 || (frame[4] & 0x20) != 0) return 0;
  return 10 + (static_cast<uint8_t>(frame[5]) >> 3);
}

long MaxRssKiB() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kUnderSanitizer = true;
#else
constexpr bool kUnderSanitizer = false;
#endif

class CodecRoundTripTest : public ::testing::TestWithParam<Compression> {};

TEST_P(CodecRoundTripTest, RoundTripsEverySize) {
  for (size_t n :
       {size_t{0}, size_t{1}, size_t{100}, size_t{70000}, 3 * kMiB}) {
    std::string input = TextLike(n, static_cast<uint32_t>(n));
    auto packed = Compress(GetParam(), input);
    ASSERT_THAT(packed, IsOk());
    EXPECT_THAT(Decompress(GetParam(), *packed, n), IsOkAndHolds(input))
        << "size " << n;
  }
}

TEST_P(CodecRoundTripTest, IncompressibleDataRoundTrips) {
  std::string input = RandomBytes(200000, 7);
  auto packed = Compress(GetParam(), input);
  ASSERT_THAT(packed, IsOk());
  EXPECT_THAT(Decompress(GetParam(), *packed, input.size()),
              IsOkAndHolds(input));
}

TEST_P(CodecRoundTripTest, OutputOneByteOverTheLimitIsRefused) {
  std::string input = TextLike(100000, 3);
  auto packed = Compress(GetParam(), input);
  ASSERT_THAT(packed, IsOk());
  EXPECT_THAT(
      Decompress(GetParam(), *packed, input.size() - 1),
      StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("limit")));
}

INSTANTIATE_TEST_SUITE_P(AllCodecs, CodecRoundTripTest,
                         ::testing::Values(Compression::kNone,
                                           Compression::kGzip,
                                           Compression::kZstd),
                         [](const auto& info) {
                           return std::string(CompressionName(info.param));
                         });

TEST(CodecTest, CompressionActuallyShrinksRepetitiveData) {
  std::string input = TextLike(100000, 1);
  for (Compression c : {Compression::kGzip, Compression::kZstd}) {
    auto packed = Compress(c, input);
    ASSERT_THAT(packed, IsOk());
    EXPECT_LT(packed->size(), input.size() / 3) << CompressionName(c);
  }
}

TEST(CodecTest, ParsesWireNames) {
  EXPECT_THAT(ParseCompression("zstd"), IsOkAndHolds(Compression::kZstd));
  EXPECT_THAT(ParseCompression("GZIP"), IsOkAndHolds(Compression::kGzip));
  EXPECT_THAT(ParseCompression(""), IsOkAndHolds(Compression::kNone));
  EXPECT_THAT(ParseCompression("none"), IsOkAndHolds(Compression::kNone));
  EXPECT_THAT(
      ParseCompression("brotli"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("brotli")));
  for (Compression c :
       {Compression::kNone, Compression::kGzip, Compression::kZstd}) {
    EXPECT_THAT(ParseCompression(CompressionName(c)), IsOkAndHolds(c));
  }
}

TEST(CodecTest, RejectsBadLevels) {
  EXPECT_THAT(Compress(Compression::kGzip, "x", {.level = 10}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Compress(Compression::kZstd, "x", {.level = 30}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(CodecTest, CorruptAndTruncatedInputIsInvalidArgument) {
  std::string input = TextLike(50000, 9);
  for (Compression c : {Compression::kGzip, Compression::kZstd}) {
    auto packed = Compress(c, input);
    ASSERT_THAT(packed, IsOk());
    std::string truncated = packed->substr(0, packed->size() / 2);
    EXPECT_THAT(Decompress(c, truncated, kMiB),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << CompressionName(c);
    std::string flipped = *packed;
    for (size_t i = 20; i < flipped.size(); i += 7) flipped[i] ^= 0x5a;
    EXPECT_THAT(Decompress(c, flipped, kMiB),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << CompressionName(c);
    EXPECT_THAT(Decompress(c, "definitely not compressed", kMiB),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << CompressionName(c);
    EXPECT_THAT(Decompress(c, "", kMiB),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << CompressionName(c);
  }
}

TEST(CodecTest, ConcatenatedGzipMembersAreOneStream) {
  auto a = Compress(Compression::kGzip, "hello ");
  auto b = Compress(Compression::kGzip, "world");
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_THAT(Decompress(Compression::kGzip, *a + *b, 100),
              IsOkAndHolds("hello world"));
}

// A single member decodes in one step into a result of its trailer's size
// (ISIZE); a trailer that lies, either way, changes nothing but the path: the
// data decodes or is refused as the streaming decoder decides.
TEST(CodecTest, GzipTrailerSizeIsOnlyAHint) {
  const std::string input = TextLike(50000, 3);
  auto packed = Compress(Compression::kGzip, input);
  ASSERT_THAT(packed, IsOk());
  EXPECT_THAT(Decompress(Compression::kGzip, *packed, input.size()),
              IsOkAndHolds(input));
  EXPECT_THAT(Decompress(Compression::kGzip, *packed, input.size() - 1),
              StatusIs(absl::StatusCode::kResourceExhausted));
  for (uint32_t lie : {uint32_t{100}, uint32_t{60000}, uint32_t{1} << 30}) {
    std::string lying = *packed;
    for (int i = 0; i < 4; ++i) {
      lying[lying.size() - 4 + i] = static_cast<char>(lie >> (8 * i));
    }
    // zlib checks ISIZE after the data: a wrong one is corrupt data.
    EXPECT_THAT(
        Decompress(Compression::kGzip, lying, kMiB),
        StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("length check")))
        << lie;
  }
  // Two members: the trailer names the last one only.
  auto second = Compress(Compression::kGzip, "tail");
  ASSERT_THAT(second, IsOk());
  EXPECT_THAT(Decompress(Compression::kGzip, *packed + *second, kMiB),
              IsOkAndHolds(input + "tail"));
}

TEST(CodecZstdInteropTest, StreamingFrameWithoutContentSizeIsAccepted) {
  // decode.cc passes the declared original_size as the limit, so the exact
  // size must be enough, however small, whatever window the encoder chose.
  for (size_t n : {size_t{300}, size_t{5000}, size_t{200000}}) {
    std::string input = TextLike(n, 11);
    std::string frame = ZstdStreamEncode(input, 3, 0);
    ASSERT_EQ(ZSTD_getFrameContentSize(frame.data(), frame.size()),
              ZSTD_CONTENTSIZE_UNKNOWN);
    EXPECT_GE(FrameWindowLog(frame), 21) << "size " << n;
    EXPECT_THAT(Decompress(Compression::kZstd, frame, n), IsOkAndHolds(input))
        << "size " << n;
    EXPECT_THAT(Decompress(Compression::kZstd, frame, n - 1),
                StatusIs(absl::StatusCode::kResourceExhausted))
        << "size " << n;
  }
}

TEST(CodecZstdInteropTest, LargeWindowSmallContentFrameIsAccepted) {
  // An encoder told windowLog 27 and fed 2 KB without a pledged size.
  std::string input = TextLike(2000, 12);
  std::string streamed = ZstdStreamEncode(input, 5, kZstdMaxWindowLog);
  ASSERT_EQ(FrameWindowLog(streamed), kZstdMaxWindowLog);
  EXPECT_THAT(Decompress(Compression::kZstd, streamed, input.size()),
              IsOkAndHolds(input));
  // The same with a content-size field: 100 bytes in a 128 MiB window.
  std::string declared = ZstdRleFrame(kZstdMaxWindowLog, 100, 1, 100);
  ASSERT_EQ(ZSTD_getFrameContentSize(declared.data(), declared.size()), 100u);
  EXPECT_THAT(Decompress(Compression::kZstd, declared, 100),
              IsOkAndHolds(std::string(100, 'A')));
}

TEST(CodecZstdInteropTest, DeclaredSizesDecodeStraightIntoTheResult) {
  // Frames that declare their size are decoded in one step into a result of
  // that size: the window does not matter then (no window buffer is used),
  // only the declared sizes, checked against the limit first.
  std::string big_window = ZstdRleFrame(kZstdMaxWindowLog + 4, 100, 1, 100);
  EXPECT_THAT(Decompress(Compression::kZstd, big_window, 100),
              IsOkAndHolds(std::string(100, 'A')));
  // Two frames, both declared.
  std::string two = ZstdRleFrame(20, 100, 1, 100) + ZstdRleFrame(20, 50, 1, 50);
  EXPECT_THAT(Decompress(Compression::kZstd, two, 150),
              IsOkAndHolds(std::string(150, 'A')));
  // A frame whose content is not what it declares is corrupt, either way.
  EXPECT_THAT(
      Decompress(Compression::kZstd, ZstdRleFrame(20, 50, 1, 100), kMiB),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("corrupt")));
  EXPECT_THAT(
      Decompress(Compression::kZstd, ZstdRleFrame(20, 200, 1, 100), kMiB),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("corrupt")));
  // One declared frame and one without a size: the streaming path, same
  // result.
  std::string mixed =
      ZstdRleFrame(20, 100, 1, 100) + ZstdRleFrame(20, std::nullopt, 1, 50);
  EXPECT_THAT(Decompress(Compression::kZstd, mixed, 150),
              IsOkAndHolds(std::string(150, 'A')));
}

TEST(CodecZstdInteropTest, WindowAboveTheCapIsRefused) {
  // Without a content size the decoder would need the whole 256 MiB window.
  std::string frame = ZstdRleFrame(kZstdMaxWindowLog + 1, std::nullopt, 1, 100);
  EXPECT_THAT(Decompress(Compression::kZstd, frame, 16 * kMiB),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("window exceeds the decoder's cap")));
}

TEST(CodecBombTest, MaxWindowBombWithoutContentSizeStaysBounded) {
  // 10 KB declaring no size, a 128 MiB window and 312 MiB of output: the
  // window is reserved but only written as far as the 16 MiB limit.
  std::string bomb =
      ZstdRleFrame(kZstdMaxWindowLog, std::nullopt, 2500, 128 * 1024);
  ASSERT_LT(bomb.size(), 11000u);
  long before = MaxRssKiB();
  EXPECT_THAT(
      Decompress(Compression::kZstd, bomb, 16 * kMiB),
      StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("limit")));
  if (!kUnderSanitizer) {
    EXPECT_LT(MaxRssKiB() - before, 64 * 1024)
        << "peak RSS grew by more than 64 MiB";
  }
}

TEST(CodecBombTest, ZstdFrameDeclaringGigabytesIsRefusedBeforeDecoding) {
  std::string bomb = ZstdRleBomb(2500, uint64_t{8} << 30);  // says 8 GiB
  ASSERT_LT(bomb.size(), 11000u);
  EXPECT_THAT(
      Decompress(Compression::kZstd, bomb, 16 * kMiB),
      StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("declares")));
}

TEST(CodecBombTest, UndeclaredZstdBombStopsAtTheLimitWithBoundedMemory) {
  // 10 KB that expands to 2500 * 128 KiB = 312 MiB; concatenating four such
  // frames makes the total claimed output over 1 GiB.
  std::string frame = ZstdRleBomb(2500);
  ASSERT_LT(frame.size(), 11000u);
  // Sanity: the frame is valid zstd and really expands that far.
  ASSERT_THAT(Decompress(Compression::kZstd, ZstdRleBomb(3), kMiB),
              IsOkAndHolds(std::string(3 * 128 * 1024, 'A')));
  std::string bomb = frame + frame + frame + frame;
  long before = MaxRssKiB();
  EXPECT_THAT(
      Decompress(Compression::kZstd, bomb, 16 * kMiB),
      StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("limit")));
  if (!kUnderSanitizer) {
    EXPECT_LT(MaxRssKiB() - before, 128 * 1024)
        << "peak RSS grew by more than 128 MiB";
  }
}

TEST(CodecBombTest, GzipBombStopsAtTheLimitWithBoundedMemory) {
  // One member: 10 MiB of zeros in about 10 KB. 100 concatenated members claim
  // ~1 GiB.
  auto member =
      Compress(Compression::kGzip, std::string(10 * kMiB, '\0'), {.level = 9});
  ASSERT_THAT(member, IsOk());
  ASSERT_LT(member->size(), 11000u);
  EXPECT_THAT(Decompress(Compression::kGzip, *member, kMiB),
              StatusIs(absl::StatusCode::kResourceExhausted));
  std::string bomb;
  for (int i = 0; i < 100; ++i) bomb += *member;
  long before = MaxRssKiB();
  EXPECT_THAT(
      Decompress(Compression::kGzip, bomb, 16 * kMiB),
      StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("limit")));
  if (!kUnderSanitizer) {
    EXPECT_LT(MaxRssKiB() - before, 128 * 1024)
        << "peak RSS grew by more than 128 MiB";
  }
}

}  // namespace
}  // namespace fleetd
