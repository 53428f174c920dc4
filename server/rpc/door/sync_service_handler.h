// The front door's protocol layer: fleetd.v1.SyncService's methods over
// gRPC, gRPC-Web and Connect as ONE http::ExchangeHandler, the way connect-go
// serves three protocols from one handler: the protocol is a codec around the
// same procedure (server/rpc/connect/procedures.h), not a second server.
//
// Routing. POST /fleetd.v1.SyncService/<Method>; the protocol comes from the
// request's content-type:
//   application/grpc, application/grpc+proto      gRPC (HTTP/2 only)
//   application/grpc-web[+proto|+json], -text     gRPC-Web (HTTP/1.1, HTTP/2)
//   application/proto, application/json           Connect unary
//   application/connect+proto|+json               Connect streaming
// anything else 415 with Accept-Post. GET is Connect's GET form
// (?connect=v1&encoding=proto|json&message=...[&base64=1][&compression=...])
// and only for NO_SIDE_EFFECTS methods (GetSyncConfig): other methods answer
// 405 with Allow: POST, and verbs other than GET and POST 405 too. A GET's
// answer is one device's, so it carries Cache-Control: private, no-cache and
// Vary: Accept-Encoding, X-Api-Key (no shared cache hands it to another
// device; none reuses it unchecked). A path
// outside the service is a plain 404; an unknown method of the service is
// UNIMPLEMENTED in the protocol's form (gRPC: trailers-only; Connect: 404 with
// {"code":"unimplemented"}; gRPC-Web: a trailers frame).
//
// gRPC over HTTP/1.1 is refused with 505 HTTP Version Not Supported (plain
// text body, no gRPC framing): gRPC needs HTTP/2 trailers, and a gRPC client
// that got here over HTTP/1.1 would misread anything else.
//
// StreamSync (bidirectional) is served over HTTP/2 by stream_call.h for gRPC,
// gRPC-Web and Connect streaming (application/connect+proto|json): full
// duplex, its request window paced by the session. Over HTTP/1.1 it is
// answered 505 HTTP Version Not Supported, as connect-go does; Connect unary
// content types for it are 415, as for a unary method called with a
// streaming content type. The rest of this comment is about unary calls.
//
// Requests. The body is accumulated up to the protocol's BodyLimit; beyond it
// the call is answered RESOURCE_EXHAUSTED at once and the rest of the body is
// ignored. gRPC and gRPC-Web carry exactly one envelope; its compressed flag
// is honoured with grpc-encoding gzip or zstd (an unknown coding is
// UNIMPLEMENTED, with grpc-accept-encoding). Connect unary: Content-Encoding
// gzip or zstd, Connect-Protocol-Version "1" when present (required with
// `require_connect_protocol_version`), Connect-Timeout-Ms. gRPC(-Web):
// grpc-timeout. Decompression is bounded by `max_message_bytes`. A request
// message that does not parse is INVALID_ARGUMENT, for a batch method marked
// rejected (RequestDecodeVerdict). The call context: api_key from x-api-key,
// peer from the exchange, protocol "grpc", "grpc-web" or "connect", deadline
// clock->Now() + the timeout (InfiniteFuture without one).
//
// Responses. Messages of at least kCompressMinBytes (wire.h) in the coding
// the client accepts (ResponseCoding), smaller ones identity. gRPC: 200,
// content-type application/grpc,
// one data envelope, trailers grpc-status 0; errors are trailers-only (one
// header block with grpc-status, percent-encoded grpc-message, retry-after-ms
// and fleetd-verdict, ending the stream). gRPC-Web: 200, the data envelope
// then a trailers envelope (flag 0x80) in the body, which ends the response.
// Connect unary: 200 and the message; errors HttpStatusFor(code) with the
// Error JSON, Retry-After / Trailer-Retry-After-Ms / Trailer-Fleetd-Verdict
// headers. Every finished call of a known procedure is counted in
// fleetd_rpc_frontend_requests_total{protocol,method,code}.
//
// Threading. The returned handler and its observers run on the connection's
// strand and never block: once the body is complete, decoding, the
// SyncHandler call and the response run as one task on `workers`. A full pool
// is RESOURCE_EXHAUSTED with a retry hint (`overload_retry_after`); a pool
// shutting down UNAVAILABLE. A call cancelled by the client (OnCancel) before
// its task ran does not reach the SyncHandler; one cancelled while the
// SyncHandler runs finishes there, its response going nowhere.
#ifndef FLEETD_SERVER_RPC_DOOR_SYNC_SERVICE_HANDLER_H_
#define FLEETD_SERVER_RPC_DOOR_SYNC_SERVICE_HANDLER_H_

#include <cstdint>

#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "common/concurrency/timer_queue.h"
#include "common/concurrency/worker_pool.h"
#include "common/metrics/metrics.h"
#include "server/core/handler.h"
#include "server/rpc/http/exchange.h"

namespace fleetd::server::rpc {

struct DoorOptions {
  // Largest request message, also after decompression; the body limit of
  // each protocol follows from it (envelope header, base64).
  int64_t max_message_bytes = int64_t{16} << 20;
  // Where the blocking part of a call runs. Required; not owned; must
  // outlive every exchange the handler accepted (shut it down, which runs or
  // rejects every task, before destroying the SyncHandler).
  WorkerPool* workers = nullptr;
  // Deadlines are clock->Now() + the request's timeout. Null: Clock::Real().
  Clock* clock = nullptr;
  // Call counters; may be null. Not owned; must outlive the handler.
  metrics::Registry* metrics = nullptr;
  // The retry hint sent with RESOURCE_EXHAUSTED when `workers` is full.
  absl::Duration overload_retry_after = absl::Seconds(1);
  // Ends StreamSync calls at their deadline (stream_call.h); may be null
  // (a stream past its deadline then ends at its next message). Not owned;
  // must outlive every exchange the handler accepted.
  TimerQueue* timers = nullptr;
  // Refuse Connect requests without Connect-Protocol-Version: 1 (and GETs
  // without connect=v1) with invalid_argument.
  bool require_connect_protocol_version = false;
};

// Returns the handler serving fleetd.v1.SyncService on `handler`. REQUIRES:
// `handler` and `options.workers` non-null and outliving every accepted
// exchange; `options.max_message_bytes` > 0. The returned function may be
// copied and called concurrently from any number of strands.
http::ExchangeHandler NewSyncServiceHandler(SyncHandler* handler,
                                            DoorOptions options);

}  // namespace fleetd::server::rpc

#endif  // FLEETD_SERVER_RPC_DOOR_SYNC_SERVICE_HANDLER_H_
