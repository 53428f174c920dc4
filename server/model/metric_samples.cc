#include "server/model/metric_samples.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/text/utf8.h"

namespace fleetd::server {
namespace {

// Wire types (protobuf encoding spec).
constexpr int kVarint = 0;
constexpr int kFixed64 = 1;
constexpr int kLengthDelimited = 2;
constexpr int kStartGroup = 3;
constexpr int kEndGroup = 4;
constexpr int kFixed32 = 5;

// Nesting the generated parser allows (its default recursion limit): each
// message or group entered below the top level takes one.
constexpr int kRecursionLimit = 100;

absl::Status Malformed(absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed metrics batch: ", what));
}

// Reads protobuf wire format from [p, end), with the generated parser's
// limits: varints of at most ten bytes (the excess bits of the tenth are
// dropped), tags and lengths of at most five (a tag keeps its low 32 bits, a
// length must be below 2 GiB). Inline and allocation-free: this is the
// per-sample hot path (protobuf's CodedInputStream spent about a third of the
// parse in out-of-line limit bookkeeping).
class Reader {
 public:
  Reader(const uint8_t* p, const uint8_t* end) : p_(p), end_(end) {}

  bool AtEnd() const { return p_ == end_; }
  const uint8_t* position() const { return p_; }
  const uint8_t* end() const { return end_; }
  size_t left() const { return static_cast<size_t>(end_ - p_); }

  bool Varint(uint64_t* out) {
    if (p_ != end_ && *p_ < 0x80) {
      *out = *p_++;
      return true;
    }
    return VarintSlow(10, out);
  }

  bool Tag(uint32_t* tag) {
    uint64_t v;
    if (p_ != end_ && *p_ < 0x80) {
      v = *p_++;
    } else if (!VarintSlow(5, &v)) {
      return false;
    }
    *tag = static_cast<uint32_t>(v);
    return (*tag >> 3) != 0;
  }

  bool Length(uint32_t* len) {
    uint64_t v;
    if (p_ != end_ && *p_ < 0x80) {
      v = *p_++;
    } else if (!VarintSlow(5, &v) ||
               v > static_cast<uint64_t>(std::numeric_limits<int>::max())) {
      return false;
    }
    *len = static_cast<uint32_t>(v);
    return true;
  }

  bool Fixed64(uint64_t* out) {
    if (left() < 8) return false;
    std::memcpy(out, p_, 8);  // little-endian hosts only (x86, arm64)
    p_ += 8;
    return true;
  }

  bool Skip(size_t n) {
    if (left() < n) return false;
    p_ += n;
    return true;
  }

  // The next `len` bytes as their own reader; this one moves past them.
  bool Sub(uint32_t len, Reader* sub) {
    if (left() < len) return false;
    *sub = Reader(p_, p_ + len);
    p_ += len;
    return true;
  }

 private:
  bool VarintSlow(int max_bytes, uint64_t* out) {
    uint64_t v = 0;
    for (int i = 0; i < max_bytes; ++i) {
      if (p_ == end_) return false;
      const uint8_t b = *p_++;
      v |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
      if (b < 0x80) {
        *out = v;
        return true;
      }
    }
    return false;
  }

  const uint8_t* p_;
  const uint8_t* end_;
};

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "Reader::Fixed64 reads doubles in host byte order");

// Skips the value of a field with `tag` (already read); `depth` is the
// recursion budget left.
bool SkipField(Reader& in, uint32_t tag, int depth) {
  switch (tag & 7) {
    case kVarint: {
      uint64_t v;
      return in.Varint(&v);
    }
    case kFixed64:
      return in.Skip(8);
    case kLengthDelimited: {
      uint32_t len;
      return in.Length(&len) && in.Skip(len);
    }
    case kStartGroup: {
      if (--depth < 0) return false;
      const uint32_t end_tag = (tag & ~7u) | kEndGroup;
      while (true) {
        uint32_t inner;
        if (in.AtEnd() || !in.Tag(&inner)) return false;
        if (inner == end_tag) return true;
        if ((inner & 7) == kEndGroup || !SkipField(in, inner, depth)) {
          return false;
        }
      }
    }
    case kFixed32:
      return in.Skip(4);
    default:
      return false;
  }
}

uint64_t Load64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

uint32_t Load32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// The two halves of the 128-bit product, folded.
uint64_t Mix(uint64_t a, uint64_t b) {
  const unsigned __int128 r = static_cast<unsigned __int128>(a) * b;
  return static_cast<uint64_t>(r) ^ static_cast<uint64_t>(r >> 64);
}

// A hash of a short string (a metric name, a label entry), inline: absl's
// out-of-line string hash cost more than the rest of the interning. For the
// per-batch table only; never stored or sent.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline uint64_t HashBytes(absl::string_view s) {
  constexpr uint64_t kA = 0xa0761d6478bd642fu;
  constexpr uint64_t kB = 0xe7037ed1a0b428dbu;
  const char* p = s.data();
  size_t n = s.size();
  uint64_t h = kA ^ n;
  for (; n > 8; p += 8, n -= 8) h = Mix(h ^ Load64(p), kB);
  uint64_t tail;
  if (s.size() >= 8) {
    tail = Load64(s.data() + s.size() - 8);  // overlaps hashed bytes
  } else if (n >= 4) {
    tail = static_cast<uint64_t>(Load32(p)) << 32 | Load32(p + n - 4);
  } else if (n > 0) {
    const auto byte = [&](size_t i) {
      return static_cast<uint64_t>(static_cast<unsigned char>(p[i]));
    };
    tail = byte(0) << 16 | byte(n / 2) << 8 | byte(n - 1);
  } else {
    tail = 0;
  }
  return Mix(h ^ tail, kB ^ kA);
}

