#include "common/codec/codec.h"

#include <sys/resource.h>

#include <cstdint>
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
