#include "common/metrics/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fleetd::metrics {
namespace {

void AtomicAdd(std::atomic<double>& target, double v) {
  double current = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(current, current + v,
                                       std::memory_order_relaxed)) {
  }
}

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15)
    return absl::StrFormat("%.0f", v);
  // The shortest form that reads back as the same double.
  for (int precision = 15; precision < 17; ++precision) {
    std::string text = absl::StrFormat("%.*g", precision, v);
    if (std::strtod(text.c_str(), nullptr) == v) return text;
  }
  return absl::StrFormat("%.17g", v);
}

std::string LabelSet(const std::vector<std::string>& names,
                     const std::vector<std::string>& values,
                     const std::string& extra = "") {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    absl::StrAppend(&out, out.empty() ? "" : ",", names[i], "=\"",
                    EscapeLabelValue(values[i]), "\"");
  }
  if (!extra.empty()) absl::StrAppend(&out, out.empty() ? "" : ",", extra);
  return out.empty() ? "" : absl::StrCat("{", out, "}");
}

std::string EscapeHelp(const std::string& help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

std::string EscapeLabelValue(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void Counter::Increment(double v) {
  if (v > 0) AtomicAdd(value_, v);
}

void Gauge::Add(double v) { AtomicAdd(value_, v); }

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i] = 0;
}

void Histogram::Observe(double v) {
  size_t i =
      std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, v);
}

uint64_t Histogram::CumulativeCount(size_t i) const {
  uint64_t total = 0;
  for (size_t b = 0; b <= i && b <= bounds_.size(); ++b) {
    total += buckets_[b].load(std::memory_order_relaxed);
  }
  return total;
}

std::vector<double> LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
          0.25,  0.5,    1,     2.5,  5,     10,   30};
}

template <typename T>
std::unique_ptr<T> Family<T>::Make() const {
  return std::make_unique<T>();
}

template <>
std::unique_ptr<Histogram> Family<Histogram>::Make() const {
  return std::make_unique<Histogram>(bounds_);
}

template <typename T>
T& Family<T>::WithLabels(const std::vector<std::string>& values) {
  std::vector<std::string> key = values;
  key.resize(label_names_.size());  // missing values are empty, extras dropped
  absl::MutexLock lock(&mu_);
  auto& child = children_[key];
  if (child == nullptr) child = Make();
  return *child;
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

Family<Counter>& Registry::CounterFamily(const std::string& name,
                                         const std::string& help,
                                         std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  auto& f = counters_[name];
  if (f == nullptr) {
    f.reset(new Family<Counter>(name, help, std::move(label_names), {}));
  }
  return *f;
}

Family<Gauge>& Registry::GaugeFamily(const std::string& name,
                                     const std::string& help,
                                     std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  auto& f = gauges_[name];
  if (f == nullptr)
    f.reset(new Family<Gauge>(name, help, std::move(label_names), {}));
  return *f;
}

Family<Histogram>& Registry::HistogramFamily(
    const std::string& name, const std::string& help,
    std::vector<std::string> label_names, std::vector<double> bounds) {
  absl::MutexLock lock(&mu_);
  auto& f = histograms_[name];
  if (f == nullptr) {
    std::sort(bounds.begin(), bounds.end());
    f.reset(new Family<Histogram>(name, help, std::move(label_names),
                                  std::move(bounds)));
  }
  return *f;
}

std::string Registry::Render() const {
  // Collect text per family name so the output is sorted across kinds.
  std::map<std::string, std::string> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [name, f] : counters_) {
    std::string& s = out[name];
    absl::StrAppend(&s, "# HELP ", name, " ", EscapeHelp(f->help_), "\n# TYPE ",
                    name, " counter\n");
    absl::MutexLock family_lock(&f->mu_);
    for (const auto& [values, c] : f->children_) {
      absl::StrAppend(&s, name, LabelSet(f->label_names_, values), " ",
                      FormatValue(c->Value()), "\n");
    }
  }
  for (const auto& [name, f] : gauges_) {
    std::string& s = out[name];
    absl::StrAppend(&s, "# HELP ", name, " ", EscapeHelp(f->help_), "\n# TYPE ",
                    name, " gauge\n");
    absl::MutexLock family_lock(&f->mu_);
    for (const auto& [values, g] : f->children_) {
      absl::StrAppend(&s, name, LabelSet(f->label_names_, values), " ",
                      FormatValue(g->Value()), "\n");
    }
  }
  for (const auto& [name, f] : histograms_) {
    std::string& s = out[name];
    absl::StrAppend(&s, "# HELP ", name, " ", EscapeHelp(f->help_), "\n# TYPE ",
                    name, " histogram\n");
    absl::MutexLock family_lock(&f->mu_);
    for (const auto& [values, h] : f->children_) {
      for (size_t i = 0; i < h->bounds().size(); ++i) {
        absl::StrAppend(
            &s, name, "_bucket",
            LabelSet(f->label_names_, values,
                     absl::StrCat("le=\"", FormatValue(h->bounds()[i]), "\"")),
            " ", h->CumulativeCount(i), "\n");
      }
      absl::StrAppend(&s, name, "_bucket",
                      LabelSet(f->label_names_, values, "le=\"+Inf\""), " ",
                      h->Count(), "\n");
      absl::StrAppend(&s, name, "_sum", LabelSet(f->label_names_, values), " ",
                      FormatValue(h->Sum()), "\n");
      absl::StrAppend(&s, name, "_count", LabelSet(f->label_names_, values),
                      " ", h->Count(), "\n");
    }
  }
  std::string text;
  for (const auto& [name, s] : out) text += s;
  return text;
}

}  // namespace fleetd::metrics