// a == b for short strings, without a call to memcmp.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline bool SameBytes(absl::string_view a,
                                                   absl::string_view b) {
  const size_t size = a.size();
  if (b.size() != size) return false;
  const char* p = a.data();
  const char* q = b.data();
  if (size >= 8) {
    for (size_t i = 0; i + 8 < size; i += 8) {
      if (Load64(p + i) != Load64(q + i)) return false;
    }
    return Load64(p + size - 8) == Load64(q + size - 8);
  }
  if (size >= 4) {
    return Load32(p) == Load32(q) &&
           Load32(p + size - 4) == Load32(q + size - 4);
  }
  // The first, middle and last byte are all of them.
  return size == 0 || (p[0] == q[0] && p[size / 2] == q[size / 2] &&
                       p[size - 1] == q[size - 1]);
}

// Open addressing over an array of records kept elsewhere, at most half
// full: each slot holds the high 32 bits of a record's hash and its index + 1
// (0: empty). Looks at kMaxProbes slots at most, so that keys made to collide
// cost little.
class SlotTable {
 public:
  static constexpr int kMaxProbes = 16;
  static constexpr int64_t kAbsent = -1;  // an empty slot was reached
  static constexpr int64_t kGaveUp = -2;  // kMaxProbes slots, none empty

  void Reset(size_t slots) { slots_.assign(slots, 0); }
  size_t size() const { return slots_.size(); }

  // The index of a record with `hash` for which `same(index)` holds, or
  // kAbsent or kGaveUp.
  template <typename Same>
  int64_t Find(uint64_t hash, Same same) const {
    const size_t mask = slots_.size() - 1;
    size_t i = hash & mask;
    for (int probes = 0; probes < kMaxProbes; ++probes, i = (i + 1) & mask) {
      const uint64_t slot = slots_[i];
      if (slot == 0) return kAbsent;
      if ((slot & kHigh) != (hash & kHigh)) continue;
      const int64_t index = static_cast<int64_t>(slot & ~kHigh) - 1;
      if (same(static_cast<size_t>(index))) return index;
    }
    return kGaveUp;
  }

  // Adds record `index`; false when its kMaxProbes slots are all taken (it is
  // then never found).
  bool Place(uint64_t hash, size_t index) {
    const size_t mask = slots_.size() - 1;
    size_t i = hash & mask;
    for (int probes = 0; probes < kMaxProbes; ++probes, i = (i + 1) & mask) {
      if (slots_[i] == 0) {
        slots_[i] = (hash & kHigh) | (index + 1);
        return true;
      }
    }
    return false;
  }

 private:
  static constexpr uint64_t kHigh = ~uint64_t{0xffffffff};
  std::vector<uint64_t> slots_;
};

}  // namespace

// Reads the wire encoding into a MetricSamples whose `bytes_` holds it.
//
// Label sets are interned per batch: a sample whose name field and label
// entries are byte for byte those of an earlier sample (entries in any order)
// takes that sample's series, so its strings are not checked for UTF-8 again
// and its labels are not sorted again. Only series without repeated label
// keys are shared, so which entry wins never depends on the order.
class MetricSamples::Parser {
 public:
  Parser(MetricSamples* out, int max_labels)
      : out_(out),
        base_(reinterpret_cast<const uint8_t*>(out->bytes_.data())),
        max_labels_(max_labels),
        scratch_(ThreadScratch()) {
    scratch_.known.clear();
    scratch_.known_entries.clear();
    scratch_.slots.Reset(kInitialSlots);
    scratch_.tails.clear();
    scratch_.tail_slots.Reset(kInitialSlots);
  }

