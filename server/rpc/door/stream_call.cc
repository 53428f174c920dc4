#include "server/rpc/door/stream_call.h"

#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/status/retry_after.h"
#include "fleetd/v1/sync.pb.h"
#include "glog/logging.h"
#include "server/rpc/connect/connect_protocol.h"
#include "server/rpc/connect/procedures.h"

namespace fleetd::server::rpc::door {
namespace {

constexpr char kFrontEnd[] = "front door";
constexpr char kMethod[] = "StreamSync";

// Splits a request body into envelopes as its bytes arrive; for
// grpc-web-text the base64 is decoded first, whole 4-character groups at a
// time (a client may pad every chunk it sends).
class EnvelopeReader {
 public:
  EnvelopeReader(bool base64, size_t max_payload)
      : base64_(base64), max_payload_(max_payload) {}

  // Appends `chunk` and moves every envelope it completes to `out`.
  // INVALID_ARGUMENT for bad base64, RESOURCE_EXHAUSTED for an envelope
  // declaring more than `max_payload` bytes.
  absl::Status Feed(absl::string_view chunk,
                    std::vector<connect::Envelope>* out) {
    if (base64_) {
      text_.append(chunk.data(), chunk.size());
      size_t whole = text_.size() - text_.size() % 4;
      if (whole == 0) return absl::OkStatus();
      absl::StatusOr<std::string> bytes =
          connect::DecodeGrpcWebText(absl::string_view(text_).substr(0, whole));
      if (!bytes.ok()) return bytes.status();
      text_.erase(0, whole);
      bytes_.append(*bytes);
    } else {
      bytes_.append(chunk.data(), chunk.size());
    }
    size_t at = 0;
    while (bytes_.size() - at >= connect::kEnvelopeHeaderBytes) {
      const auto* p =
          reinterpret_cast<const unsigned char*>(bytes_.data() + at);
      const size_t length = (size_t{p[1]} << 24) | (size_t{p[2]} << 16) |
                            (size_t{p[3]} << 8) | size_t{p[4]};
      if (length > max_payload_) {
        return absl::ResourceExhaustedError(
            absl::StrCat("stream message of ", length,
                         " bytes is larger than the limit of ", max_payload_));
      }
      if (bytes_.size() - at - connect::kEnvelopeHeaderBytes < length) break;
      out->push_back(
          {p[0], bytes_.substr(at + connect::kEnvelopeHeaderBytes, length)});
      at += connect::kEnvelopeHeaderBytes + length;
    }
    bytes_.erase(0, at);
    return absl::OkStatus();
  }

  // True when nothing of a next envelope has arrived.
  bool AtBoundary() const { return bytes_.empty() && text_.empty(); }

