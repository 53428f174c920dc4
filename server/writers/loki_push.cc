#include "server/writers/loki_push.h"

#include <algorithm>
#include <cstdint>
#include <exception>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "loki/push.pb.h"
#include "nlohmann/json.hpp"
#include "snappy.h"

namespace fleetd::server {
namespace {

// Loki keeps timestamps as int64 nanoseconds since the epoch (years
// 1677..2262); anything outside cannot be pushed.
constexpr int64_t kMinLokiSeconds = -9'223'372'035;
constexpr int64_t kMaxLokiSeconds = 9'223'372'035;

// Appends `value` as a double-quoted Go string literal, the syntax Loki's label
// parser (PromQL's lexer plus strconv-style unquoting) reads back exactly:
// backslash and double quote are escaped, ASCII control characters use Go's
// escapes (\n, \t, ... or \xNN), everything else, including multi-byte UTF-8,
// is copied as is. A raw newline would end the string, so it must never
// appear unescaped.
void AppendQuoted(absl::string_view value, std::string* out) {
  out->push_back('"');
  for (const char c : value) {
    switch (c) {
      case '\\':
        out->append("\\\\");
        break;
      case '"':
        out->append("\\\"");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      case '\a':
        out->append("\\a");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      case '\v':
        out->append("\\v");
        break;
      default: {
        const unsigned char u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) {
          absl::StrAppendFormat(out, "\\x%02x", u);
        } else {
          out->push_back(c);
        }
      }
    }
  }
  out->push_back('"');
}

using Labels = std::vector<std::pair<std::string, std::string>>;

// `{a="x", b="y"}` from labels sorted by name; empty values are left out.
std::string LabelText(const Labels& labels) {
  std::string out = "{";
  for (const auto& [name, value] : labels) {
    if (value.empty()) continue;
    if (out.size() > 1) out.append(", ");
    out.append(name);
    out.push_back('=');
    AppendQuoted(value, &out);
  }
  out.push_back('}');
  return out;
}

struct Entry {
  int64_t seconds = 0;
  int32_t nanos = 0;
  const std::string* line = nullptr;
  Labels metadata;  // Sorted by name.
};

struct Stream {
  Labels labels;  // Non-empty values only, sorted by name.
  std::vector<Entry> entries;
};

// Keyed by the label text, so streams come out in a deterministic order.
using Streams = std::map<std::string, Stream>;

absl::StatusOr<Streams> GroupByStream(
    absl::Span<const DecodedBatch* const> batches) {
  Streams streams;
  for (const DecodedBatch* b : batches) {
    if (b->kind != DataKind::kLogs) continue;
    for (const v1::LogEntry& e : b->logs.logs()) {
      // Sorted by name; decoding already refused device_id/org_id that
      // disagree with the key and removed them from the fields.
      Labels labels = {{"device_id", b->device.device_id},
                       {"level", e.level()},
                       {"org_id", b->device.org_id},
                       {"source", e.source()}};
      labels.erase(
          std::remove_if(labels.begin(), labels.end(),
                         [](const auto& l) { return l.second.empty(); }),
          labels.end());
      std::string key = LabelText(labels);
      Stream& stream = streams[key];
      if (stream.labels.empty()) stream.labels = std::move(labels);

      Entry entry;
      entry.seconds = e.timestamp().seconds();
      entry.nanos = e.timestamp().nanos();
      if (entry.seconds < kMinLokiSeconds || entry.seconds > kMaxLokiSeconds) {
        return absl::InvalidArgumentError(
            absl::StrCat("log timestamp ", entry.seconds,
                         "s is outside the range Loki can store"));
      }
      entry.line = &e.message();
      entry.metadata.assign(e.fields().begin(), e.fields().end());
      std::sort(entry.metadata.begin(), entry.metadata.end());
      stream.entries.push_back(std::move(entry));
    }
  }
  for (auto& [key, stream] : streams) {
    std::stable_sort(stream.entries.begin(), stream.entries.end(),
                     [](const Entry& a, const Entry& b) {
                       return std::make_pair(a.seconds, a.nanos) <
                              std::make_pair(b.seconds, b.nanos);
                     });
  }
  return streams;
}

std::string ProtobufBody(const Streams& streams) {
  logproto::PushRequest request;
  for (const auto& [key, stream] : streams) {
    logproto::StreamAdapter* s = request.add_streams();
    s->set_labels(key);
    for (const Entry& e : stream.entries) {
      logproto::EntryAdapter* entry = s->add_entries();
      entry->mutable_timestamp()->set_seconds(e.seconds);
      entry->mutable_timestamp()->set_nanos(e.nanos);
      entry->set_line(*e.line);
      for (const auto& [name, value] : e.metadata) {
        logproto::LabelPairAdapter* kv = entry->add_structuredmetadata();
        kv->set_name(name);
        kv->set_value(value);
      }
    }
  }
  std::string raw;
  request.SerializeToString(&raw);
  std::string compressed;
  snappy::Compress(raw.data(), raw.size(), &compressed);
  return compressed;
}

// Throws nlohmann::json exceptions on strings that are not UTF-8.
std::string JsonBody(const Streams& streams) {
  nlohmann::json out_streams = nlohmann::json::array();
  for (const auto& [key, stream] : streams) {
    nlohmann::json labels = nlohmann::json::object();
    for (const auto& [name, value] : stream.labels) labels[name] = value;
    nlohmann::json values = nlohmann::json::array();
    for (const Entry& e : stream.entries) {
      // Unix nanoseconds as a decimal string; the range was checked above.
      nlohmann::json value = nlohmann::json::array(
          {std::to_string(e.seconds * 1'000'000'000 + e.nanos), *e.line});
      if (!e.metadata.empty()) {
        nlohmann::json metadata = nlohmann::json::object();
        for (const auto& [name, v] : e.metadata) metadata[name] = v;
        value.push_back(std::move(metadata));
      }
      values.push_back(std::move(value));
    }
    out_streams.push_back(
        {{"stream", std::move(labels)}, {"values", std::move(values)}});
  }
  nlohmann::json body = {{"streams", std::move(out_streams)}};
  return body.dump();
}

}  // namespace

absl::string_view LokiContentType(LokiFormat format) {
  return format == LokiFormat::kJson ? "application/json"
                                     : "application/x-protobuf";
}

absl::StatusOr<std::string> EncodeLokiPush(
    absl::Span<const DecodedBatch* const> batches, LokiFormat format) {
  absl::StatusOr<Streams> streams = GroupByStream(batches);
  if (!streams.ok()) return streams.status();
  if (streams->empty()) return std::string();
  if (format == LokiFormat::kProtobuf) return ProtobufBody(*streams);
  try {
    return JsonBody(*streams);
  } catch (const std::exception& e) {
    // Invalid UTF-8; protobuf decoding should have refused it already.
    return absl::InvalidArgumentError(
        absl::StrCat("cannot encode logs: ", e.what()));
  }
}

}  // namespace fleetd::server