  ~Parser() { scratch_.ReleaseIfLarge(); }

  absl::Status Batch() {
    Reader in(base_, base_ + out_->bytes_.size());
    bool compressed_data = false;
    while (!in.AtEnd()) {
      uint32_t tag;
      if (!in.Tag(&tag)) return Malformed("invalid tag");
      const uint32_t field = tag >> 3;
      const int type = static_cast<int>(tag & 7);
      if (type == kEndGroup) return Malformed("unexpected end of group");
      if (field == 1 && type == kLengthDelimited) {
        absl::Status s = Metric(in);
        if (!s.ok()) return s;
      } else if (field == 2 && type == kLengthDelimited) {
        Span compression;
        if (!String(in, &compression)) {
          return Malformed("truncated compression");
        }
        if (!IsValidUtf8(out_->View(compression))) {
          return Malformed("compression is not UTF-8");
        }
      } else if (field == 3 && type == kLengthDelimited) {
        Span data;
        if (!String(in, &data)) return Malformed("truncated compressed_data");
        compressed_data = data.size > 0;  // the last occurrence counts
      } else if (!SkipField(in, tag, kRecursionLimit)) {
        return Malformed("truncated or invalid field");
      }
    }
    if (compressed_data) {
      return absl::InvalidArgumentError(
          "nested compressed_data is not allowed");
    }
    return absl::OkStatus();
  }

 private:
  // A label entry as it came on the wire (the map entry message's bytes).
  struct Entry {
    Span raw;
    uint64_t hash = 0;
  };
  // A label tail seen before: the sample's name field and the bytes from its
  // first label entry to its end, all label entries.
  struct Tail {
    uint64_t hash;
    Span name;
    Span tail;
    uint32_t series;
  };
  // A shared series: its name field, its entries (known_entries[begin, +n)).
  struct Known {
    uint64_t hash;
    Span name;
    uint32_t entries_begin;
    uint32_t entries_count;
    uint32_t series;
  };
  // Per-sample and per-batch work space, kept by the thread between batches
  // so that a parse allocates nothing for it in the steady state.
  struct Scratch {
    std::vector<Entry> entries;    // the sample's, in wire order
    std::vector<LabelRec> labels;  // the sample's, parallel to `entries`
    // The sample's strings in wire order, not yet checked for UTF-8.
    std::vector<Span> unchecked;
    std::vector<Known> known;
    std::vector<Entry> known_entries;
    SlotTable slots;  // over `known`
    std::vector<Tail> tails;
    SlotTable tail_slots;  // over `tails`

    // A batch with many series leaves no lasting footprint.
    void ReleaseIfLarge() {
      if (known_entries.capacity() > kKeptEntries ||
          unchecked.capacity() > kKeptEntries ||
          tails.capacity() > kKeptEntries) {
        *this = Scratch();
      }
    }
  };

  static constexpr size_t kInitialSlots = 64;
  static constexpr size_t kKeptEntries = 4096;
  // Label tails remembered per batch at most (a sender that shuffles its
  // label entries leaves one per order).
  static constexpr size_t kMaxTails = 1 << 16;
  // The most entries a shared series has (one bit each while comparing).
  static constexpr size_t kMaxSharedEntries = 64;

  static Scratch& ThreadScratch() {
    thread_local Scratch scratch;
    return scratch;
  }

  // A length-delimited value as a span of the buffer (no copy).
  bool String(Reader& in, Span* span) {
    uint32_t len;
    if (!in.Length(&len)) return false;
    const uint8_t* at = in.position();
    if (!in.Skip(len)) return false;
    *span = MakeSpan(at, len);
    return true;
  }

  // One 8-byte store: spans are copied whole right after being set, and a
  // load that spans two smaller stores stalls (no store forwarding). That
  // stall was half of the time spent here.
  Span MakeSpan(const uint8_t* at, uint32_t len) const {
    static_assert(sizeof(Span) == sizeof(uint64_t));
    const uint64_t bits =
        static_cast<uint64_t>(at - base_) | static_cast<uint64_t>(len) << 32;
    Span span;
    std::memcpy(static_cast<void*>(&span), &bits, sizeof(span));
    return span;
  }