 private:
  const bool base64_;
  const size_t max_payload_;
  std::string text_;   // base64 not decoded yet (under 4 characters)
  std::string bytes_;  // the start of an envelope not complete yet
};

class StreamCall final : public StreamSink,
                         public std::enable_shared_from_this<StreamCall> {
 public:
  StreamCall(std::shared_ptr<http::Exchange> exchange, Protocol protocol,
             CallContext context, Compression request_coding,
             Compression response_coding, const StreamCallOptions& options)
      : exchange_(std::move(exchange)),
        protocol_(std::move(protocol)),
        context_(std::move(context)),
        request_coding_(request_coding),
        response_coding_(response_coding),
        options_(options),
        reader_(protocol_.wire == Wire::kGrpcWebText,
                static_cast<size_t>(options.max_message_bytes)) {}

  // ---- On the strand ----

  void Start() {
    {
      absl::MutexLock lock(&mu_);
      scheduled_ = true;
      if (options_.timers != nullptr &&
          context_.deadline != absl::InfiniteFuture()) {
        // The deadline is on the wall clock; timers run on the monotonic one.
        const absl::Duration left = context_.deadline - options_.clock->Now();
        timer_ = options_.timers->Schedule(
            options_.clock->MonotonicNow() + left, [weak = weak_from_this()] {
              if (std::shared_ptr<StreamCall> self = weak.lock()) {
                self->OnDeadline();
              }
            });
      }
    }
    absl::Status submitted =
        options_.workers->Submit([self = shared_from_this()](absl::Status run) {
          self->Pump(std::move(run));
        });
    if (submitted.ok()) return;
    absl::MutexLock lock(&mu_);
    scheduled_ = false;
    finished_ = true;  // no session was opened: nothing is owed
    RespondLocked(Refusal(submitted));
  }

  void OnData(absl::string_view chunk) {
    std::vector<connect::Envelope> envelopes;
    absl::Status read = reader_.Feed(chunk, &envelopes);
    absl::MutexLock lock(&mu_);
    if (closed_ || !failure_.ok()) return;
    for (connect::Envelope& envelope : envelopes) {
      if ((envelope.flags & ~connect::kFlagCompressed) != 0) {
        read = absl::InvalidArgumentError(
            absl::StrCat("protocol error: request envelope with flags 0x",
                         absl::Hex(envelope.flags)));
        break;
      }
      inbox_.push_back(std::move(envelope));
    }
    if (!read.ok()) {
      failure_ = read;
      ScheduleLocked(WorkerPool::Admission::kAlways);
      return;
    }
    // Bytes that complete no waiting message are acknowledged now; once a
    // message waits for the session, the client is held (see the header).
    if (inbox_.empty()) {
      exchange_->ConsumeRequest(chunk.size());
    } else {
      held_bytes_ += chunk.size();
      ScheduleLocked(WorkerPool::Admission::kBounded);
    }
  }

  void OnEnd() {
    bool complete = reader_.AtBoundary();
    absl::MutexLock lock(&mu_);
    input_ended_ = true;
    if (!complete && failure_.ok()) {
      failure_ = absl::InvalidArgumentError(
          "protocol error: request body ended inside a message");
    }
    ScheduleLocked(WorkerPool::Admission::kAlways);
  }

  void OnCancel() {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    closed_ = true;  // the answer goes nowhere now
    ScheduleLocked(WorkerPool::Admission::kAlways);
  }

  // ---- On the timer thread ----

  void OnDeadline() {
    absl::MutexLock lock(&mu_);
    timer_ = {};
    if (finished_ || closed_) return;
    if (failure_.ok()) {
      failure_ = absl::DeadlineExceededError("stream deadline passed");
    }
    ScheduleLocked(WorkerPool::Admission::kAlways);
  }

  // ---- StreamSink: any thread ----

  bool Send(const v1::StreamSyncResponse& response) override {
    absl::StatusOr<std::string> message =
        connect::EncodeMessage(protocol_.codec, response);
    if (!message.ok()) {
      LOG(ERROR) << "front door StreamSync: cannot encode a response: "
                 << message.status();
      return false;
    }
    std::string frame;
    AppendMessage(response_coding_, *message, &frame);
    absl::MutexLock lock(&mu_);
    if (closed_) return false;
    SendHeadersLocked();
    exchange_->SendData(Encoded(std::move(frame)), false);
    return true;
  }

 private:
  // ---- On a worker, one Pump at a time ----

  void Pump(absl::Status run) {
    if (!run.ok()) {
      // The pool shut down with this task queued: end here, on the
      // Shutdown thread.
      absl::MutexLock lock(&mu_);
      if (failure_.ok())
        failure_ = absl::UnavailableError("server shutting down");
    }
    if (!opened_ && !Open()) return;
    for (;;) {
      connect::Envelope envelope;
      {
        absl::MutexLock lock(&mu_);
        if (!run.ok() || !failure_.ok() || cancelled_) break;
        if (inbox_.empty()) {
          if (input_ended_) break;
          scheduled_ = false;
          return;
        }
        envelope = std::move(inbox_.front());
        inbox_.pop_front();
        if (inbox_.empty() && held_bytes_ > 0) {
          exchange_->ConsumeRequest(held_bytes_);
          held_bytes_ = 0;
        }
      }
      absl::Status handled = Handle(envelope);
      if (!handled.ok()) {
        absl::MutexLock lock(&mu_);
        if (failure_.ok()) failure_ = std::move(handled);
      }
    }
    absl::Status finished = session_->Finish();
    session_.reset();
    absl::MutexLock lock(&mu_);
    finished_ = true;
    scheduled_ = false;
    RespondLocked(failure_.ok() ? finished : failure_);
  }

  // Opens the session; false when the call ended instead.
  bool Open() {
    opened_ = true;
    absl::Status refused;
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_) {
        refused = absl::CancelledError("client cancelled the stream");
      } else if (!failure_.ok()) {
        refused = failure_;
      } else if (options_.clock->Now() >= context_.deadline) {
        refused = absl::DeadlineExceededError(
            "deadline passed while the stream waited for a worker");
      }
    }
    if (refused.ok()) {
      absl::StatusOr<std::unique_ptr<StreamSession>> session =
          options_.handler->OpenStream(context_, this);
      if (session.ok()) {
        session_ = *std::move(session);
        absl::MutexLock lock(&mu_);
        if (!closed_) SendHeadersLocked();
        return true;
      }
      refused = session.status();
    }
    absl::MutexLock lock(&mu_);
    finished_ = true;
    scheduled_ = false;
    RespondLocked(refused);
    return false;
  }

