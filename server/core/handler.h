// The transport-agnostic core of the Fleet server: one implementation of each
// RPC.
//
// Front ends (gRPC, Connect, gRPC-Web) only decode the request, collect the
// call context (API key, peer, deadline) and hand over to a SyncHandler; they
// turn the returned absl::Status into their protocol's error form (code,
// message, retry hint from common/status/retry_after.h). Authentication,
// validation, routing and delivery all happen behind this interface.
#ifndef FLEETD_SERVER_CORE_HANDLER_H_
#define FLEETD_SERVER_CORE_HANDLER_H_

#include <memory>
#include <string>
#include <utility>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "fleetd/v1/sync.pb.h"

namespace fleetd::server {

// What a front end knows about a call.
struct CallContext {
  // The API key from `x-api-key` metadata / the `X-API-Key` header; empty when
  // absent.
  std::string api_key;
  // The remote address, for logs.
  std::string peer;
  // "grpc", "connect" or "grpc-web", for metrics and logs.
  std::string protocol;
  // When the caller stops waiting; InfiniteFuture() when it set no deadline.
  absl::Time deadline = absl::InfiniteFuture();
};

// Where a stream session sends its responses. Safe for concurrent use.
class StreamSink {
 public:
  virtual ~StreamSink() = default;
  // Queues a response to the client. Returns false once the stream is closed;
  // the response is then dropped.
  virtual bool Send(const v1::StreamSyncResponse& response) = 0;
};

// One StreamSync call. The front end calls OnRequest for each client message in
// order (never concurrently), then Finish exactly once when the client
// half-closes or the call breaks. The session may Send on its sink from any
// thread until Finish returns.
class StreamSession {
 public:
  virtual ~StreamSession() = default;
  // Handles one client message. An error ends the call with that status.
  virtual absl::Status OnRequest(const v1::StreamSyncRequest& request) = 0;
  // Ends the session: waits for outstanding work on already-received batches
  // and returns the status the call ends with (OK after a clean half-close).
  virtual absl::Status Finish() = 0;
};

// Receives the answer of an asynchronous call.
template <typename Response>
using Reply = absl::AnyInvocable<void(absl::StatusOr<Response>) &&>;

// The server core. Implementations are safe for concurrent use.
//
// Every method authenticates `context.api_key` first: UNAUTHENTICATED for a
// missing, unknown or revoked key; PERMISSION_DENIED when the request names
// another device or org. Malformed content is INVALID_ARGUMENT (or
// RESOURCE_EXHAUSTED when over a size limit) and writes nothing. A batch is
// acknowledged (OK) only after every backend it routes to accepted it; if one
// did not, the status is retryable (UNAVAILABLE, or RESOURCE_EXHAUSTED with a
// retry hint on overload) and the batch is not recorded as applied.
class SyncHandler {
 public:
  virtual ~SyncHandler() = default;

  virtual absl::StatusOr<v1::SyncMetricsResponse> SyncMetrics(
      const CallContext& context, const v1::SyncMetricsRequest& request) = 0;
  virtual absl::StatusOr<v1::SyncLogsResponse> SyncLogs(
      const CallContext& context, const v1::SyncLogsRequest& request) = 0;
  virtual absl::StatusOr<v1::GetSyncConfigResponse> GetSyncConfig(
      const CallContext& context, const v1::GetSyncConfigRequest& request) = 0;
  virtual absl::StatusOr<v1::SyncEventsResponse> SyncEvents(
      const CallContext& context, const v1::SyncEventsRequest& request) = 0;
  virtual absl::StatusOr<v1::UpdateDeviceInfoResponse> UpdateDeviceInfo(
      const CallContext& context,
      const v1::UpdateDeviceInfoRequest& request) = 0;

  // The batch RPCs without holding the caller's thread while backends write:
  // `done` gets the answer exactly once, before the method returns or later
  // on another thread (then it must be quick and must not block: hand the
  // answer to the transport). `context` and `request` are only read before
  // the method returns. The caller's deadline is the caller's to enforce: the
  // answer may come after it. By default: the blocking method, then `done`.
  virtual void SyncMetricsAsync(const CallContext& context,
                                const v1::SyncMetricsRequest& request,
                                Reply<v1::SyncMetricsResponse> done) {
    std::move(done)(SyncMetrics(context, request));
  }
  // SyncMetricsAsync for a request as received in protobuf encoding (the
  // binary codec of gRPC, gRPC-Web and Connect): `request` is a serialized
  // SyncMetricsRequest, read only before the method returns. Lets the
  // implementation read the samples without making message objects. By
  // default: parse it, then SyncMetricsAsync; bytes that do not parse get
  // INVALID_ARGUMENT marked as the batch's rejection, as a front end answers
  // any batch request that does not parse.
  virtual void SyncMetricsWireAsync(const CallContext& context,
                                    absl::string_view request,
                                    Reply<v1::SyncMetricsResponse> done);
  virtual void SyncLogsAsync(const CallContext& context,
                             const v1::SyncLogsRequest& request,
                             Reply<v1::SyncLogsResponse> done) {
    std::move(done)(SyncLogs(context, request));
  }
  virtual void SyncEventsAsync(const CallContext& context,
                               const v1::SyncEventsRequest& request,
                               Reply<v1::SyncEventsResponse> done) {
    std::move(done)(SyncEvents(context, request));
  }

  // Starts a StreamSync call. `sink` outlives the session. Fails (e.g.
  // UNAUTHENTICATED) before any message is read.
  virtual absl::StatusOr<std::unique_ptr<StreamSession>> OpenStream(
      const CallContext& context, StreamSink* sink) = 0;
};

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_CORE_HANDLER_H_
