#include "server/rpc/testing/grpc_health_client.h"

#include <vector>

#include "grpcpp/client_context.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"

namespace fleetd::server::testing {

std::pair<grpc::Status, std::string> GrpcHealthCheck(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
    absl::Duration deadline) {
  grpc::GenericStub generic(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  grpc::CompletionQueue cq;
  // Field 1 (service), length-delimited; names are short (one length byte).
  std::string message = std::string("\x0a", 1) +
                        static_cast<char>(service.size() & 0x7f) + service;
  grpc::Slice slice(message);
  grpc::ByteBuffer request(&slice, 1);
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> call =
      generic.PrepareUnaryCall(&context, "/grpc.health.v1.Health/Check",
                               request, &cq);
  call->StartCall();
  grpc::ByteBuffer reply;
  grpc::Status status;
  call->Finish(&reply, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  if (!cq.Next(&tag, &ok)) {
    status = grpc::Status(grpc::StatusCode::INTERNAL,
                          "completion queue shut down before the answer");
  }
  std::string bytes;
  std::vector<grpc::Slice> slices;
  if (status.ok() && reply.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) {
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return {status, bytes};
}

}  // namespace fleetd::server::testing