  absl::Status Metric(Reader& outer) {
    const int index = out_->size();
    uint32_t len;
    Reader in(nullptr, nullptr);
    if (!outer.Length(&len) || !outer.Sub(len, &in)) return Truncated(index);
    Scratch& s = scratch_;
    s.entries.clear();
    s.labels.clear();
    s.unchecked.clear();
    // Built in place: copying it from the stack would read what was just
    // written field by field (see MakeSpan).
    SampleRec& sample = out_->samples_.emplace_back();
    Span name;
    int names = 0;
    // Where the first label entry's tag starts, and whether every field from
    // there to the end of the sample is a label entry (its "label tail").
    const uint8_t* tail_at = nullptr;
    bool tail_only_labels = true;
    while (!in.AtEnd()) {
      const uint8_t* field_at = in.position();
      uint32_t tag;
      if (!in.Tag(&tag)) return Fail(index, Truncated(index));
      const uint32_t field = tag >> 3;
      const int type = static_cast<int>(tag & 7);
      if (type == kEndGroup) return Fail(index, Truncated(index));
      if (field == 1 && type == kLengthDelimited) {
        if (!String(in, &name)) return Fail(index, Truncated(index));
        s.unchecked.push_back(name);
        ++names;
      } else if (field == 2 && type == kFixed64) {
        uint64_t bits;
        if (!in.Fixed64(&bits)) return Fail(index, Truncated(index));
        static_assert(sizeof(double) == sizeof(uint64_t));
        std::memcpy(&sample.value, &bits, sizeof(bits));
      } else if (field == 3 && type == kLengthDelimited) {
        if (!Timestamp(in, &sample)) return Fail(index, Truncated(index));
      } else if (field == 4 && type == kLengthDelimited) {
        if (tail_at == nullptr) {
          tail_at = field_at;
          if (names <= 1) {
            const Span tail =
                MakeSpan(field_at, static_cast<uint32_t>(in.end() - field_at));
            if (const Tail* seen = FindTail(name, tail)) {
              // Byte for byte the label tail of an earlier sample with the
              // same name, which passed every check: its series.
              sample.series = seen->series;
              return absl::OkStatus();
            }
          }
        }
        if (static_cast<int64_t>(s.labels.size()) >= max_labels_) {
          return Fail(index, absl::InvalidArgumentError(
                                 absl::StrCat("metric ", index, ": more than ",
                                              max_labels_, " labels")));
        }
        // A truncated entry is reported as such even when a string before
        // the truncation in it is not UTF-8 (as the generated parser does).
        const size_t unchecked = s.unchecked.size();
        Entry& entry = s.entries.emplace_back();
        LabelRec& label = s.labels.emplace_back();
        if (!Label(in, &entry.raw, &label)) {
          s.unchecked.resize(unchecked);
          return Fail(index, Truncated(index));
        }
      } else if (!SkipField(in, tag, kRecursionLimit - 1)) {
        return Fail(index, Truncated(index));
      }
      if (tail_at != nullptr && !(field == 4 && type == kLengthDelimited)) {
        tail_only_labels = false;
      }
    }
    // Later samples with this name and these tail bytes take its series.
    const bool remember_tail =
        tail_at != nullptr && tail_only_labels && names <= 1;
    const Span tail =
        remember_tail
            ? MakeSpan(tail_at, static_cast<uint32_t>(in.end() - tail_at))
            : Span{};
    // A repeated name field keeps its last value, so the others would not be
    // part of the key.
    bool shareable = names <= 1 && s.entries.size() <= kMaxSharedEntries;
    uint64_t hash = 0;
    if (shareable) {
      hash = Hash(name);
      if (const Known* known = Find(hash, name, &shareable)) {
        // The same bytes as a sample that passed every check below.
        sample.series = known->series;
        if (remember_tail) RememberTail(name, tail, sample.series);
        return absl::OkStatus();
      }
    }
    if (!AllUtf8()) return NotUtf8(index);
    const uint32_t begin = static_cast<uint32_t>(out_->labels_.size());
    out_->labels_.insert(out_->labels_.end(), s.labels.begin(), s.labels.end());
    const bool repeated = out_->AddSeries(name, begin);
    sample.series = static_cast<uint32_t>(out_->series_.size() - 1);
    if (shareable && !repeated) Remember(hash, name, sample.series);
    // Equal bytes parse the same way, repeated keys or not.
    if (remember_tail) RememberTail(name, tail, sample.series);
    return absl::OkStatus();
  }

