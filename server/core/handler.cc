#include "server/core/handler.h"

#include <utility>

#include "common/status/error_class.h"

namespace fleetd::server {

void SyncHandler::SyncMetricsWireAsync(const CallContext& context,
                                       absl::string_view request,
                                       Reply<v1::SyncMetricsResponse> done) {
  v1::SyncMetricsRequest parsed;
  if (!parsed.ParseFromArray(request.data(),
                             static_cast<int>(request.size()))) {
    return std::move(done)(MarkBatchRejected(absl::InvalidArgumentError(
        "unmarshal into fleetd.v1.SyncMetricsRequest: invalid binary "
        "protobuf")));
  }
  SyncMetricsAsync(context, parsed, std::move(done));
}

}  // namespace fleetd::server