  // Decodes one message and hands it to the session.
  absl::Status Handle(const connect::Envelope& envelope) {
    if (options_.clock->Now() >= context_.deadline) {
      return absl::DeadlineExceededError("stream deadline passed");
    }
    absl::StatusOr<std::string> bytes = EnvelopeMessage(
        envelope, request_coding_,
        protocol_.wire == Wire::kConnectStream ? "connect-content-encoding"
                                               : "grpc-encoding",
        options_.max_message_bytes, kFrontEnd);
    if (!bytes.ok()) return bytes.status();
    v1::StreamSyncRequest request;
    absl::Status decoded =
        connect::DecodeMessage(protocol_.codec, *bytes, &request);
    if (!decoded.ok()) return decoded;
    return session_->OnRequest(request);
  }

  // ---- Shared ----

  absl::Status Refusal(const absl::Status& submitted) const {
    if (absl::IsResourceExhausted(submitted)) {
      LOG_EVERY_T(WARNING, 1)
          << "front door StreamSync: refusing work, " << submitted.message();
      return WithRetryAfter(
          absl::ResourceExhaustedError("server overloaded: every worker is "
                                       "busy and the call queue is full"),
          options_.overload_retry_after);
    }
    return absl::UnavailableError("server shutting down");
  }

  // Makes sure a Pump will run: submits one unless one is queued or running,
  // or the call is over. A refused kBounded submission ends the call with
  // RESOURCE_EXHAUSTED, whose end is then submitted past the bound (the
  // session's Finish is owed).
  void ScheduleLocked(WorkerPool::Admission admission)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (scheduled_ || finished_) return;
    scheduled_ = true;
    auto task = [self = shared_from_this()](absl::Status run) {
      self->Pump(std::move(run));
    };
    absl::Status submitted = options_.workers->Submit(task, admission);
    if (!submitted.ok() && admission == WorkerPool::Admission::kBounded) {
      if (failure_.ok()) failure_ = Refusal(submitted);
      submitted =
          options_.workers->Submit(task, WorkerPool::Admission::kAlways);
    }
    if (!submitted.ok()) {
      // Only when the workers stopped before the door, which the front door
      // never does; the session's Finish is then left to its destructor.
      LOG(ERROR) << "front door StreamSync: workers stopped with a stream open";
      scheduled_ = false;
      finished_ = true;
      RespondLocked(absl::UnavailableError("server shutting down"));
    }
  }

  void SendHeadersLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (headers_sent_) return;
    headers_sent_ = true;
    http::Headers headers = {{"content-type", protocol_.response_type}};
    const bool connect = protocol_.wire == Wire::kConnectStream;
    if (connect) {
      headers.push_back({"connect-accept-encoding", connect::kAcceptedCodings});
    } else {
      headers.push_back({"grpc-accept-encoding", kGrpcAcceptEncoding});
    }
    if (response_coding_ != Compression::kNone) {
      headers.push_back({connect ? "connect-content-encoding" : "grpc-encoding",
                         std::string(CompressionName(response_coding_))});
    }
    exchange_->SendHeaders(200, std::move(headers), false);
  }

  std::string Encoded(std::string frame) const {
    if (protocol_.wire == Wire::kGrpcWebText) {
      return absl::Base64Escape(frame);
    }
    return frame;
  }

  // Ends the response with `status` in the protocol's form and counts the
  // call; nothing when the client left or the response ended already.
  void RespondLocked(const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (options_.calls != nullptr) {
      options_.calls
          ->WithLabels(
              {Label(protocol_.wire), kMethod,
               absl::StatusCodeToString(
                   cancelled_ ? absl::StatusCode::kCancelled : status.code())})
          .Increment();
    }
    if (timer_.id != 0) {
      options_.timers->Cancel(timer_);
      timer_ = {};
    }
    if (closed_) return;
    closed_ = true;
    switch (protocol_.wire) {
      case Wire::kGrpc:
        if (headers_sent_) {
          exchange_->SendTrailers(GrpcStatusFields(status));
        } else {
          SendGrpcTrailersOnly(*exchange_, protocol_.response_type, status);
        }
        return;
      case Wire::kGrpcWeb:
      case Wire::kGrpcWebText:
        SendHeadersLocked();
        exchange_->SendData(Encoded(GrpcWebTrailersFrame(status)), true);
        return;
      case Wire::kConnectStream:
      case Wire::kConnectUnary:
        SendHeadersLocked();
        exchange_->SendData(ConnectEndStreamFrame(status), true);
        return;
    }
  }

  const std::shared_ptr<http::Exchange> exchange_;
  const Protocol protocol_;
  const CallContext context_;
  const Compression request_coding_;
  const Compression response_coding_;
  const StreamCallOptions options_;

  EnvelopeReader reader_;  // the strand's

  absl::Mutex mu_;
  std::deque<connect::Envelope> inbox_ ABSL_GUARDED_BY(mu_);
  // Request bytes received but not acknowledged to the client yet.
  size_t held_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool scheduled_ ABSL_GUARDED_BY(mu_) = false;  // a Pump is queued/running
  bool finished_ ABSL_GUARDED_BY(mu_) = false;   // the call's end was decided
  bool input_ended_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  // Why the call ends, when it is not the session's own status.
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  bool headers_sent_ ABSL_GUARDED_BY(mu_) = false;
  // The response ended or the client left: Send returns false.
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  // The deadline's timer while scheduled (id 0: none).
  TimerQueue::Handle timer_ ABSL_GUARDED_BY(mu_);

  // The Pump's (one at a time, ordered by `scheduled_` under mu_). Declared
  // last, so the session (which may Send on this sink) goes first.
  bool opened_ = false;
  std::unique_ptr<StreamSession> session_;
};

// The exchange's observer: forwards to the call, which it keeps alive.
class StreamObserver final : public http::RequestObserver {
 public:
  explicit StreamObserver(std::shared_ptr<StreamCall> call)
      : call_(std::move(call)) {}
  void OnData(absl::string_view chunk) override { call_->OnData(chunk); }
  void OnEnd() override { call_->OnEnd(); }
  void OnCancel() override { call_->OnCancel(); }
  bool ControlsRequestWindow() const override { return true; }

 private:
  const std::shared_ptr<StreamCall> call_;
};

}  // namespace

std::unique_ptr<http::RequestObserver> StartStreamCall(
    std::shared_ptr<http::Exchange> exchange, Protocol protocol,
    CallContext context, Compression request_coding,
    Compression response_coding, const StreamCallOptions& options) {
  auto call = std::make_shared<StreamCall>(
      std::move(exchange), std::move(protocol), std::move(context),
      request_coding, response_coding, options);
  call->Start();
  return std::make_unique<StreamObserver>(std::move(call));
}

}  // namespace fleetd::server::rpc::door