  static uint64_t TailHash(absl::string_view name, absl::string_view tail) {
    return HashBytes(tail) ^ (HashBytes(name) * 0x9e3779b97f4a7c15u);
  }

  // The remembered label tail with these name and tail bytes, or null. Looks
  // at SlotTable::kMaxProbes slots at most.
  const Tail* FindTail(Span name, Span tail) const {
    const absl::string_view tail_bytes = out_->View(tail);
    const absl::string_view name_bytes = out_->View(name);
    const uint64_t hash = TailHash(name_bytes, tail_bytes);
    const int64_t found = scratch_.tail_slots.Find(hash, [&](size_t i) {
      const Tail& t = scratch_.tails[i];
      return t.hash == hash && SameBytes(out_->View(t.tail), tail_bytes) &&
             SameBytes(out_->View(t.name), name_bytes);
    });
    return found >= 0 ? &scratch_.tails[found] : nullptr;
  }

  // Lets later samples with these name and label tail bytes take `series`.
  // A tail already remembered, or one whose probe run is full, is left out.
  void RememberTail(Span name, Span tail, uint32_t series) {
    Scratch& s = scratch_;
    if (s.tails.size() >= kMaxTails) return;
    const uint64_t hash = TailHash(out_->View(name), out_->View(tail));
    if (2 * (s.tails.size() + 1) > s.tail_slots.size()) {
      s.tail_slots.Reset(2 * s.tail_slots.size());
      for (size_t i = 0; i < s.tails.size(); ++i) {
        s.tail_slots.Place(s.tails[i].hash, i);
      }
    }
    s.tails.push_back({hash, name, tail, series});
    if (!s.tail_slots.Place(hash, s.tails.size() - 1)) s.tails.pop_back();
  }

  // Every occurrence of a string field is checked, as the generated parser
  // does, not only the one that is kept.
  static absl::Status NotUtf8(int index) {
    return absl::InvalidArgumentError(
        absl::StrCat("metric ", index, ": a string is not UTF-8"));
  }

  static absl::Status Truncated(int index) {
    return Malformed(
        absl::StrCat("metric ", index, " is truncated or invalid"));
  }

  // Whether the strings read so far in the sample are UTF-8.
  bool AllUtf8() const {
    for (const Span& span : scratch_.unchecked) {
      if (!IsValidUtf8(out_->View(span))) return false;
    }
    return true;
  }

  // `error`, found at some point of sample `index`, unless a string before
  // it is not UTF-8: the checks are deferred (a shared sample skips them),
  // the error reported is the first on the wire.
  absl::Status Fail(int index, absl::Status error) const {
    return AllUtf8() ? error : NotUtf8(index);
  }

  // The key of the sample's label set: its name and the multiset of its
  // entries (a commutative sum of their hashes). Sets every entry's hash.
  uint64_t Hash(Span name) {
    uint64_t sum = 0;
    for (Entry& e : scratch_.entries) {
      e.hash = HashBytes(out_->View(e.raw));
      sum += e.hash;
    }
    return HashBytes(out_->View(name)) ^ (sum * 0x9e3779b97f4a7c15u);
  }

  // The shared series with the sample's name and entries, or null. Looks
  // at SlotTable::kMaxProbes slots at most, so that label sets made to collide
  // cost little: when it gives up, clears `*remember` (the sample's series
  // would not be found either).
  const Known* Find(uint64_t hash, Span name, bool* remember) const {
    const int64_t found = scratch_.slots.Find(hash, [&](size_t i) {
      const Known& k = scratch_.known[i];
      return k.hash == hash && Same(k, name);
    });
    if (found == SlotTable::kGaveUp) *remember = false;
    return found >= 0 ? &scratch_.known[found] : nullptr;
  }

  // Whether `k` has the sample's name and, entry for entry in some order,
  // its entries.
  bool Same(const Known& k, Span name) const {
    const std::vector<Entry>& ours = scratch_.entries;
    const size_t n = ours.size();
    if (k.entries_count != n ||
        !SameBytes(out_->View(k.name), out_->View(name))) {
      return false;
    }
    const Entry* theirs = scratch_.known_entries.data() + k.entries_begin;
    uint64_t used = 0;
    for (size_t j = 0; j < n; ++j) {
      // Senders often keep an order: try the same position first.
      bool found = false;
      for (size_t step = 0; step < n && !found; ++step) {
        const size_t m = j + step < n ? j + step : j + step - n;
        if ((used >> m & 1) == 0 && theirs[m].hash == ours[j].hash &&
            SameBytes(out_->View(theirs[m].raw), out_->View(ours[j].raw))) {
          used |= uint64_t{1} << m;
          found = true;
        }
      }
      if (!found) return false;
    }
    return true;
  }

