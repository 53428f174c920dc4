// fleetd.v1.SyncService/StreamSync through the front door: one bidirectional
// call over gRPC, gRPC-Web or Connect streaming on HTTP/2, full duplex, bridged
// to a StreamSession of the SyncHandler (server/core/handler.h).
//
// Request. The body is a sequence of envelopes (flag byte, 4-byte big-endian
// length, payload; grpc-web-text: all of it base64, decoded as it arrives),
// each one StreamSyncRequest in the call's codec. A payload with the
// compressed flag (0x01) is decompressed with the call's coding (gRPC,
// gRPC-Web: grpc-encoding; Connect: connect-content-encoding), bounded by
// `max_message_bytes`. Any other flag, an envelope longer than
// `max_message_bytes` (RESOURCE_EXHAUSTED), a body ending inside an envelope
// or a payload that does not parse (INVALID_ARGUMENT) ends the call with that
// status.
//
// Pacing. Messages are handed to the session in order, one at a time, on
// `workers`: a call holds a worker only while it opens, handles messages or
// finishes, so idle streams cost no thread. The observer controls the
// stream's HTTP/2 receive window (ControlsRequestWindow): request bytes are
// acknowledged as they arrive until a complete message waits for the
// session; from then on the client's bytes are acknowledged only once the
// session took that message. A client writing faster than the session
// handles is thus held by flow control, and the call buffers at most the
// message being handled, one waiting message and one stream window.
//
// Response. Headers (200 and the protocol's content-type, plus
// grpc-accept-encoding or connect-accept-encoding) go out when the session
// opened, or with its first response; then one envelope per response
// (compressed with `response_coding` when at least kCompressMinBytes, which
// grpc-encoding / connect-content-encoding then name; grpc-web-text base64
// per envelope); then the end: gRPC
// trailers (grpc-status, grpc-message, retry-after-ms, fleetd-verdict), or
// trailers-only when nothing was sent before (a failed open); gRPC-Web the
// trailers frame (0x80); Connect the end-of-stream message (0x02, {"error",
// "metadata"}). The status is the first of: a protocol error found above, a
// refused worker (RESOURCE_EXHAUSTED with `overload_retry_after`), the status
// OnRequest returned, the status Finish returned (OK after a clean
// half-close). StreamSink::Send never blocks: the HTTP/2 session stops
// reading from a client that leaves more than its pending-output limit
// unread (server/rpc/http/session.h), which stops the messages that make
// responses.
//
// Ends. Finish runs exactly once for a session that opened: after the
// client's half-close once every message was handled, after an error, and
// after the client cancelled (its answer then goes nowhere; a batch whose ack
// was lost is sent again by the client and deduplicated by the ledger). The
// deadline (grpc-timeout, Connect-Timeout-Ms) is checked before the session
// opens and before each message, and with `timers` a stream still open at
// its deadline ends then with DEADLINE_EXCEEDED, idle or not (a message being
// handled at that moment finishes first); without `timers` an idle stream
// ends at its next message or half-close. Every finished call is counted in
// `calls` {protocol, "StreamSync", code}.
#ifndef FLEETD_SERVER_RPC_DOOR_STREAM_CALL_H_
#define FLEETD_SERVER_RPC_DOOR_STREAM_CALL_H_

#include <cstdint>
#include <memory>

#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "common/codec/codec.h"
#include "common/concurrency/timer_queue.h"
#include "common/concurrency/worker_pool.h"
#include "common/metrics/metrics.h"
#include "server/core/handler.h"
#include "server/rpc/door/wire.h"
#include "server/rpc/http/exchange.h"

namespace fleetd::server::rpc::door {

struct StreamCallOptions {
  SyncHandler* handler = nullptr;  // required; outlives the call
  WorkerPool* workers = nullptr;   // required; outlives the call
  Clock* clock = nullptr;          // required
  int64_t max_message_bytes = int64_t{16} << 20;
  absl::Duration overload_retry_after = absl::Seconds(1);
  metrics::Family<metrics::Counter>* calls = nullptr;  // may be null
  // Ends streams at their deadline (on `clock`); may be null. Must outlive
  // every call.
  TimerQueue* timers = nullptr;
};

// Starts a StreamSync call on `exchange` (already routed: POST, a streaming
// protocol, HTTP/2) with the call's context and request coding, and returns
// the observer of its request body. Runs on the connection's strand and does
// not block: the session opens on a worker.
std::unique_ptr<http::RequestObserver> StartStreamCall(
    std::shared_ptr<http::Exchange> exchange, Protocol protocol,
    CallContext context, Compression request_coding,
    Compression response_coding, const StreamCallOptions& options);

}  // namespace fleetd::server::rpc::door

#endif  // FLEETD_SERVER_RPC_DOOR_STREAM_CALL_H_
