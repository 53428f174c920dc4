#include "server/rpc/http/exchange.h"

namespace fleetd::server::rpc::http {

std::optional<absl::string_view> FindHeader(const Headers& headers,
                                            absl::string_view name) {
  for (const Header& h : headers) {
    if (h.name == name) return absl::string_view(h.value);
  }
  return std::nullopt;
}

namespace {

class Ignore final : public RequestObserver {
 public:
  void OnData(absl::string_view) override {}
  void OnEnd() override {}
  void OnCancel() override {}
};

}  // namespace

std::unique_ptr<RequestObserver> IgnoreBody() {
  return std::make_unique<Ignore>();
}

}  // namespace fleetd::server::rpc::http