  // Shares `series` (the sample's, just added) with later equal samples.
  void Remember(uint64_t hash, Span name, uint32_t series) {
    Scratch& s = scratch_;
    s.known.push_back({hash, name,
                       static_cast<uint32_t>(s.known_entries.size()),
                       static_cast<uint32_t>(s.entries.size()), series});
    s.known_entries.insert(s.known_entries.end(), s.entries.begin(),
                           s.entries.end());
    if (2 * s.known.size() > s.slots.size()) {
      s.slots.Reset(2 * s.slots.size());
      for (size_t i = 0; i < s.known.size(); ++i) {
        s.slots.Place(s.known[i].hash, i);
      }
    } else {
      s.slots.Place(hash, s.known.size() - 1);
    }
  }

  // google.protobuf.Timestamp, merged into what an earlier occurrence set.
  bool Timestamp(Reader& outer, SampleRec* sample) {
    uint32_t len;
    Reader in(nullptr, nullptr);
    if (!outer.Length(&len) || !outer.Sub(len, &in)) return false;
    sample->has_timestamp = true;
    while (!in.AtEnd()) {
      uint32_t tag;
      if (!in.Tag(&tag)) return false;
      const uint32_t field = tag >> 3;
      const int type = static_cast<int>(tag & 7);
      if (type == kEndGroup) return false;
      uint64_t v;
      if (field == 1 && type == kVarint) {
        if (!in.Varint(&v)) return false;
        sample->seconds = static_cast<int64_t>(v);
      } else if (field == 2 && type == kVarint) {
        if (!in.Varint(&v)) return false;
        sample->nanos = static_cast<int32_t>(v);
      } else if (!SkipField(in, tag, kRecursionLimit - 2)) {
        return false;
      }
    }
    return true;
  }

  // A map<string, string> entry: key = 1, value = 2, both default "". Sets
  // `*raw` to the entry's bytes; every occurrence of the key and the value
  // goes to the unchecked strings.
  bool Label(Reader& outer, Span* raw, LabelRec* label) {
    uint32_t len;
    Reader in(nullptr, nullptr);
    if (!outer.Length(&len)) return false;
    *raw = MakeSpan(outer.position(), len);
    if (!outer.Sub(len, &in)) return false;
    while (!in.AtEnd()) {
      uint32_t tag;
      if (!in.Tag(&tag)) return false;
      const uint32_t field = tag >> 3;
      const int type = static_cast<int>(tag & 7);
      if (type == kEndGroup) return false;
      if (field == 1 && type == kLengthDelimited) {
        if (!String(in, &label->name)) return false;
        scratch_.unchecked.push_back(label->name);
      } else if (field == 2 && type == kLengthDelimited) {
        if (!String(in, &label->value)) return false;
        scratch_.unchecked.push_back(label->value);
      } else if (!SkipField(in, tag, kRecursionLimit - 2)) {
        return false;
      }
    }
    return true;
  }

  MetricSamples* const out_;
  const uint8_t* const base_;
  const int max_labels_;
  Scratch& scratch_;
};

absl::StatusOr<MetricSamples> MetricSamples::Parse(std::string bytes,
                                                   int max_labels) {
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return absl::InvalidArgumentError("metrics batch over 2 GiB");
  }
  MetricSamples out;
  out.wire_bytes_ = bytes.size();
  out.bytes_ = std::move(bytes);
  // A sample takes at least 2 bytes on the wire (an empty Metric); a batch
  // has far fewer series than samples.
  const size_t samples = out.bytes_.size() / 64;
  out.samples_.reserve(samples);
  out.series_.reserve(std::min<size_t>(samples, 64));
  out.labels_.reserve(std::min<size_t>(samples, 64) * 4);
  Parser parser(&out, max_labels);
  absl::Status s = parser.Batch();
  if (!s.ok()) return s;
  return out;
}

MetricSamples MetricSamples::FromProto(const v1::MetricsBatch& batch) {
  MetricSamples out;
  out.wire_bytes_ = batch.ByteSizeLong();
  size_t text = 0;
  size_t labels = 0;
  for (const v1::Metric& m : batch.metrics()) {
    text += m.name().size();
    labels += m.labels().size();
    for (const auto& [k, v] : m.labels()) text += k.size() + v.size();
  }
  out.bytes_.reserve(text);
  out.samples_.reserve(batch.metrics_size());
  out.series_.reserve(batch.metrics_size());
  out.labels_.reserve(labels);
  for (const v1::Metric& m : batch.metrics()) out.Append(m);
  return out;
}

