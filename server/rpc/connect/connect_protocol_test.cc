#include "server/rpc/connect/connect_protocol.h"

#include <string>

#include "absl/strings/escaping.h"
#include "common/testing/status_matchers.h"
#include "fleetd/v1/sync.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::server::rpc::connect {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::IsOkAndHolds;
using ::fleetd::testing::StatusIs;
using ::testing::HasSubstr;

TEST(ConnectErrorTest, CodeNamesAndHttpStatusesFollowTheSpecTable) {
  struct Row {
    absl::StatusCode code;
    const char* name;
    int http;
  };
  const Row rows[] = {
      {absl::StatusCode::kCancelled, "canceled", 499},
      {absl::StatusCode::kUnknown, "unknown", 500},
      {absl::StatusCode::kInvalidArgument, "invalid_argument", 400},
      {absl::StatusCode::kDeadlineExceeded, "deadline_exceeded", 504},
      {absl::StatusCode::kNotFound, "not_found", 404},
      {absl::StatusCode::kAlreadyExists, "already_exists", 409},
      {absl::StatusCode::kPermissionDenied, "permission_denied", 403},
      {absl::StatusCode::kResourceExhausted, "resource_exhausted", 429},
      {absl::StatusCode::kFailedPrecondition, "failed_precondition", 400},
      {absl::StatusCode::kAborted, "aborted", 409},
      {absl::StatusCode::kOutOfRange, "out_of_range", 400},
      {absl::StatusCode::kUnimplemented, "unimplemented", 501},
      {absl::StatusCode::kInternal, "internal", 500},
      {absl::StatusCode::kUnavailable, "unavailable", 503},
      {absl::StatusCode::kDataLoss, "data_loss", 500},
      {absl::StatusCode::kUnauthenticated, "unauthenticated", 401},
  };
  for (const Row& row : rows) {
    EXPECT_EQ(CodeName(row.code), row.name);
    EXPECT_EQ(HttpStatusFor(row.code), row.http) << row.name;
  }
}

TEST(ConnectErrorTest, ErrorJsonHasCodeAndOptionalMessage) {
  EXPECT_EQ(ErrorJson(absl::UnavailableError("overloaded")),
            R"({"code":"unavailable","message":"overloaded"})");
  EXPECT_EQ(ErrorJson(absl::PermissionDeniedError("")),
            R"({"code":"permission_denied"})");
  // Invalid UTF-8 is replaced, not an exception.
  std::string json = ErrorJson(absl::InternalError("bad \xff byte"));
  EXPECT_THAT(json, HasSubstr(R"("code":"internal")"));
}

TEST(ConnectErrorTest, EndStreamJsonCarriesErrorAndMetadata) {
  EXPECT_EQ(EndStreamJson(absl::OkStatus(), {}), "{}");
  EXPECT_EQ(EndStreamJson(absl::ResourceExhaustedError("slow down"),
                          {{"retry-after-ms", "1500"}}),
            R"({"error":{"code":"resource_exhausted","message":"slow down"},)"
            R"("metadata":{"retry-after-ms":["1500"]}})");
}

TEST(EnvelopeTest, RoundTripsAndRejectsTruncatedOrOversized) {
  std::string body;
  AppendEnvelope(0, "abc", &body);
  AppendEnvelope(kFlagCompressed, std::string(300, 'z'), &body);
  EXPECT_EQ(body.substr(0, 5), std::string("\x00\x00\x00\x00\x03", 5));
  EXPECT_EQ(body.substr(8, 5), std::string("\x01\x00\x00\x01\x2c", 5));
  absl::StatusOr<std::vector<Envelope>> parsed = ParseEnvelopes(body, 1000);
  ASSERT_THAT(parsed, IsOk());
  ASSERT_EQ(parsed->size(), 2u);
  EXPECT_EQ((*parsed)[0].flags, 0);
  EXPECT_EQ((*parsed)[0].payload, "abc");
  EXPECT_EQ((*parsed)[1].flags, kFlagCompressed);
  EXPECT_EQ((*parsed)[1].payload.size(), 300u);

  EXPECT_THAT(ParseEnvelopes(body.substr(0, 3), 1000),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("")));
  EXPECT_THAT(
      ParseEnvelopes(body.substr(0, body.size() - 1), 1000),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("declares")));
  EXPECT_THAT(ParseEnvelopes(body, 100),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("300")));
  EXPECT_THAT(ParseEnvelopes("", 10), IsOk());
}

