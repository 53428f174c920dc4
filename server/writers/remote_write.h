// Prometheus remote write (protocol 1.0) for metrics batches: the body of
// `POST <receiver>/api/v1/write` (VictoriaMetrics, Prometheus with
// --web.enable-remote-write-receiver, vminsert, Mimir, ...), encoded straight
// from DecodedBatch without building protobuf message objects.
//
// The body is a prometheus.WriteRequest (timeseries = 1; TimeSeries: labels =
// 1, samples = 2; Label: name = 1, value = 2; Sample: value = 1 double,
// timestamp = 2 int64 ms), snappy block-compressed (not framed). Send it with
// the headers of kRemoteWriteHeaders.
#ifndef FLEETD_SERVER_WRITERS_REMOTE_WRITE_H_
#define FLEETD_SERVER_WRITERS_REMOTE_WRITE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "fleetd/v1/sync.pb.h"
#include "server/model/batch.h"

namespace fleetd::server {

// The request headers remote write requires.
inline constexpr std::pair<const char*, const char*> kRemoteWriteHeaders[] = {
    {"Content-Encoding", "snappy"},
    {"Content-Type", "application/x-protobuf"},
    {"X-Prometheus-Remote-Write-Version", "0.1.0"},
};

// Encodes the samples of metrics batches as one remote-write request.
//
// What the request holds, for every sample of every batch whose kind is
// kMetrics (batches of other kinds are skipped):
//   - labels: __name__ (the metric name), every label of the metric, and
//     device_id and org_id from the batch identity (DecodedBatch::device). The
//     identity wins: a metric label named device_id or org_id, or starting
//     with "__", is left out (decoding already refuses or drops those). A
//     label with an empty value is left out, as receivers treat it as absent.
//     Labels are sorted by name, bytewise, as remote write requires (so an
//     upper-case name sorts before __name__). Values are written verbatim:
//     protobuf needs no escaping (quotes, backslashes, newlines, any UTF-8).
//   - one TimeSeries per distinct label set across all batches, in the order
//     of the first sample of each; its samples in timestamp order (equal
//     timestamps in the order they appear in the batches).
//   - timestamps in milliseconds since the epoch (rounded down), values
//     as doubles.
// The output is a pure function of the batches' content, so a retried write
// produces the same series, timestamps and values, which a deduplicating
// receiver keeps once.
//
// Cost: no heap allocation per sample or series. Scratch space (the grouping
// table, the uncompressed request) lives in the encoder and only grows, and
// the caller's body keeps its capacity between calls; snappy allocates its
// working memory once per call. Scratch is not zeroed before use. Labels are
// hashed and compared once per series of each batch, sorted and checked once
// per series of the request.
//
// Not thread-safe: use one encoder per concurrent caller (keep a pool).
class RemoteWriteEncoder {
 public:
  RemoteWriteEncoder() = default;
  RemoteWriteEncoder(const RemoteWriteEncoder&) = delete;
  RemoteWriteEncoder& operator=(const RemoteWriteEncoder&) = delete;

  // Replaces the content of `*body` with the compressed request (reusing its
  // capacity); leaves it empty when the batches hold no sample. Fails with
  // INVALID_ARGUMENT naming the sample when a metric name, label name or label
  // value or the batch identity is not valid UTF-8 (receivers refuse the whole
  // request then; decoding should have refused it already); `*body` is empty
  // then.
  absl::Status Encode(absl::Span<const DecodedBatch* const> batches,
                      std::string* body);

  // The uncompressed WriteRequest of the last successful Encode (for tests and
  // benchmarks). Valid until the next call.
  absl::string_view uncompressed() const {
    return absl::string_view(raw_.data(), raw_size_);
  }
  // Series and samples of the last successful Encode.
  size_t series_count() const { return series_.size(); }
  size_t sample_count() const { return samples_.size(); }

 private:
  // A sample, by where it is in the batches.
  struct Sample {
    double value;
    int64_t ms;
    uint32_t series;
    uint32_t position;  // in the flush: orders equal timestamps
  };
  // A distinct label set, by its first sample.
  struct Series {
    const DecodedBatch* batch;
    int index;  // of the first sample, in batch->metrics
    size_t hash;
    uint32_t labels;      // how many are written
    uint32_t samples;     // how many samples
    size_t label_bytes;   // the labels fields of the TimeSeries
    size_t sample_bytes;  // the samples fields of the TimeSeries
    uint32_t first;       // into grouped_
  };

  // The index in series_ of the series of sample `index` of `batch`, adding
  // it when new.
  uint32_t FindOrAddSeries(const DecodedBatch& batch, int index);
  // Forgets the last request (its capacity stays).
  void Clear();
  // Checks a new series' strings and puts its labels, sorted, in labels_.
  absl::Status SortedLabels(const Series& series);

  std::vector<Sample> samples_;
  std::vector<Sample> grouped_;  // samples_ grouped by series
  std::vector<Series> series_;
  std::vector<uint32_t> slots_;  // open addressing: series index + 1, 0 empty
  // The series_ index of each series of the batch being read, or kNoSeries.
  static constexpr uint32_t kNoSeries = ~uint32_t{0};
  std::vector<uint32_t> batch_series_;
  std::vector<std::pair<absl::string_view, absl::string_view>> labels_;
  // The uncompressed request is raw_'s first raw_size_ bytes; raw_ and
  // compressed_ (snappy's output) only grow.
  std::string raw_;
  size_t raw_size_ = 0;
  std::string compressed_;
};

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_WRITERS_REMOTE_WRITE_H_
