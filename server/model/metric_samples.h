// The metric samples of one device batch in flat form, read straight from the
// protobuf wire encoding of a fleetd.v1.MetricsBatch.
//
// Why not the generated v1::MetricsBatch: parsing it costs about 550 ns per
// sample on a 2-core EPYC (every Metric, Timestamp, map node and long string is
// its own heap allocation, freed again after the write), more than vmagent
// spends on a sample end to end. Here a batch is one byte buffer (the
// decompressed batch as received) plus three arrays: samples, series (a name
// and a range of labels) and labels, which point into the buffer. Parsing
// allocates three times per batch (more only past 64 series), not per sample.
//
// Samples of one series share its name and sorted labels: a batch carries
// each series many times (a 1,000-sample batch of the load generator has 23
// series), every sample with its full label map, so label work (UTF-8
// checks, sorting, validation, remote-write grouping) is done once per series
// instead of once per sample.
#ifndef FLEETD_SERVER_MODEL_METRIC_SAMPLES_H_
#define FLEETD_SERVER_MODEL_METRIC_SAMPLES_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fleetd/v1/sync.pb.h"

namespace fleetd::server {

// One label of a sample; views into the owning MetricSamples, valid until it
// is changed, moved or destroyed.
struct LabelView {
  absl::string_view name;
  absl::string_view value;
};

// A serialized fleetd.v1.SyncMetricsRequest taken apart the way the generated
// parser reads it, without reading the samples: the metadata's bytes, and the
// batch's bytes and its scalar fields. For decoding a request straight from
// what was received (server/core/decode.h DecodeMetricsWire), so an
// uncompressed batch's samples are read by MetricSamples::Parse instead of
// becoming message objects.
struct MetricsRequestWire {
  // Field 1, every occurrence parsed in wire order (merged) by the generated
  // parser.
  v1::SyncMetadata metadata;
  // Field 2: every occurrence's bytes in wire order, concatenated, each
  // checked to be a whole message on its own (its fields complete), so the
  // concatenation reads as the generated parser merges them.
  std::string batch;
  // Of the batch, the last occurrence of each scalar field (as the generated
  // parser keeps): compression (2), compressed_data (3, as its place in
  // `batch`) and original_size (4); and how many metrics entries (field 1)
  // it carries on the wire.
  std::string compression;
  size_t compressed_offset = 0;
  size_t compressed_size = 0;
  int32_t original_size = 0;
  int records = 0;

  // Empty when there is none (also once `batch` has been moved from).
  absl::string_view compressed_data() const {
    if (compressed_size == 0) return {};
    return absl::string_view(batch).substr(compressed_offset, compressed_size);
  }

  // Accepts what the generated parser accepts for these fields (unknown
  // fields and groups skipped, wire-type mismatches treated as unknown,
  // compression must be UTF-8); anything else is InvalidArgument. The
  // batch's metrics entries are not looked into (MetricSamples::Parse does).
  static absl::StatusOr<MetricsRequestWire> Split(absl::string_view request);
};

class MetricSamples {
 public:
  MetricSamples() = default;

  // Reads a serialized MetricsBatch, keeping `bytes` as the storage the
  // samples point into. Accepts exactly what the generated parser accepts for
  // fields 1 (metrics) and 3 (compressed_data), with these differences, each
  // an InvalidArgument naming the record:
  //   - a non-empty compressed_data (field 3) is refused: a decompressed batch
  //     must carry its records, not another compressed layer;
  //   - a sample with more than `max_labels` label entries on the wire
  //     (counting repeated keys) is refused, which bounds the work per sample;
  // Like the generated parser: unknown fields are skipped, groups included
  // (as deeply nested as its recursion limit allows); tags and lengths over
  // five bytes are refused; strings (names, label names and values,
  // compression) must be UTF-8; a field repeated on the wire keeps its last
  // value; a repeated label key keeps its last value; a repeated timestamp is
  // merged field by field; a field whose wire type does not match its
  // declaration is treated as unknown. Fields 2 and 4 (compression,
  // original_size) are read and ignored.
  // Labels of each sample come out sorted by name and unique.
  // Series: samples whose name field and label entries are the same bytes,
  // entries in any order, share one series (see series()). A sample whose
  // name field is repeated, or whose label keys repeat, gets a series of its
  // own (which entry wins then depends on their order), as may one with over
  // 64 label entries; except that samples with one name field whose label
  // entries come last, after every other field, in the same bytes as an
  // earlier such sample's (same order, so the same entries win), share that
  // sample's series, repeated keys or not. Such a sample's label entries are
  // not read again: a sender that writes name, value and timestamp first (as
  // protobuf encoders do, in field number order) costs one hash and one
  // comparison of its label bytes per sample.
  // Error messages do not depend on the sharing: they name the first
  // offending sample, and within it a string that is not UTF-8 wins over any
  // error after it on the wire.
  static absl::StatusOr<MetricSamples> Parse(std::string bytes, int max_labels);

