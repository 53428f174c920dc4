#include "server/rpc/door/health.h"

#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/rpc/http/exchange.h"
#include "server/rpc/testing/fake_exchange.h"

namespace fleetd::server::rpc::door {
namespace {

using ::fleetd::server::testing::FakeExchange;
using ::testing::HasSubstr;
using ::testing::Optional;

// One gRPC envelope around `message`.
std::string Envelope(const std::string& message) {
  std::string out(5, '\0');
  out[4] = static_cast<char>(message.size());
  return out + message;
}

// HealthCheckRequest{service: `service`}.
std::string Request(const std::string& service) {
  return std::string("\x0a", 1) + static_cast<char>(service.size()) + service;
}

class HealthTest : public ::testing::Test {
 protected:
  HealthTest()
      : handler_(WithGrpcHealth([this](std::shared_ptr<http::Exchange> e)
                                    -> std::unique_ptr<http::RequestObserver> {
          ++inner_calls_;
          e->SendHeaders(404, {}, true);
          return http::IgnoreBody();
        })) {}

  std::shared_ptr<FakeExchange> Call(
      std::string body, std::string path = kHealthCheckPath,
      std::string content_type = "application/grpc",
      http::HttpVersion version = http::HttpVersion::kHttp2) {
    auto exchange = std::make_shared<FakeExchange>(
        "POST", std::move(path), http::Headers{{"content-type", content_type}},
        version);
    std::unique_ptr<http::RequestObserver> observer = handler_(exchange);
    EXPECT_NE(observer, nullptr);
    // In two pieces, as a stream may deliver it.
    observer->OnData(body.substr(0, 3));
    if (body.size() > 3) observer->OnData(body.substr(3));
    observer->OnEnd();
    EXPECT_TRUE(exchange->WaitForEnd());
    return exchange;
  }

  http::ExchangeHandler handler_;
  int inner_calls_ = 0;
};

TEST_F(HealthTest, ServerAndSyncServiceAreServing) {
  for (const std::string service : {"", "fleetd.v1.SyncService"}) {
    std::shared_ptr<FakeExchange> e = Call(Envelope(Request(service)));
    EXPECT_EQ(e->status(), 200);
    EXPECT_THAT(e->header("content-type"),
                Optional(std::string("application/grpc")));
    EXPECT_EQ(e->body(), Envelope(std::string("\x08\x01", 2))) << service;
    EXPECT_THAT(e->trailer("grpc-status"), Optional(std::string("0")));
  }
  // An empty message is the same request as service "".
  EXPECT_EQ(Call(Envelope(""))->body(), Envelope(std::string("\x08\x01", 2)));
  EXPECT_EQ(inner_calls_, 0);
}

TEST_F(HealthTest, UnknownServiceIsNotFound) {
  std::shared_ptr<FakeExchange> e = Call(Envelope(Request("other.Service")));
  EXPECT_EQ(e->status(), 200);
  EXPECT_TRUE(e->headers_ended());  // trailers-only
  EXPECT_THAT(e->header("grpc-status"), Optional(std::string("5")));
  EXPECT_THAT(e->header("grpc-message"), Optional(HasSubstr("other.Service")));
}

TEST_F(HealthTest, UnknownFieldsAreSkipped) {
  // Field 2 (varint 7) before the service.
  std::string message = std::string("\x10\x07", 2) + Request("");
  EXPECT_EQ(Call(Envelope(message))->body(),
            Envelope(std::string("\x08\x01", 2)));
}

TEST_F(HealthTest, MalformedRequestsAreRefusedWithTheirCode) {
  // A truncated string field.
  EXPECT_THAT(Call(Envelope(std::string("\x0a\x05"
                                        "ab",
                                        4)))
                  ->header("grpc-status"),
              Optional(std::string("3")));
  // Not a whole envelope, and two envelopes.
  EXPECT_THAT(Call(std::string("\0\0", 2))->header("grpc-status"),
              Optional(std::string("3")));
  EXPECT_THAT(Call(Envelope("") + Envelope(""))->header("grpc-status"),
              Optional(std::string("3")));
  // Compressed.
  std::string compressed = Envelope("");
  compressed[0] = 1;
  EXPECT_THAT(Call(compressed)->header("grpc-status"),
              Optional(std::string("12")));
  // Too large.
  std::string huge = std::string(kMaxHealthRequestBytes + 10, '\0');
  EXPECT_THAT(Call(huge)->header("grpc-status"), Optional(std::string("8")));
}

TEST_F(HealthTest, OnlyGrpcOverHttp2) {
  EXPECT_EQ(Call(Envelope(""), kHealthCheckPath, "application/grpc",
                 http::HttpVersion::kHttp11)
                ->status(),
            505);
  EXPECT_EQ(Call(Envelope(""), kHealthCheckPath, "application/json")->status(),
            415);
  EXPECT_EQ(inner_calls_, 0);
}

TEST_F(HealthTest, OtherPathsReachTheInnerHandler) {
  EXPECT_EQ(Call(Envelope(""), "/grpc.health.v1.Health/Watch")->status(), 404);
  EXPECT_EQ(Call(Envelope(""), "/fleetd.v1.SyncService/SyncMetrics")->status(),
            404);
  EXPECT_EQ(inner_calls_, 2);
}

}  // namespace
}  // namespace fleetd::server::rpc::door