void MetricSamples::Append(const v1::Metric& metric) {
  SampleRec s;
  s.value = metric.value();
  s.has_timestamp = metric.has_timestamp();
  s.seconds = metric.timestamp().seconds();
  s.nanos = metric.timestamp().nanos();
  const Span name = AppendBytes(metric.name());
  const uint32_t begin = static_cast<uint32_t>(labels_.size());
  for (const auto& [k, v] : metric.labels()) {
    labels_.push_back({AppendBytes(k), AppendBytes(v)});
  }
  AddSeries(name, begin);
  s.series = static_cast<uint32_t>(series_.size() - 1);
  samples_.push_back(s);
}

v1::MetricsBatch MetricSamples::ToProto() const {
  v1::MetricsBatch batch;
  for (int i = 0; i < size(); ++i) {
    v1::Metric* m = batch.add_metrics();
    m->set_name(std::string(name(i)));
    m->set_value(value(i));
    if (has_timestamp(i)) {
      m->mutable_timestamp()->set_seconds(timestamp_seconds(i));
      m->mutable_timestamp()->set_nanos(timestamp_nanos(i));
    }
    for (int j = 0; j < label_count(i); ++j) {
      LabelView l = label(i, j);
      (*m->mutable_labels())[std::string(l.name)] = std::string(l.value);
    }
  }
  return batch;
}

int64_t MetricSamples::timestamp_millis(int i) const {
  const SampleRec& s = samples_[i];
  // Floor division, so that times before 1970 round down as well.
  int64_t ms = s.seconds * 1000;
  int64_t sub = s.nanos / 1'000'000;
  if (s.nanos < 0 && s.nanos % 1'000'000 != 0) --sub;
  return ms + sub;
}

std::optional<absl::string_view> MetricSamples::FindLabel(
    int i, absl::string_view name) const {
  for (int j = 0; j < label_count(i); ++j) {
    LabelView l = label(i, j);
    if (l.name == name) return l.value;
  }
  return std::nullopt;
}

void MetricSamples::SetTimestamp(int i, int64_t seconds, int32_t nanos) {
  SampleRec& s = samples_[i];
  s.has_timestamp = true;
  s.seconds = seconds;
  s.nanos = nanos;
}

bool MetricSamples::EraseSeriesLabel(int series, absl::string_view name) {
  SeriesRec& s = series_[series];
  auto begin = labels_.begin() + s.labels_begin;
  auto end = begin + s.labels_count;
  auto it = std::find_if(
      begin, end, [&](const LabelRec& l) { return View(l.name) == name; });
  if (it == end) return false;
  // The series' range shrinks; the freed slot stays unused at its end.
  std::move(it + 1, end, it);
  --s.labels_count;
  return true;
}

size_t MetricSamples::MemoryBytes() const {
  return bytes_.capacity() + samples_.capacity() * sizeof(SampleRec) +
         series_.capacity() * sizeof(SeriesRec) +
         labels_.capacity() * sizeof(LabelRec);
}

MetricSamples::Span MetricSamples::AppendBytes(absl::string_view s) {
  Span span{static_cast<uint32_t>(bytes_.size()),
            static_cast<uint32_t>(s.size())};
  bytes_.append(s.data(), s.size());
  return span;
}

bool MetricSamples::AddSeries(Span name, uint32_t labels_begin) {
  const uint32_t count = static_cast<uint32_t>(labels_.size()) - labels_begin;
  series_.push_back({name, labels_begin, count});
  if (count < 2) return false;
  auto begin = labels_.begin() + labels_begin;
  auto end = labels_.end();
  // Insertion sort: a handful of labels, often already in order, no
  // allocation. Stable, so equal names keep their wire order and the last one
  // wins below.
  for (auto it = begin + 1; it != end; ++it) {
    LabelRec moving = *it;
    const absl::string_view key = View(moving.name);
    auto hole = it;
    while (hole != begin && key < View((hole - 1)->name)) {
      *hole = *(hole - 1);
      --hole;
    }
    *hole = moving;
  }
  auto out = begin;
  for (auto it = begin; it != end; ++it) {
    if (it + 1 != end && View((it + 1)->name) == View(it->name)) continue;
    *out++ = *it;
  }
  if (out == end) return false;
  labels_.erase(out, end);
  series_.back().labels_count =
      static_cast<uint32_t>(labels_.size()) - labels_begin;
  return true;
}

