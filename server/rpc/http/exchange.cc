#include "server/rpc/http/exchange.h"

namespace fleetd::server::rpc::http {

std::optional<absl::string_view> FindHeader(const Headers& headers,
                                            absl::string_view name) {
  for (const Header& h : headers) {
    if (h.name == name) return absl::string_view(h.value);
  }
  return std::nullopt;
}

}  // namespace fleetd::server::rpc::http
