#include "server/rpc/connect/procedures.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/status/error_class.h"
#include "common/status/retry_after.h"
#include "glog/logging.h"
#include "google/protobuf/descriptor.pb.h"

namespace fleetd::server::rpc {
namespace {

using google::protobuf::Message;

template <typename Req, typename Resp>
Invoker MakeInvoker(absl::StatusOr<Resp> (SyncHandler::*method)(
    const CallContext&, const Req&)) {
  return
      [method](
          SyncHandler* handler, const CallContext& context,
          const Message& request) -> absl::StatusOr<std::unique_ptr<Message>> {
        absl::StatusOr<Resp> response =
            (handler->*method)(context, static_cast<const Req&>(request));
        if (!response.ok()) return response.status();
        return std::unique_ptr<Message>(new Resp(*std::move(response)));
      };
}

template <typename Req, typename Resp>
AsyncInvoker MakeAsyncInvoker(void (SyncHandler::*method)(const CallContext&,
                                                          const Req&,
                                                          Reply<Resp>)) {
  return [method](SyncHandler* handler, const CallContext& context,
                  const Message& request, MessageReply reply) {
    (handler->*method)(
        context, static_cast<const Req&>(request),
        [reply = std::move(reply)](absl::StatusOr<Resp> response) mutable {
          if (!response.ok()) return std::move(reply)(response.status());
          std::move(reply)(
              std::unique_ptr<Message>(new Resp(*std::move(response))));
        });
  };
}

std::map<std::string, AsyncInvoker> AsyncInvokers() {
  return {
      {"SyncMetrics", MakeAsyncInvoker(&SyncHandler::SyncMetricsAsync)},
      {"SyncLogs", MakeAsyncInvoker(&SyncHandler::SyncLogsAsync)},
      {"SyncEvents", MakeAsyncInvoker(&SyncHandler::SyncEventsAsync)},
  };
}

WireInvoker MakeWireInvoker() {
  return [](SyncHandler* handler, const CallContext& context,
            absl::string_view request, MessageReply reply) {
    handler->SyncMetricsWireAsync(
        context, request,
        [reply = std::move(reply)](
            absl::StatusOr<v1::SyncMetricsResponse> response) mutable {
          if (!response.ok()) return std::move(reply)(response.status());
          std::move(reply)(std::unique_ptr<Message>(
              new v1::SyncMetricsResponse(*std::move(response))));
        });
  };
}

std::map<std::string, Invoker> Invokers() {
  return {
      {"SyncMetrics", MakeInvoker(&SyncHandler::SyncMetrics)},
      {"SyncLogs", MakeInvoker(&SyncHandler::SyncLogs)},
      {"GetSyncConfig", MakeInvoker(&SyncHandler::GetSyncConfig)},
      {"SyncEvents", MakeInvoker(&SyncHandler::SyncEvents)},
      {"UpdateDeviceInfo", MakeInvoker(&SyncHandler::UpdateDeviceInfo)},
  };
}

}  // namespace

absl::StatusOr<ProcedureTable> SyncServiceProcedures(
    absl::string_view front_end) {
  const google::protobuf::ServiceDescriptor* service =
      v1::SyncMetricsRequest::descriptor()->file()->FindServiceByName(
          "SyncService");
  if (service == nullptr) {
    return absl::InternalError("fleetd.v1.SyncService descriptor not found");
  }
  std::map<std::string, Invoker> invokers = Invokers();
  std::map<std::string, AsyncInvoker> async_invokers = AsyncInvokers();
  ProcedureTable table;
  for (int i = 0; i < service->method_count(); ++i) {
    const google::protobuf::MethodDescriptor* method = service->method(i);
    Procedure procedure;
    procedure.name = method->name();
    procedure.bidi = method->client_streaming() || method->server_streaming();
    procedure.no_side_effects =
        method->options().idempotency_level() ==
        google::protobuf::MethodOptions::NO_SIDE_EFFECTS;
    procedure.input = method->input_type();
    auto invoker = invokers.find(method->name());
    if (invoker != invokers.end()) procedure.invoke = invoker->second;
    auto async_invoker = async_invokers.find(method->name());
    if (async_invoker != async_invokers.end()) {
      procedure.invoke_async = async_invoker->second;
    }
    if (procedure.name == "SyncMetrics") {
      procedure.invoke_wire = MakeWireInvoker();
    }
    if (!procedure.bidi && !procedure.invoke) {
      LOG(WARNING) << front_end << ": no handler method for "
                   << method->full_name() << "; it answers unimplemented";
    }
    table[absl::StrCat("/", service->full_name(), "/", method->name())] =
        std::move(procedure);
  }
  return table;
}

const Procedure* FindProcedure(const ProcedureTable& table,
                               absl::string_view path) {
  auto it = table.find(path);
  return it == table.end() ? nullptr : &it->second;
}

absl::Status NotImplemented(const Procedure& procedure) {
  return absl::UnimplementedError(absl::StrCat(
      "fleetd.v1.SyncService/", procedure.name, " is not implemented"));
}

absl::Status RequestDecodeVerdict(const Procedure& procedure,
                                  absl::Status decoded) {
  if (absl::IsInvalidArgument(decoded) &&
      (procedure.name == "SyncMetrics" || procedure.name == "SyncLogs" ||
       procedure.name == "SyncEvents")) {
    return MarkBatchRejected(std::move(decoded));
  }
  return decoded;
}

namespace {

// The procedure's request message from `bytes` (RequestDecodeVerdict on
// failure).
absl::StatusOr<std::unique_ptr<Message>> ParseRequest(
    const Procedure& procedure, connect::Codec codec, absl::string_view bytes) {
  std::unique_ptr<Message> request(
      google::protobuf::MessageFactory::generated_factory()
          ->GetPrototype(procedure.input)
          ->New());
  absl::Status decoded = RequestDecodeVerdict(
      procedure, connect::DecodeMessage(codec, bytes, request.get()));
  if (!decoded.ok()) return decoded;
  return request;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Message>> InvokeProcedure(
    const Procedure& procedure, SyncHandler* handler, const CallContext& call,
    connect::Codec codec, absl::string_view bytes) {
  if (!procedure.invoke) return NotImplemented(procedure);
  absl::StatusOr<std::unique_ptr<Message>> request =
      ParseRequest(procedure, codec, bytes);
  if (!request.ok()) return request.status();
  return procedure.invoke(handler, call, **request);
}

void InvokeProcedureAsync(const Procedure& procedure, SyncHandler* handler,
                          const CallContext& call, connect::Codec codec,
                          absl::string_view bytes, MessageReply reply) {
  if (!procedure.invoke_async) {
    std::move(reply)(InvokeProcedure(procedure, handler, call, codec, bytes));
    return;
  }
  if (procedure.invoke_wire && codec == connect::Codec::kProto) {
    procedure.invoke_wire(handler, call, bytes, std::move(reply));
    return;
  }
  absl::StatusOr<std::unique_ptr<Message>> request =
      ParseRequest(procedure, codec, bytes);
  if (!request.ok()) return std::move(reply)(request.status());
  procedure.invoke_async(handler, call, **request, std::move(reply));
}

connect::Metadata RetryMetadata(const absl::Status& status) {
  connect::Metadata metadata;
  if (std::optional<absl::Duration> retry = GetRetryAfter(status)) {
    metadata.emplace_back("retry-after-ms",
                          absl::StrCat(absl::ToInt64Milliseconds(*retry)));
  }
  if (IsBatchRejected(status)) {
    metadata.emplace_back(kVerdictMetadataKey, kVerdictRejected);
  }
  return metadata;
}

connect::Metadata ConnectErrorHeaders(const absl::Status& status) {
  connect::Metadata headers;
  if (std::optional<absl::Duration> retry = GetRetryAfter(status)) {
    int64_t ms = absl::ToInt64Milliseconds(*retry);
    headers.emplace_back("Retry-After", absl::StrCat((ms + 999) / 1000));
    headers.emplace_back("Trailer-Retry-After-Ms", absl::StrCat(ms));
  }
  if (IsBatchRejected(status)) {
    headers.emplace_back(absl::StrCat("Trailer-", kVerdictMetadataKey),
                         kVerdictRejected);
  }
  return headers;
}

size_t BodyLimit(connect::WireProtocol protocol, int64_t max_message_bytes) {
  size_t max = static_cast<size_t>(max_message_bytes);
  switch (protocol) {
    case connect::WireProtocol::kConnectUnary:
      return max;
    case connect::WireProtocol::kConnectStream:
    case connect::WireProtocol::kGrpcWeb:
      return max + connect::kEnvelopeHeaderBytes;
    case connect::WireProtocol::kGrpcWebText:
      return (max + connect::kEnvelopeHeaderBytes + 2) / 3 * 4 + 4;
  }
  return max;
}

absl::StatusOr<std::string> DecompressMessage(Compression coding,
                                              std::string body,
                                              int64_t max_message_bytes,
                                              absl::string_view front_end) {
  if (coding == Compression::kNone || body.empty()) return body;
  absl::StatusOr<std::string> out =
      fleetd::Decompress(coding, body, static_cast<size_t>(max_message_bytes));
  if (!out.ok() &&
      out.status().code() == absl::StatusCode::kResourceExhausted) {
    LOG_EVERY_N(WARNING, 100)
        << front_end << ": refusing a " << CompressionName(coding)
        << " message that inflates beyond " << max_message_bytes << " bytes";
  }
  return out;
}

absl::StatusOr<std::string> EnvelopeMessage(const connect::Envelope& envelope,
                                            Compression request_coding,
                                            absl::string_view coding_source,
                                            int64_t max_message_bytes,
                                            absl::string_view front_end) {
  if ((envelope.flags & connect::kFlagCompressed) == 0) {
    return envelope.payload;
  }
  if (request_coding == Compression::kNone) {
    // gRPC's compression spec: a compressed message the call named no
    // coding for is INTERNAL (connect-go answers the same in all three
    // protocols).
    return absl::InternalError(absl::StrCat(
        "protocol error: compressed message without ", coding_source));
  }
  return DecompressMessage(request_coding, envelope.payload, max_message_bytes,
                           front_end);
}

absl::StatusOr<std::string> UnaryEnvelopeMessage(
    const std::vector<connect::Envelope>& envelopes, uint8_t end_flag,
    Compression request_coding, int64_t max_message_bytes,
    absl::string_view front_end) {
  if (envelopes.size() != 1) {
    // A cardinality violation, which gRPC's status code list files under
    // UNIMPLEMENTED (as connect-go answers it).
    return absl::UnimplementedError(absl::StrCat(
        "protocol error: a unary call takes exactly one message, got ",
        envelopes.size()));
  }
  if ((envelopes.front().flags & end_flag) != 0) {
    return absl::InvalidArgumentError(
        "protocol error: a unary request carries a trailers frame");
  }
  return EnvelopeMessage(envelopes.front(), request_coding, "grpc-encoding",
                         max_message_bytes, front_end);
}

metrics::Family<metrics::Counter>* FrontEndRequests(
    metrics::Registry* registry) {
  if (registry == nullptr) return nullptr;
  return &registry->CounterFamily(
      "fleetd_rpc_frontend_requests_total",
      "Requests a front end finished, by protocol, method and status code, "
      "including those refused before reaching the handler.",
      {"protocol", "method", "code"});
}

absl::Status CheckConnectProtocolVersion(std::optional<absl::string_view> value,
                                         bool required) {
  if (value.has_value() && *value != "1") {
    return absl::InvalidArgumentError(absl::StrCat(
        "connect-protocol-version must be \"1\": got \"", *value, "\""));
  }
  if (!value.has_value() && required) {
    return absl::InvalidArgumentError(
        "missing required header: set connect-protocol-version to \"1\"");
  }
  return absl::OkStatus();
}

absl::Status CheckConnectGetVersion(std::optional<absl::string_view> value,
                                    bool required) {
  if (value.has_value() && *value != "v1") {
    return absl::InvalidArgumentError(
        absl::StrCat("connect must be \"v1\": got \"", *value, "\""));
  }
  if (!value.has_value() && required) {
    return absl::InvalidArgumentError(
        "missing required query parameter: set connect to \"v1\"");
  }
  return absl::OkStatus();
}

}  // namespace fleetd::server::rpc