  // The samples of an already parsed message (copies every string; labels
  // sorted as by Parse). Every sample is a series of its own. For
  // uncompressed batches and tests.
  static MetricSamples FromProto(const v1::MetricsBatch& batch);
  // Appends one sample from a message (copies its strings; labels sorted), as
  // a new series.
  void Append(const v1::Metric& metric);
  // The samples as a message (labels in name order). For tests and writers
  // that want the generated type.
  v1::MetricsBatch ToProto() const;

  int size() const { return static_cast<int>(samples_.size()); }
  bool empty() const { return samples_.empty(); }

  // The series of sample i, in [0, series_count()): samples of one series
  // have the same name and labels (the converse need not hold). Series are
  // numbered in the order of their first sample, so sample i is the first of
  // its series exactly when series(i) is greater than every series(k), k < i.
  int series(int i) const { return static_cast<int>(samples_[i].series); }
  int series_count() const { return static_cast<int>(series_.size()); }

  absl::string_view name(int i) const { return View(SeriesOf(i).name); }
  double value(int i) const { return samples_[i].value; }
  bool has_timestamp(int i) const { return samples_[i].has_timestamp; }
  int64_t timestamp_seconds(int i) const { return samples_[i].seconds; }
  int32_t timestamp_nanos(int i) const { return samples_[i].nanos; }
  // Milliseconds since the Unix epoch, rounded down (remote write's unit).
  int64_t timestamp_millis(int i) const;
  int label_count(int i) const {
    return static_cast<int>(SeriesOf(i).labels_count);
  }
  // Label `j` (0 <= j < label_count(i)) of sample `i`, in name order.
  LabelView label(int i, int j) const {
    const LabelRec& l = labels_[SeriesOf(i).labels_begin + j];
    return {View(l.name), View(l.value)};
  }
  // The value of sample i's label `name`, if it has one.
  std::optional<absl::string_view> FindLabel(int i,
                                             absl::string_view name) const;

  void SetTimestamp(int i, int64_t seconds, int32_t nanos);
  // Removes the label `name` of every sample of `series`; false if they had
  // none.
  bool EraseSeriesLabel(int series, absl::string_view name);

  // Bytes held: the buffer and the arrays (for queue accounting).
  size_t MemoryBytes() const;
  // Size of the wire encoding the samples were parsed from (FromProto: the
  // message's ByteSizeLong at the time).
  size_t wire_bytes() const { return wire_bytes_; }

  friend bool operator==(const MetricSamples& a, const MetricSamples& b);

 private:
  // A string in `bytes_`.
  struct Span {
    uint32_t offset = 0;
    uint32_t size = 0;
  };
  struct LabelRec {
    Span name;
    Span value;
  };
  // A name and its labels: labels_[labels_begin, labels_begin + labels_count),
  // sorted by name and unique.
  struct SeriesRec {
    Span name;
    uint32_t labels_begin = 0;
    uint32_t labels_count = 0;
  };
  struct SampleRec {
    double value = 0;
    int64_t seconds = 0;
    int32_t nanos = 0;
    bool has_timestamp = false;
    uint32_t series = 0;  // into series_
  };
  class Parser;

  absl::string_view View(Span s) const {
    return absl::string_view(bytes_.data() + s.offset, s.size);
  }
  const SeriesRec& SeriesOf(int i) const { return series_[samples_[i].series]; }
  Span AppendBytes(absl::string_view s);
  // Adds a series named `name` whose labels are labels_[labels_begin, end)
  // in wire order: sorts them by name, keeping the last of equal names.
  // Returns whether any name was repeated.
  bool AddSeries(Span name, uint32_t labels_begin);

  std::string bytes_;
  std::vector<SampleRec> samples_;
  std::vector<SeriesRec> series_;
  std::vector<LabelRec> labels_;
  size_t wire_bytes_ = 0;
};

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_MODEL_METRIC_SAMPLES_H_
