// Latency statistics for the load generator.
#ifndef FLEETD_BENCH_LOADGEN_LATENCY_H_
#define FLEETD_BENCH_LOADGEN_LATENCY_H_

#include <vector>

namespace fleetd::bench {

// The `p`-th percentile (0 < p <= 100) of `sorted` (ascending) by the
// nearest-rank method: the smallest value such that at least p % of the values
// are <= it. 0 for an empty vector.
double Percentile(const std::vector<double>& sorted, double p);

struct LatencySummary {
  long count = 0;
  double p50 = 0;
  double p95 = 0;
  double p99 = 0;
  double max = 0;
  double mean = 0;
};

// Sorts `values` and summarises them.
LatencySummary Summarize(std::vector<double> values);

}  // namespace fleetd::bench

#endif  // FLEETD_BENCH_LOADGEN_LATENCY_H_
