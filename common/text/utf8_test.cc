#include "common/text/utf8.h"

#include <string>

#include "gtest/gtest.h"

namespace fleetd {
namespace {

using namespace std::string_literals;

TEST(Utf8Test, AcceptsWellFormedText) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii, long enough for the word loop"));
  EXPECT_TRUE(IsValidUtf8("\0embedded nul"s));
  EXPECT_TRUE(IsValidUtf8("caf\xC3\xA9"));                 // U+00E9
  EXPECT_TRUE(IsValidUtf8("\xE2\x82\xAC 12"));             // U+20AC
  EXPECT_TRUE(IsValidUtf8("\xED\x9F\xBF"));                // U+D7FF
  EXPECT_TRUE(IsValidUtf8("\xEE\x80\x80"));                // U+E000
  EXPECT_TRUE(IsValidUtf8("\xF0\x9F\x98\x80 smile"));      // U+1F600
  EXPECT_TRUE(IsValidUtf8("\xF4\x8F\xBF\xBF"));            // U+10FFFF
  EXPECT_TRUE(IsValidUtf8("0123456789abcdef\xC3\xA9xy"));  // after ASCII words
}

TEST(Utf8Test, RefusesMalformedText) {
  EXPECT_FALSE(IsValidUtf8("\xFF"));
  EXPECT_FALSE(IsValidUtf8("\x80"));              // lone continuation
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xE0\x80\xAF"));      // overlong, 3 bytes
  EXPECT_FALSE(IsValidUtf8("\xF0\x80\x80\xAF"));  // overlong, 4 bytes
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate U+D800
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xF5\x80\x80\x80"));
  EXPECT_FALSE(IsValidUtf8("caf\xC3"));      // truncated at the end
  EXPECT_FALSE(IsValidUtf8("\xE2\x82 12"));  // truncated in the middle
  EXPECT_FALSE(IsValidUtf8("abcdefgh\xFFijklmnop"));
  // Bad bytes in a tail shorter than a word, after whole words.
  EXPECT_FALSE(IsValidUtf8("0123456789\xFF"));
  EXPECT_FALSE(IsValidUtf8("abcdefghi\xC3"));
  EXPECT_FALSE(
      IsValidUtf8("\xFF"
                  "bcdefghijk"));
}

TEST(Utf8Test, PrefixLengthPointsAtTheFirstBadByte) {
  EXPECT_EQ(ValidUtf8PrefixLength("abc"), 3u);
  EXPECT_EQ(ValidUtf8PrefixLength("abc\xFF"), 3u);
  EXPECT_EQ(ValidUtf8PrefixLength("0123456789\xC3\xA9\xC3"), 12u);
  EXPECT_EQ(ValidUtf8PrefixLength("\xE2\x82\xAC\xE2\x82"), 3u);
  EXPECT_EQ(ValidUtf8PrefixLength("0123456789\xFF"), 10u);
  EXPECT_EQ(ValidUtf8PrefixLength("01234567\xC3\xA9"
                                  "abcdefghij\x80"),
            20u);
  // Every length around the word size, all ASCII and with the last byte bad.
  for (size_t n = 1; n < 20; ++n) {
    std::string text(n, 'a');
    EXPECT_EQ(ValidUtf8PrefixLength(text), n);
    text.back() = '\xFF';
    EXPECT_EQ(ValidUtf8PrefixLength(text), n - 1);
  }
}

TEST(Utf8Test, SanitizeReplacesBadBytesAndCutsOnCharacterBoundaries) {
  bool cut = true;
  EXPECT_EQ(SanitizeUtf8("ok \xFF!", 100, &cut), "ok \xEF\xBF\xBD!");
  EXPECT_FALSE(cut);
  // Each byte of a broken sequence becomes one replacement character.
  EXPECT_EQ(SanitizeUtf8("\xE2\x82", 100, nullptr), "\xEF\xBF\xBD\xEF\xBF\xBD");
  // U+20AC takes three bytes: a limit of 3 keeps "a" only.
  EXPECT_EQ(SanitizeUtf8("a\xE2\x82\xAC", 3, &cut), "a");
  EXPECT_TRUE(cut);
  EXPECT_EQ(SanitizeUtf8("a\xE2\x82\xAC", 4, &cut), "a\xE2\x82\xAC");
  EXPECT_FALSE(cut);
  EXPECT_TRUE(IsValidUtf8(SanitizeUtf8("\xC0\xAF\xED\xA0\x80x", 100, nullptr)));
}

}  // namespace
}  // namespace fleetd
