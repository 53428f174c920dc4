#include "server/rpc/door/cors.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/rpc/http/exchange.h"
#include "server/rpc/testing/fake_exchange.h"

namespace fleetd::server::rpc::door {
namespace {

using ::fleetd::server::testing::FakeExchange;
using ::testing::HasSubstr;
using ::testing::Optional;

// The service behind CORS: answers 200 with "served" and records the calls.
class CorsTest : public ::testing::Test {
 protected:
  http::ExchangeHandler Handler(std::vector<std::string> origins) {
    return WithCors({std::move(origins), absl::Hours(2)},
                    [this](std::shared_ptr<http::Exchange> exchange)
                        -> std::unique_ptr<http::RequestObserver> {
                      ++served_;
                      exchange->SendHeaders(
                          200, {{"content-type", "application/proto"}}, false);
                      exchange->SendData("served", true);
                      return http::IgnoreBody();
                    });
  }

  std::shared_ptr<FakeExchange> Run(const http::ExchangeHandler& handler,
                                    std::string method, http::Headers headers) {
    auto exchange = std::make_shared<FakeExchange>(
        std::move(method), "/fleetd.v1.SyncService/SyncMetrics",
        std::move(headers), http::HttpVersion::kHttp2);
    std::unique_ptr<http::RequestObserver> observer = handler(exchange);
    EXPECT_NE(observer, nullptr);
    observer->OnEnd();
    EXPECT_TRUE(exchange->WaitForEnd());
    return exchange;
  }

  int served_ = 0;
};

constexpr char kConsole[] = "https://console.example.com";

TEST_F(CorsTest, PreflightFromAnAllowedOriginIsAnsweredHere) {
  auto handler = Handler({kConsole});
  auto ex = Run(handler, "OPTIONS",
                {{"origin", kConsole},
                 {"access-control-request-method", "POST"},
                 {"access-control-request-headers",
                  "content-type,connect-protocol-version,x-api-key"}});
  EXPECT_EQ(ex->status(), 204);
  EXPECT_EQ(ex->header("access-control-allow-origin"), kConsole);
  EXPECT_THAT(ex->header("access-control-allow-methods"),
              Optional(HasSubstr("POST")));
  for (const char* name : {"content-type", "connect-protocol-version",
                           "x-api-key", "grpc-timeout", "x-grpc-web"}) {
    EXPECT_THAT(ex->header("access-control-allow-headers"),
                Optional(HasSubstr(name)));
  }
  EXPECT_EQ(ex->header("access-control-max-age"), "7200");
  EXPECT_THAT(ex->header("vary"), Optional(HasSubstr("Origin")));
  EXPECT_EQ(served_, 0) << "a preflight must not reach the service";
}

TEST_F(CorsTest, PreflightFromAnotherOriginOrForAnotherMethodIsRefused) {
  auto handler = Handler({kConsole});
  auto other = Run(handler, "OPTIONS",
                   {{"origin", "https://evil.example"},
                    {"access-control-request-method", "POST"}});
  EXPECT_EQ(other->status(), 403);
  EXPECT_EQ(other->header("access-control-allow-origin"), std::nullopt);
  auto put =
      Run(handler, "OPTIONS",
          {{"origin", kConsole}, {"access-control-request-method", "PUT"}});
  EXPECT_EQ(put->status(), 403);
  EXPECT_EQ(served_, 0);
}

TEST_F(CorsTest, AllowedOriginGetsCorsHeadersOnTheResponse) {
  auto handler = Handler({"https://a.example", kConsole});
  auto ex = Run(handler, "POST", {{"origin", kConsole}});
  EXPECT_EQ(served_, 1);
  EXPECT_EQ(ex->status(), 200);
  EXPECT_EQ(ex->body(), "served");
  EXPECT_EQ(ex->header("content-type"), "application/proto");
  EXPECT_EQ(ex->header("access-control-allow-origin"), kConsole);
  EXPECT_EQ(ex->header("vary"), "Origin");
  for (const char* name : {"grpc-status", "grpc-message", "retry-after",
                           "trailer-fleetd-verdict"}) {
    EXPECT_THAT(ex->header("access-control-expose-headers"),
                Optional(HasSubstr(name)));
  }
  EXPECT_EQ(ex->header("access-control-allow-credentials"), std::nullopt);
}

TEST_F(CorsTest, OtherOriginsAndRequestsWithoutOriginPassUntouched) {
  auto handler = Handler({kConsole});
  auto other = Run(handler, "POST", {{"origin", "https://evil.example"}});
  auto device = Run(handler, "POST", {});
  EXPECT_EQ(served_, 2) << "the API key, not CORS, decides a call";
  for (const auto& ex : {other, device}) {
    EXPECT_EQ(ex->status(), 200);
    EXPECT_EQ(ex->header("access-control-allow-origin"), std::nullopt);
  }
}

TEST_F(CorsTest, WildcardAllowsAnyOrigin) {
  auto handler = Handler({"*"});
  auto ex = Run(handler, "POST", {{"origin", "https://anywhere.example"}});
  EXPECT_EQ(ex->header("access-control-allow-origin"), "*");
  auto preflight = Run(handler, "OPTIONS",
                       {{"origin", "https://anywhere.example"},
                        {"access-control-request-method", "GET"}});
  EXPECT_EQ(preflight->status(), 204);
}

TEST_F(CorsTest, NoOriginsMeansCorsOff) {
  auto handler = Handler({});
  auto preflight =
      Run(handler, "OPTIONS",
          {{"origin", kConsole}, {"access-control-request-method", "POST"}});
  // The service answers it (the front door's service says 405 there).
  EXPECT_EQ(served_, 1);
  EXPECT_EQ(preflight->header("access-control-allow-origin"), std::nullopt);
}

}  // namespace
}  // namespace fleetd::server::rpc::door
