// In-process metrics with Prometheus text exposition (format 0.0.4).
//
// Debian 12 packages no Prometheus client library, so this is a deliberately
// small one: counters, gauges and histograms, each a family keyed by label
// values. Families and children are created once and live as long as the
// registry; callers keep the returned references. Updates are lock-free
// atomics; all methods are safe for concurrent use.
#ifndef FLEETD_COMMON_METRICS_METRICS_H_
#define FLEETD_COMMON_METRICS_METRICS_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace fleetd::metrics {

class Counter {
 public:
  // REQUIRES: v >= 0.
  void Increment(double v = 1);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double v);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  // `bounds` are the upper bounds of the buckets, ascending; +Inf is implicit.
  explicit Histogram(std::vector<double> bounds);
  void Observe(double v);
  uint64_t Count() const { return count_.load(std::memory_order_relaxed); }
  double Sum() const { return sum_.load(std::memory_order_relaxed); }
  // Cumulative count of observations <= bounds()[i].
  uint64_t CumulativeCount(size_t i) const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]>
      buckets_;  // per bucket, not cumulative
  std::atomic<uint64_t> count_{0};
  std::atomic<double> sum_{0};
};

// Latency buckets in seconds, 1 ms to 30 s.
std::vector<double> LatencyBuckets();

template <typename T>
class Family {
 public:
  // The child for these label values (one per declared label name, in order);
  // created on first use. The reference stays valid for the registry's
  // lifetime.
  T& WithLabels(const std::vector<std::string>& values);
  // The child of a family declared without labels.
  T& Get() { return WithLabels({}); }

 private:
  friend class Registry;
  Family(std::string name, std::string help,
         std::vector<std::string> label_names, std::vector<double> bounds)
      : name_(std::move(name)),
        help_(std::move(help)),
        label_names_(std::move(label_names)),
        bounds_(std::move(bounds)) {}
  std::unique_ptr<T> Make() const;

  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
  const std::vector<double> bounds_;  // histograms only
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<T>> children_
      ABSL_GUARDED_BY(mu_);
};

class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Declares a family, or returns the existing one of that name (its labels
  // must match).
  Family<Counter>& CounterFamily(const std::string& name,
                                 const std::string& help,
                                 std::vector<std::string> label_names = {});
  Family<Gauge>& GaugeFamily(const std::string& name, const std::string& help,
                             std::vector<std::string> label_names = {});
  Family<Histogram>& HistogramFamily(const std::string& name,
                                     const std::string& help,
                                     std::vector<std::string> label_names,
                                     std::vector<double> bounds);

  // Shorthands for families without labels.
  Counter& GetCounter(const std::string& name, const std::string& help) {
    return CounterFamily(name, help).Get();
  }
  Gauge& GetGauge(const std::string& name, const std::string& help) {
    return GaugeFamily(name, help).Get();
  }

  // Everything in Prometheus text exposition format, families sorted by name.
  std::string Render() const;

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Family<Counter>>> counters_
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<Family<Gauge>>> gauges_
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<Family<Histogram>>> histograms_
      ABSL_GUARDED_BY(mu_);
};

// Escapes a label value for the text format (backslash, double quote, newline).
std::string EscapeLabelValue(const std::string& value);

}  // namespace fleetd::metrics

#endif  // FLEETD_COMMON_METRICS_METRICS_H_
