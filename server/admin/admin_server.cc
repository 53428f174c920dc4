#include "server/admin/admin_server.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "httplib.h"

namespace fleetd::server {

absl::Status SplitHostPort(const std::string& address,
                           const std::string& setting, std::string* host,
                           int* port) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(setting, ": \"", address, "\" is not host:port"));
  }
  std::string h = address.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']')
    h = h.substr(1, h.size() - 2);
  int p;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &p) || p < 0 || p > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(setting, ": \"", address, "\" has no valid port"));
  }
  *host = h;
  *port = p;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(
    const std::string& address, metrics::Registry* registry,
    std::vector<Check> checks) {
  std::string host;
  int port;
  absl::Status s = SplitHostPort(address, "FLEET_ADMIN_ADDR", &host, &port);
  if (!s.ok()) return s;
  std::unique_ptr<AdminServer> server(new AdminServer());
  server->http_ = std::make_unique<httplib::Server>();
  httplib::Server& http = *server->http_;
  http.Get("/metrics",
           [registry](const httplib::Request&, httplib::Response& res) {
             res.set_content(registry->Render(),
                             "text/plain; version=0.0.4; charset=utf-8");
           });
  http.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  http.Get("/readyz",
           [checks](const httplib::Request&, httplib::Response& res) {
             std::string body;
             bool ready = true;
             for (const Check& c : checks) {
               absl::Status st = c.probe();
               ready = ready && st.ok();
               absl::StrAppend(&body, c.name, ": ",
                               st.ok() ? "ok" : st.ToString(), "\n");
             }
             res.status = ready ? 200 : 503;
             res.set_content(body, "text/plain");
           });
  int bound = port == 0 ? http.bind_to_any_port(host)
                        : (http.bind_to_port(host, port) ? port : -1);
  if (bound < 0) {
    return absl::UnavailableError(
        absl::StrCat("FLEET_ADMIN_ADDR: cannot listen on ", address));
  }
  server->port_ = bound;
  server->thread_ = std::thread([&http] { http.listen_after_bind(); });
  return server;
}

void AdminServer::Shutdown() {
  if (http_ != nullptr) http_->stop();
  if (thread_.joinable()) thread_.join();
}

AdminServer::~AdminServer() { Shutdown(); }

}  // namespace fleetd::server
