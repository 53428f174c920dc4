// fleetd.v1.SyncService as the HTTP-based front ends see it (the Connect front
// end and the front door's protocol layer): the procedure table read from the
// service descriptor, the call of a unary procedure on a SyncHandler, and the
// wire extras every protocol sends with an error (retry hint, verdict).
//
// Nothing here knows about an HTTP server: the front ends decode the framing
// of their protocol, then hand the message bytes to InvokeProcedure, and turn
// its status into their error form with RetryMetadata / ConnectErrorHeaders.
#ifndef FLEETD_SERVER_RPC_CONNECT_PROCEDURES_H_
#define FLEETD_SERVER_RPC_CONNECT_PROCEDURES_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/codec/codec.h"
#include "common/metrics/metrics.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "server/core/handler.h"
#include "server/rpc/connect/connect_protocol.h"

namespace fleetd::server::rpc {

// Calls one unary method of a SyncHandler with a request of its input type.
using Invoker =
    std::function<absl::StatusOr<std::unique_ptr<google::protobuf::Message>>(
        SyncHandler*, const CallContext&, const google::protobuf::Message&)>;

// The answer of a unary method called without waiting.
using MessageReply = absl::AnyInvocable<
    void(absl::StatusOr<std::unique_ptr<google::protobuf::Message>>) &&>;
// Calls one unary method of a SyncHandler without waiting for its answer
// (SyncHandler's asynchronous forms; `reply` as their `done`).
using AsyncInvoker =
    std::function<void(SyncHandler*, const CallContext&,
                       const google::protobuf::Message&, MessageReply)>;

// Calls a batch method of a SyncHandler without waiting, with its request as
// received in protobuf encoding (SyncHandler::SyncMetricsWireAsync).
using WireInvoker = std::function<void(SyncHandler*, const CallContext&,
                                       absl::string_view, MessageReply)>;

// One procedure of fleetd.v1.SyncService, as read from its descriptor.
struct Procedure {
  std::string name;  // "SyncMetrics"
  bool bidi = false;
  // idempotency_level = NO_SIDE_EFFECTS: may be called with Connect GET.
  bool no_side_effects = false;
  const google::protobuf::Descriptor* input = nullptr;
  Invoker invoke;  // unary only; null if the handler has no such method
  // The batch methods: their asynchronous form; null for the others.
  AsyncInvoker invoke_async;
  // SyncMetrics: the asynchronous form that reads the request's bytes itself
  // (binary codec only); null for the others.
  WireInvoker invoke_wire;
};

// Procedures by path, "/fleetd.v1.SyncService/<Method>".
using ProcedureTable = std::map<std::string, Procedure, std::less<>>;

// Reads every method of fleetd.v1.SyncService from the generated descriptor.
// A unary method SyncHandler lacks gets no invoker (it answers UNIMPLEMENTED)
// and a warning naming `front_end`. InternalError when the descriptor is
// missing from the binary.
absl::StatusOr<ProcedureTable> SyncServiceProcedures(
    absl::string_view front_end);

// The procedure at `path`, or null.
const Procedure* FindProcedure(const ProcedureTable& table,
                               absl::string_view path);

// UNIMPLEMENTED for `procedure`, naming it.
absl::Status NotImplemented(const Procedure& procedure);

// A request message of a batch method (SyncMetrics, SyncLogs, SyncEvents) that
// does not parse (e.g. a log line that is not UTF-8, which protobuf's C++
// serializer still sends) is our verdict on that batch: resending the same
// bytes can never succeed, so the device sets it aside instead of retrying it
// forever. Returns `decoded`, marked rejected in that case.
absl::Status RequestDecodeVerdict(const Procedure& procedure,
                                  absl::Status decoded);

// Decodes `bytes` (in `codec`) as the procedure's request and calls the
// handler; blocks as long as the handler does. UNIMPLEMENTED without an
// invoker; a request that does not parse is INVALID_ARGUMENT (see
// RequestDecodeVerdict) and does not reach the handler.
absl::StatusOr<std::unique_ptr<google::protobuf::Message>> InvokeProcedure(
    const Procedure& procedure, SyncHandler* handler, const CallContext& call,
    connect::Codec codec, absl::string_view bytes);

// InvokeProcedure without holding the calling thread while the handler waits
// for backends: `reply` gets the answer exactly once, before this returns
// (refused, invalid, not a batch method, or the handler answered at once) or
// later on another thread, where it must be quick and must not block.
// SyncMetrics in the binary codec goes to the handler as bytes
// (invoke_wire), which then answers a request that does not parse.
void InvokeProcedureAsync(const Procedure& procedure, SyncHandler* handler,
                          const CallContext& call, connect::Codec codec,
                          absl::string_view bytes, MessageReply reply);

// The wire extras of a status, as end-of-stream metadata / gRPC(-Web)
// trailers: retry-after-ms (the retry hint in milliseconds) and
// fleetd-verdict: rejected. Empty for a plain status.
connect::Metadata RetryMetadata(const absl::Status& status);

// The same extras as headers of a Connect unary error: Retry-After (whole
// seconds, rounded up) and Trailer-Retry-After-Ms, Trailer-Fleetd-Verdict.
connect::Metadata ConnectErrorHeaders(const absl::Status& status);

// The body a request may carry at most, for a protocol (gRPC's framing is
// gRPC-Web's).
size_t BodyLimit(connect::WireProtocol protocol, int64_t max_message_bytes);

// Decompresses a request body or message, refusing (RESOURCE_EXHAUSTED,
// logged with `front_end`) output beyond `max_message_bytes`. kNone and an
// empty body pass through.
absl::StatusOr<std::string> DecompressMessage(Compression coding,
                                              std::string body,
                                              int64_t max_message_bytes,
                                              absl::string_view front_end);

// The message of one envelope: its payload, decompressed with
// `request_coding` when the compressed flag is set (INTERNAL "protocol error:
// compressed message without <coding_source>" when the request named no
// coding, as gRPC's compression spec says).
absl::StatusOr<std::string> EnvelopeMessage(const connect::Envelope& envelope,
                                            Compression request_coding,
                                            absl::string_view coding_source,
                                            int64_t max_message_bytes,
                                            absl::string_view front_end);

// The one message of a unary gRPC or gRPC-Web request: exactly one envelope
// (UNIMPLEMENTED otherwise: a cardinality violation), without `end_flag`
// (INVALID_ARGUMENT), then EnvelopeMessage with grpc-encoding as the coding
// source.
absl::StatusOr<std::string> UnaryEnvelopeMessage(
    const std::vector<connect::Envelope>& envelopes, uint8_t end_flag,
    Compression request_coding, int64_t max_message_bytes,
    absl::string_view front_end);

// fleetd_rpc_frontend_requests_total{protocol,method,code}, the calls a front
// end finished; null when `registry` is null.
metrics::Family<metrics::Counter>* FrontEndRequests(
    metrics::Registry* registry);

// ---- Connect request checks ------------------------------------------------

// The Connect-Protocol-Version header (nullopt when absent): "1", or absent
// unless `required`; INVALID_ARGUMENT otherwise.
absl::Status CheckConnectProtocolVersion(std::optional<absl::string_view> value,
                                         bool required);
// The same for a Connect GET's `connect` query parameter: "v1".
absl::Status CheckConnectGetVersion(std::optional<absl::string_view> value,
                                    bool required);

}  // namespace fleetd::server::rpc

#endif  // FLEETD_SERVER_RPC_CONNECT_PROCEDURES_H_