TEST(ContentTypeTest, ClassifiesConnectAndGrpcWebTypes) {
  auto check = [](const char* header, WireProtocol protocol, Codec codec) {
    std::optional<ContentType> type = ClassifyContentType(header);
    ASSERT_TRUE(type.has_value()) << header;
    EXPECT_EQ(type->protocol, protocol) << header;
    EXPECT_EQ(type->codec, codec) << header;
  };
  check("application/proto", WireProtocol::kConnectUnary, Codec::kProto);
  check("Application/JSON; charset=utf-8", WireProtocol::kConnectUnary,
        Codec::kJson);
  check("application/connect+proto", WireProtocol::kConnectStream,
        Codec::kProto);
  check("application/connect+json", WireProtocol::kConnectStream, Codec::kJson);
  check("application/grpc-web", WireProtocol::kGrpcWeb, Codec::kProto);
  check("application/grpc-web+proto", WireProtocol::kGrpcWeb, Codec::kProto);
  check("application/grpc-web+json", WireProtocol::kGrpcWeb, Codec::kJson);
  check("application/grpc-web-text", WireProtocol::kGrpcWebText, Codec::kProto);
  EXPECT_EQ(ClassifyContentType("application/json")->response_type,
            "application/json");
  for (const char* other :
       {"", "text/plain", "application/grpc", "application/connect+xml",
        "application/protobuf"}) {
    EXPECT_FALSE(ClassifyContentType(other).has_value()) << other;
  }
}

TEST(CompressionTest, ParsesCodingsAndRefusesUnknownAsUnimplemented) {
  EXPECT_THAT(ParseContentCoding(""), IsOkAndHolds(Compression::kNone));
  EXPECT_THAT(ParseContentCoding("identity"), IsOkAndHolds(Compression::kNone));
  EXPECT_THAT(ParseContentCoding("GZIP"), IsOkAndHolds(Compression::kGzip));
  EXPECT_THAT(ParseContentCoding("zstd"), IsOkAndHolds(Compression::kZstd));
  EXPECT_THAT(ParseContentCoding("br"),
              StatusIs(absl::StatusCode::kUnimplemented,
                       HasSubstr("gzip, zstd, identity")));
}

TEST(CompressionTest, NegotiatesInClientOrderSkippingRefusedAndUnknown) {
  EXPECT_EQ(NegotiateCompression("br, zstd, gzip", Compression::kNone),
            Compression::kZstd);
  EXPECT_EQ(NegotiateCompression("gzip;q=0, zstd;q=0.5", Compression::kNone),
            Compression::kZstd);
  EXPECT_EQ(NegotiateCompression("br", Compression::kGzip), Compression::kNone);
  EXPECT_EQ(NegotiateCompression("identity, gzip", Compression::kNone),
            Compression::kNone);
  // No Accept-Encoding: the client accepts what it sent.
  EXPECT_EQ(NegotiateCompression(std::nullopt, Compression::kGzip),
            Compression::kGzip);
  EXPECT_EQ(NegotiateCompression(std::nullopt, Compression::kNone),
            Compression::kNone);
}

TEST(TimeoutTest, ParsesConnectTimeoutMs) {
  EXPECT_THAT(ParseConnectTimeout("5000"),
              IsOkAndHolds(absl::Milliseconds(5000)));
  EXPECT_THAT(ParseConnectTimeout("9999999999"),
              IsOkAndHolds(absl::Milliseconds(9999999999)));
  for (const char* bad : {"", "12345678901", "-1", "1.5", "abc", " 5"}) {
    EXPECT_THAT(ParseConnectTimeout(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("")))
        << bad;
  }
}

