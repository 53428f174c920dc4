// The sync configuration the server hands each capability tier.
#ifndef FLEETD_SERVER_CORE_TIER_CONFIG_H_
#define FLEETD_SERVER_CORE_TIER_CONFIG_H_

#include "fleetd/v1/sync.pb.h"

namespace fleetd::server {

// The tier a capability report describes: its own `tier` when 1..3, else the
// rule (tier 1 when disk > 1 GB and RAM > 512 MB; tier 2 when disk > 10 MB and
// RAM > 64 MB; tier 3 otherwise).
int TierOf(const v1::SyncDeviceCapability& capability);

// Per-tier defaults: tier 1 every 5 min, batches of 1000, zstd, 168 h
// retention, 1000 metrics/s; tier 2 every minute, 100, gzip; tier 3 every 10 s,
// 10, no compression.
v1::SyncConfig ConfigForTier(int tier);

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_CORE_TIER_CONFIG_H_
