// A recording http::Exchange for tests of ExchangeHandlers (the front door's
// protocol layer and its wrappers), without an HTTP engine: the test calls the
// handler with it and drives the returned observer itself.
#ifndef FLEETD_SERVER_RPC_TESTING_FAKE_EXCHANGE_H_
#define FLEETD_SERVER_RPC_TESTING_FAKE_EXCHANGE_H_

#include <cstddef>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "server/rpc/http/exchange.h"

namespace fleetd::server::testing {

using rpc::http::Headers;
using rpc::http::HttpVersion;

// Records the response of one exchange; the test waits (with a deadline) for
// its end. Like the real ones, response calls after the end or after the
// exchange was cancelled do nothing (they are counted).
class FakeExchange final : public rpc::http::Exchange {
 public:
  FakeExchange(std::string method, std::string path, Headers headers,
               HttpVersion version, std::string peer = "192.0.2.7:4711")
      : method_(std::move(method)),
        path_(std::move(path)),
        headers_(std::move(headers)),
        version_(version),
        peer_(std::move(peer)) {}

  const std::string& method() const override { return method_; }
  const std::string& path() const override { return path_; }
  const Headers& headers() const override { return headers_; }
  const std::string& authority() const override { return authority_; }
  HttpVersion version() const override { return version_; }
  const std::string& peer() const override { return peer_; }
  bool secure() const override { return true; }

  void SendHeaders(int status, Headers headers, bool end_stream) override {
    absl::MutexLock lock(&mu_);
    if (Ignored()) return;
    EXPECT_EQ(status_, 0) << "SendHeaders twice";
    status_ = status;
    headers_sent_ = std::move(headers);
    headers_ended_ = end_stream;
    ended_ = end_stream;
  }
  void SendData(std::string data, bool end_stream) override {
    absl::MutexLock lock(&mu_);
    if (Ignored()) return;
    EXPECT_NE(status_, 0) << "SendData before SendHeaders";
    body_ += data;
    ended_ = end_stream;
  }
  void SendTrailers(Headers trailers) override {
    absl::MutexLock lock(&mu_);
    if (Ignored()) return;
    EXPECT_NE(status_, 0) << "SendTrailers before SendHeaders";
    trailers_ = std::move(trailers);
    ended_ = true;
  }
  void Reset(bool internal_error) override {
    absl::MutexLock lock(&mu_);
    if (Ignored()) return;
    reset_ = true;
    ended_ = true;
  }

  void ConsumeRequest(size_t bytes) override {
    absl::MutexLock lock(&mu_);
    consumed_ += bytes;
  }
  size_t consumed() const {
    absl::MutexLock lock(&mu_);
    return consumed_;
  }

  // The client went away: later response calls do nothing.
  void Cancel() {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
  }

  bool WaitForEnd(absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&ended_), timeout);
  }
  // Waits for a response call that was ignored (after Cancel).
  bool WaitForIgnored(absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(
                                    +[](int* n) { return *n > 0; }, &ignored_),
                                timeout);
  }

  bool ended() const {
    absl::MutexLock lock(&mu_);
    return ended_;
  }
  int status() const {
    absl::MutexLock lock(&mu_);
    return status_;
  }
  bool headers_ended() const {
    absl::MutexLock lock(&mu_);
    return headers_ended_;
  }
  std::string body() const {
    absl::MutexLock lock(&mu_);
    return body_;
  }
  std::optional<std::string> header(absl::string_view name) const {
    absl::MutexLock lock(&mu_);
    std::optional<absl::string_view> value =
        rpc::http::FindHeader(headers_sent_, name);
    if (!value.has_value()) return std::nullopt;
    return std::string(*value);
  }
  std::optional<std::string> trailer(absl::string_view name) const {
    absl::MutexLock lock(&mu_);
    std::optional<absl::string_view> value =
        rpc::http::FindHeader(trailers_, name);
    if (!value.has_value()) return std::nullopt;
    return std::string(*value);
  }
  bool has_trailers() const {
    absl::MutexLock lock(&mu_);
    return !trailers_.empty();
  }
  int ignored() const {
    absl::MutexLock lock(&mu_);
    return ignored_;
  }

 private:
  bool Ignored() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!cancelled_ && !ended_) return false;
    ++ignored_;
    return true;
  }

  const std::string method_;
  const std::string path_;
  const Headers headers_;
  const std::string authority_ = "fleet.test";
  const HttpVersion version_;
  const std::string peer_;

  mutable absl::Mutex mu_;
  int status_ ABSL_GUARDED_BY(mu_) = 0;
  Headers headers_sent_ ABSL_GUARDED_BY(mu_);
  bool headers_ended_ ABSL_GUARDED_BY(mu_) = false;
  std::string body_ ABSL_GUARDED_BY(mu_);
  Headers trailers_ ABSL_GUARDED_BY(mu_);
  bool reset_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  int ignored_ ABSL_GUARDED_BY(mu_) = 0;
  size_t consumed_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace fleetd::server::testing

#endif  // FLEETD_SERVER_RPC_TESTING_FAKE_EXCHANGE_H_