TEST(TimeoutTest, ParsesGrpcTimeout) {
  EXPECT_THAT(ParseGrpcTimeout("100m"), IsOkAndHolds(absl::Milliseconds(100)));
  EXPECT_THAT(ParseGrpcTimeout("2H"), IsOkAndHolds(absl::Hours(2)));
  EXPECT_THAT(ParseGrpcTimeout("3S"), IsOkAndHolds(absl::Seconds(3)));
  EXPECT_THAT(ParseGrpcTimeout("7u"), IsOkAndHolds(absl::Microseconds(7)));
  for (const char* bad : {"", "m", "10", "10x", "123456789S"}) {
    EXPECT_THAT(ParseGrpcTimeout(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("")))
        << bad;
  }
}

TEST(GrpcWebTest, TrailersPercentEncodeTheMessage) {
  EXPECT_EQ(PercentEncodeGrpcMessage("50% off\n\xc3\xa9"),
            "50%25 off%0A%C3%A9");
  EXPECT_EQ(GrpcWebTrailers(absl::OkStatus(), {}), "grpc-status: 0\r\n");
  EXPECT_EQ(GrpcWebTrailers(absl::UnavailableError("down 100%"),
                            {{"retry-after-ms", "20"}}),
            "grpc-status: 14\r\ngrpc-message: down 100%25\r\n"
            "retry-after-ms: 20\r\n");
}

TEST(GrpcWebTest, DecodesConcatenatedPaddedBase64Chunks) {
  std::string body = absl::Base64Escape("ab") + absl::Base64Escape("cde") +
                     absl::Base64Escape("f");
  EXPECT_THAT(DecodeGrpcWebText(body), IsOkAndHolds(std::string("abcdef")));
  EXPECT_THAT(DecodeGrpcWebText("!!!"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("")));
}

TEST(MessageCodecTest, JsonUsesCamelCaseOutAndAcceptsBothNamesIn) {
  v1::SyncMetricsResponse response;
  response.set_success(true);
  response.set_last_sequence_ack(42);
  absl::StatusOr<std::string> json = EncodeMessage(Codec::kJson, response);
  ASSERT_THAT(json, IsOk());
  EXPECT_EQ(*json, R"({"success":true,"lastSequenceAck":"42"})");

  v1::SyncMetricsRequest request;
  ASSERT_THAT(DecodeMessage(Codec::kJson,
                            R"({"metadata":{"device_id":"a",)"
                            R"("sequenceNumber":"7"},"someNewField":1})",
                            &request),
              IsOk());
  EXPECT_EQ(request.metadata().device_id(), "a");
  EXPECT_EQ(request.metadata().sequence_number(), 7);

  EXPECT_THAT(
      DecodeMessage(Codec::kJson, "", &request),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("zero-length")));
  EXPECT_THAT(DecodeMessage(Codec::kJson, "{not json", &request),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("fleetd.v1.SyncMetricsRequest")));
}

TEST(MessageCodecTest, ProtoRoundTripsAndRejectsGarbage) {
  v1::GetSyncConfigRequest request;
  request.set_device_id("dev");
  absl::StatusOr<std::string> bytes = EncodeMessage(Codec::kProto, request);
  ASSERT_THAT(bytes, IsOk());
  v1::GetSyncConfigRequest decoded;
  ASSERT_THAT(DecodeMessage(Codec::kProto, *bytes, &decoded), IsOk());
  EXPECT_EQ(decoded.device_id(), "dev");
  EXPECT_THAT(DecodeMessage(Codec::kProto, "", &decoded), IsOk());
  EXPECT_THAT(DecodeMessage(Codec::kProto, "\xff\xff\xff", &decoded),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("")));
}

TEST(GetMessageTest, DecodesUrlSafeAndStandardBase64WithOrWithoutPadding) {
  std::string raw = "\xfb\xff\x01";
  std::string url_safe = absl::WebSafeBase64Escape(raw);  // unpadded
  std::string standard = absl::Base64Escape(raw);         // padded
  EXPECT_THAT(DecodeGetMessage(url_safe, true), IsOkAndHolds(raw));
  EXPECT_THAT(DecodeGetMessage(standard, true), IsOkAndHolds(raw));
  EXPECT_THAT(DecodeGetMessage(R"({"a":1})", false),
              IsOkAndHolds(std::string(R"({"a":1})")));
  EXPECT_THAT(DecodeGetMessage("*", true),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("")));
}

}  // namespace
}  // namespace fleetd::server::rpc::connect