bool operator==(const MetricSamples& a, const MetricSamples& b) {
  if (a.size() != b.size()) return false;
  for (int i = 0; i < a.size(); ++i) {
    const double av = a.value(i);
    const double bv = b.value(i);
    if (a.name(i) != b.name(i) || std::memcmp(&av, &bv, sizeof(av)) != 0 ||
        a.has_timestamp(i) != b.has_timestamp(i) ||
        a.timestamp_seconds(i) != b.timestamp_seconds(i) ||
        a.timestamp_nanos(i) != b.timestamp_nanos(i) ||
        a.label_count(i) != b.label_count(i)) {
      return false;
    }
    for (int j = 0; j < a.label_count(i); ++j) {
      LabelView x = a.label(i, j);
      LabelView y = b.label(i, j);
      if (x.name != y.name || x.value != y.value) return false;
    }
  }
  return true;
}

absl::StatusOr<MetricsRequestWire> MetricsRequestWire::Split(
    absl::string_view request) {
  auto malformed = [](absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed SyncMetricsRequest: ", what));
  };
  if (request.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return malformed("over 2 GiB");
  }
  MetricsRequestWire out;
  const auto* base = reinterpret_cast<const uint8_t*>(request.data());
  Reader in(base, base + request.size());
  // The batch's pieces (usually one), each read as a message of its own (as
  // the generated parser does), then appended.
  std::vector<absl::string_view> pieces;
  while (!in.AtEnd()) {
    uint32_t tag;
    if (!in.Tag(&tag)) return malformed("invalid tag");
    const int type = static_cast<int>(tag & 7);
    if (type == kEndGroup) return malformed("unexpected end of group");
    const uint32_t field = tag >> 3;
    if ((field == 1 || field == 2) && type == kLengthDelimited) {
      uint32_t len;
      Reader sub(nullptr, nullptr);
      if (!in.Length(&len) || !in.Sub(len, &sub)) {
        return malformed(field == 1 ? "truncated metadata" : "truncated batch");
      }
      const char* data = reinterpret_cast<const char*>(sub.position());
      if (field == 2) {
        pieces.emplace_back(data, len);
      } else if (!out.metadata.MergeFromString(std::string(data, len))) {
        return malformed("metadata is not a valid SyncMetadata");
      }
    } else if (!SkipField(in, tag, kRecursionLimit)) {
      return malformed("truncated or invalid field");
    }
  }

  size_t piece_offset = 0;
  for (absl::string_view piece : pieces) {
    const auto* p = reinterpret_cast<const uint8_t*>(piece.data());
    Reader b(p, p + piece.size());
    while (!b.AtEnd()) {
      uint32_t tag;
      if (!b.Tag(&tag)) return malformed("invalid tag in batch");
      const int type = static_cast<int>(tag & 7);
      if (type == kEndGroup) {
        return malformed("unexpected end of group in batch");
      }
      const uint32_t field = tag >> 3;
      if (field >= 1 && field <= 3 && type == kLengthDelimited) {
        uint32_t len;
        Reader sub(nullptr, nullptr);
        if (!b.Length(&len) || !b.Sub(len, &sub)) {
          return malformed("truncated field in batch");
        }
        const absl::string_view value(
            reinterpret_cast<const char*>(sub.position()), len);
        if (field == 1) {
          ++out.records;
        } else if (field == 2) {
          if (!IsValidUtf8(value)) {
            return malformed("compression is not UTF-8");
          }
          out.compression.assign(value.data(), value.size());
        } else {
          out.compressed_offset =
              piece_offset + static_cast<size_t>(sub.position() - p);
          out.compressed_size = len;
        }
      } else if (field == 4 && type == kVarint) {
        uint64_t v;
        if (!b.Varint(&v)) return malformed("truncated original_size");
        out.original_size = static_cast<int32_t>(static_cast<uint32_t>(v));
      } else if (!SkipField(b, tag, kRecursionLimit - 1)) {
        return malformed("truncated or invalid field in batch");
      }
    }
    piece_offset += piece.size();
  }
  if (pieces.size() == 1) {
    out.batch.assign(pieces[0].data(), pieces[0].size());
  } else {
    out.batch.reserve(piece_offset);
    for (absl::string_view piece : pieces) {
      out.batch.append(piece.data(), piece.size());
    }
  }
  return out;
}

}  // namespace fleetd::server
