#include "server/core/tier_config.h"

namespace fleetd::server {

int TierOf(const v1::SyncDeviceCapability& capability) {
  if (capability.tier() >= 1 && capability.tier() <= 3)
    return capability.tier();
  constexpr int64_t kMB = 1000 * 1000;
  int64_t disk = capability.total_disk();
  int64_t ram = capability.total_ram();
  if (disk > 1000 * kMB && ram > 512 * kMB) return 1;
  if (disk > 10 * kMB && ram > 64 * kMB) return 2;
  return 3;
}

v1::SyncConfig ConfigForTier(int tier) {
  v1::SyncConfig c;
  c.set_initial_backoff_seconds(1);
  c.set_max_backoff_seconds(300);
  c.set_backoff_multiplier(2.0);
  c.set_max_retries(10);
  switch (tier) {
    case 1:
      c.set_batch_size(1000);
      c.set_sync_interval_seconds(300);
      c.set_retention_hours(168);
      c.set_compression_enabled(true);
      c.set_compression_type("zstd");
      c.set_max_metrics_per_second(1000);
      c.set_max_logs_per_second(500);
      c.set_max_local_storage_bytes(100 * 1000 * 1000);
      c.set_max_metrics_retained(1'000'000);
      break;
    case 2:
      c.set_batch_size(100);
      c.set_sync_interval_seconds(60);
      c.set_retention_hours(24);
      c.set_compression_enabled(true);
      c.set_compression_type("gzip");
      c.set_max_metrics_per_second(100);
      c.set_max_logs_per_second(50);
      c.set_max_local_storage_bytes(5 * 1000 * 1000);
      c.set_max_metrics_retained(50'000);
      break;
    default:
      c.set_batch_size(10);
      c.set_sync_interval_seconds(10);
      c.set_retention_hours(1);
      c.set_compression_enabled(false);
      c.set_compression_type("none");
      c.set_max_metrics_per_second(10);
      c.set_max_logs_per_second(5);
      c.set_max_local_storage_bytes(0);
      c.set_max_metrics_retained(1000);
      break;
  }
  return c;
}

}  // namespace fleetd::server
