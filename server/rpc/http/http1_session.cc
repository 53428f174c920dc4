// HTTP/1.1 engine of the front door (session.h): Boost.Beast's request
// parser fed with the bytes the driver read, responses written by hand.
//
// One exchange at a time. Once a request is complete the session stops
// asking for bytes (WantsRead) until its response has ended; bytes of a
// following request that were already fed wait in `in_` and are parsed when
// the response ends. A response that ends before its request body was read
// closes the connection (the rest of the body is never parsed), so a handler
// may refuse a large body without reading it.
#include <algorithm>
#include <boost/asio/buffer.hpp>
#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/optional/optional.hpp>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/rpc/http/exchange.h"
#include "server/rpc/http/session.h"

namespace fleetd::server::rpc::http {
namespace {

namespace bhttp = boost::beast::http;
using boost::beast::error_code;
using BeastView = boost::beast::string_view;

absl::string_view View(BeastView s) { return {s.data(), s.size()}; }

// The standard reason phrase of `status`, empty for an unregistered code.
absl::string_view ReasonPhrase(int status) {
  bhttp::status known = bhttp::int_to_status(static_cast<unsigned>(status));
  if (known == bhttp::status::unknown) return {};
  return View(bhttp::obsolete_reason(known));
}

// An input buffer this large is released once empty, so that an idle
// keep-alive connection does not keep the memory of its largest request.
constexpr size_t kKeepBufferBytes = 4096;

// The request line and header fields, as parsed.
struct Http1Head {
  std::string method;
  std::string path;
  Headers headers;
  std::string authority;
  int version = 11;  // 10 or 11
};

class Http1Session;

// Everything in it stays valid after the session is gone: `session_` is
// dereferenced only in closures run on the strand, and posted closures run
// only while the session lives (session.h).
class Http1Exchange final : public HeadExchange {
 public:
  Http1Exchange(Http1Head head, const SessionOptions& options,
                Http1Session* session, uint64_t id)
      : HeadExchange(RequestHead{std::move(head.method), std::move(head.path),
                                 std::move(head.authority),
                                 std::move(head.headers), HttpVersion::kHttp11,
                                 options.peer, options.secure}),
        poster_(options.poster),
        session_(session),
        id_(id) {}

  void SendHeaders(int status, Headers headers, bool end_stream) override;
  void SendData(std::string data, bool end_stream) override;
  void SendTrailers(Headers trailers) override;
  void SendResponse(int status, Headers headers, std::string body,
                    Headers trailers) override;
  void Reset(bool internal_error) override;

 private:
  // Runs `fn(session, id)` on the strand, then tells the driver to flush.
  template <typename Fn>
  void OnStrand(Fn fn);

  const std::shared_ptr<StrandPoster> poster_;
  Http1Session* const session_;
  const uint64_t id_;
};

// For a handler that returned no observer (exchange.h says it never does).
class IgnoringObserver final : public RequestObserver {
 public:
  void OnData(absl::string_view) override {}
  void OnEnd() override {}
  void OnCancel() override {}
};

class Http1Session final : public ConnectionSession {
 public:
  explicit Http1Session(SessionOptions options)
      : options_(std::move(options)) {}

  absl::Status Feed(absl::string_view bytes) override;
  void TakeOutput(std::string* out) override;
  bool WantsRead() const override;
  bool WantsClose() const override { return closing_; }
  bool Idle() const override { return !open_; }
  void Shutdown() override;
  void Abort() override;

  // The response side, on the strand (closures posted by Http1Exchange).
  // Each does nothing unless exchange `id` is the open one.
  void SendHeaders(uint64_t id, int status, Headers headers, bool end_stream);
  void SendData(uint64_t id, std::string data, bool end_stream);
  void SendTrailers(uint64_t id, Headers trailers);
  void Reset(uint64_t id);
  void NotifyOutput() {
    if (options_.output_ready) options_.output_ready();
  }

 private:
  class Parser;
  friend class Parser;

  // How the response body is delimited.
  enum class Framing {
    kNone,           // no body (HEAD, 204, 304, or ended with the headers)
    kContentLength,  // the handler's content-length
    kChunked,
    kUntilClose,  // HTTP/1.0 client without content-length
  };

  // Parser callbacks.
  void OnRequestHeaders(Http1Head head, bool keep_alive);
  void OnRequestData(absl::string_view data);
  void OnRequestEnd();

  // Parses `in_` while a request may be read; returns the parse error.
  absl::Status ProcessInput();
  // `rest`: the input from where the parser stopped.
  absl::Status FailRequest(const Parser& parser, const error_code& ec,
                           absl::string_view rest);
  void WriteErrorResponse(int status, absl::string_view text);
  bool IsOpen(uint64_t id) const { return open_ && id == id_; }
  // The response ended: next request, or close.
  void EndResponse();
  // Forgets the open exchange (its response methods then do nothing).
  void CloseExchange();

  const SessionOptions options_;
  std::unique_ptr<Parser> parser_;  // null between requests
  std::string in_;                  // bytes fed and not parsed yet
  std::string out_;                 // bytes for the driver to write
  uint64_t next_id_ = 1;

  // The open exchange (headers received, response not ended).
  bool open_ = false;
  uint64_t id_ = 0;
  std::unique_ptr<RequestObserver> observer_;
  bool request_done_ = false;
  bool response_started_ = false;
  bool head_request_ = false;
  bool http10_ = false;
  Framing framing_ = Framing::kNone;

  // Close once the response in progress has ended.
  bool close_after_response_ = false;
  // Close now (WantsClose).
  bool closing_ = false;
};

class Http1Session::Parser final : public bhttp::basic_parser<true> {
 public:
  Parser(Http1Session& session, const SessionLimits& limits)
      : session_(session) {
    header_limit(static_cast<std::uint32_t>(std::min<size_t>(
        limits.max_header_bytes, std::numeric_limits<std::uint32_t>::max())));
    // The handlers bound bodies. (Not boost::none: Beast 1.74 compares a
    // content-length with the empty optional and refuses every body.)
    body_limit(std::numeric_limits<std::uint64_t>::max());
    eager(true);  // body bytes as they arrive
  }

  // Whether the parse failed for want of one Host header.
  bool missing_host() const { return missing_host_; }

 private:
  // Beast refuses versions other than 1.0 and 1.1 before calling this.
  void on_request_impl(bhttp::verb, BeastView method, BeastView target,
                       int version, error_code&) override {
    head_.method = std::string(View(method));
    head_.path = std::string(View(target));
    head_.version = version;
  }

  void on_response_impl(int, BeastView, int, error_code&) override {}

  void on_field_impl(bhttp::field field, BeastView name, BeastView value,
                     error_code&) override {
    // Trailer fields of a chunked body come here too: ignored.
    if (header_done_) return;
    if (field == bhttp::field::host) {
      ++host_count_;
      head_.authority = std::string(View(value));
    }
    head_.headers.push_back(
        {absl::AsciiStrToLower(View(name)), std::string(View(value))});
  }

  void on_header_impl(error_code& ec) override {
    header_done_ = true;
    // RFC 9112 section 3.2: exactly one Host in HTTP/1.1.
    if (head_.version == 11 && host_count_ != 1) {
      missing_host_ = true;
      ec = bhttp::error::bad_field;
      return;
    }
    session_.OnRequestHeaders(std::move(head_), keep_alive());
  }

  void on_body_init_impl(const boost::optional<std::uint64_t>&,
                         error_code&) override {}

  size_t on_body_impl(BeastView body, error_code&) override {
    session_.OnRequestData(View(body));
    return body.size();
  }

  void on_chunk_header_impl(std::uint64_t, BeastView, error_code&) override {}

  size_t on_chunk_body_impl(std::uint64_t, BeastView body,
                            error_code&) override {
    session_.OnRequestData(View(body));
    return body.size();
  }

  void on_finish_impl(error_code&) override { session_.OnRequestEnd(); }

  Http1Session& session_;
  Http1Head head_;
  int host_count_ = 0;
  bool header_done_ = false;
  bool missing_host_ = false;
};

// ---- Request side ----

absl::Status Http1Session::Feed(absl::string_view bytes) {
  if (closing_) return absl::OkStatus();  // the connection is ending
  in_.append(bytes.data(), bytes.size());
  return ProcessInput();
}

absl::Status Http1Session::ProcessInput() {
  absl::Status status;
  size_t pos = 0;
  // A complete request waits for its response before the next is parsed.
  while (pos < in_.size() && !closing_ && !(open_ && request_done_)) {
    if (parser_ == nullptr) {
      parser_ = std::make_unique<Parser>(*this, options_.limits);
    }
    error_code ec;
    size_t n = parser_->put(
        boost::asio::const_buffer(in_.data() + pos, in_.size() - pos), ec);
    pos += n;
    if (ec == bhttp::error::need_more) break;
    if (ec) {
      status = FailRequest(*parser_, ec, absl::string_view(in_).substr(pos));
      break;
    }
    if (parser_->is_done()) {
      parser_.reset();
    } else if (n == 0) {
      break;  // no progress without more bytes
    }
  }
  if (closing_) {
    in_.clear();
    parser_.reset();
  } else {
    in_.erase(0, pos);
  }
  if (in_.empty() && in_.capacity() > kKeepBufferBytes) std::string().swap(in_);
  return status;
}

void Http1Session::OnRequestHeaders(Http1Head head, bool keep_alive) {
  // HTTP/1.0 keep-alive is not offered: such clients are rare, and a
  // response without content-length must then be delimited by the close.
  http10_ = head.version == 10;
  if (!keep_alive || http10_) close_after_response_ = true;
  if (!http10_) {
    std::optional<absl::string_view> expect =
        FindHeader(head.headers, "expect");
    if (expect && absl::EqualsIgnoreCase(*expect, "100-continue")) {
      out_.append("HTTP/1.1 100 Continue\r\n\r\n");
    }
  }
  head_request_ = head.method == "HEAD";
  open_ = true;
  id_ = next_id_++;
  request_done_ = false;
  response_started_ = false;
  framing_ = Framing::kNone;
  auto exchange =
      std::make_shared<Http1Exchange>(std::move(head), options_, this, id_);
  observer_ = options_.handler(std::move(exchange));
  if (observer_ == nullptr) observer_ = std::make_unique<IgnoringObserver>();
}

void Http1Session::OnRequestData(absl::string_view data) {
  if (open_ && !data.empty()) observer_->OnData(data);
}

void Http1Session::OnRequestEnd() {
  if (!open_) return;
  request_done_ = true;
  observer_->OnEnd();
}

// Whether the request line in `rest` is well formed with a version other
// than 1.0 or 1.1 ("HTTP/" DIGIT "." DIGIT, RFC 9112 section 2.3).
bool IsOtherVersion(absl::string_view rest) {
  absl::string_view line = rest.substr(0, rest.find("\r\n"));
  if (line.size() < 9) return false;
  absl::string_view version = line.substr(line.size() - 9);
  return absl::StartsWith(version, " HTTP/") &&
         absl::ascii_isdigit(static_cast<unsigned char>(version[6])) &&
         version[7] == '.' &&
         absl::ascii_isdigit(static_cast<unsigned char>(version[8]));
}

absl::Status Http1Session::FailRequest(const Parser& parser,
                                       const error_code& ec,
                                       absl::string_view rest) {
  int status = 400;
  std::string text;
  absl::StatusCode code = absl::StatusCode::kInvalidArgument;
  if (ec == bhttp::error::bad_version && IsOtherVersion(rest)) {
    status = 505;
    text = "unsupported HTTP version";
  } else if (ec == bhttp::error::header_limit) {
    status = 431;
    text = "request header too large";
    code = absl::StatusCode::kResourceExhausted;
  } else if (parser.missing_host()) {
    text = "bad request: an HTTP/1.1 request needs one Host header";
  } else {
    text = absl::StrCat("bad request: ", ec.message());
  }
  // A body that breaks off mid-way cancels its exchange; the error response
  // is written only if the handler has not started one.
  bool can_respond = true;
  if (open_) {
    can_respond = !response_started_;
    std::unique_ptr<RequestObserver> observer = std::move(observer_);
    CloseExchange();
    observer->OnCancel();
  }
  if (can_respond) WriteErrorResponse(status, text);
  closing_ = true;
  return absl::Status(code, text);
}

void Http1Session::WriteErrorResponse(int status, absl::string_view text) {
  absl::StrAppend(&out_, "HTTP/1.1 ", status, " ", ReasonPhrase(status),
                  "\r\ncontent-type: text/plain\r\ncontent-length: ",
                  text.size() + 1, "\r\nconnection: close\r\n\r\n", text, "\n");
}

void Http1Session::CloseExchange() {
  open_ = false;
  observer_.reset();
}

// ---- Driver side ----

void Http1Session::TakeOutput(std::string* out) {
  if (out->empty()) {
    out->swap(out_);  // no copy; `out_` gets the caller's spare buffer
    out_.clear();
  } else {
    out->append(out_);
    out_.clear();
  }
}

bool Http1Session::WantsRead() const {
  return !closing_ && !(open_ && request_done_) &&
         out_.size() <= options_.limits.max_pending_output_bytes;
}

void Http1Session::Shutdown() {
  if (open_) {
    close_after_response_ = true;
  } else {
    closing_ = true;
  }
}

void Http1Session::Abort() {
  closing_ = true;
  parser_.reset();
  if (!open_) return;
  std::unique_ptr<RequestObserver> observer = std::move(observer_);
  CloseExchange();
  observer->OnCancel();
}

// ---- Response side ----

// Hop-by-hop fields the session writes itself.
bool IsConnectionField(absl::string_view name) {
  return name == "connection" || name == "transfer-encoding" ||
         name == "keep-alive" || name == "upgrade" ||
         name == "proxy-connection";
}

// A field that cannot break the message framing (no CR, LF or NUL; a
// non-empty token as name).
bool IsWritableField(const Header& h) {
  if (h.name.empty()) return false;
  for (char c : h.name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) &&
        absl::string_view("!#$%&'*+-.^_`|~").find(c) ==
            absl::string_view::npos) {
      return false;
    }
  }
  return h.value.find_first_of("\r\n\0", 0, 3) == std::string::npos;
}

void AppendField(std::string* out, const Header& h) {
  absl::StrAppend(out, h.name, ": ", h.value, "\r\n");
}

void Http1Session::SendHeaders(uint64_t id, int status, Headers headers,
                               bool end_stream) {
  if (!IsOpen(id) || response_started_) return;
  response_started_ = true;
  if (status < 200 || status > 999) status = 500;  // 1xx cannot end a response
  // A response that ends while its request is still arriving closes the
  // connection: the rest of the body is not read.
  if (!request_done_) close_after_response_ = true;
  bool has_length = false;
  for (const Header& h : headers) {
    if (h.name == "content-length") has_length = true;
    if (h.name == "connection" &&
        absl::StrContains(absl::AsciiStrToLower(h.value), "close"))
      close_after_response_ = true;
  }
  bool no_body = head_request_ || status == 204 || status == 304;
  if (no_body || end_stream) {
    framing_ = Framing::kNone;
  } else if (has_length) {
    framing_ = Framing::kContentLength;
  } else if (http10_) {
    framing_ = Framing::kUntilClose;
    close_after_response_ = true;
  } else {
    framing_ = Framing::kChunked;
  }

  absl::StrAppend(&out_, "HTTP/1.1 ", status, " ", ReasonPhrase(status),
                  "\r\n");
  for (const Header& h : headers) {
    if (IsConnectionField(h.name) || !IsWritableField(h)) continue;
    AppendField(&out_, h);
  }
  if (framing_ == Framing::kChunked) {
    out_.append("transfer-encoding: chunked\r\n");
  } else if (end_stream && !no_body && !has_length) {
    out_.append("content-length: 0\r\n");
  }
  if (close_after_response_) out_.append("connection: close\r\n");
  out_.append("\r\n");
  if (end_stream) EndResponse();
}

void Http1Session::SendData(uint64_t id, std::string data, bool end_stream) {
  if (!IsOpen(id) || !response_started_) return;
  switch (framing_) {
    case Framing::kChunked:
      if (!data.empty()) {
        absl::StrAppend(&out_, absl::Hex(data.size()), "\r\n", data, "\r\n");
      }
      if (end_stream) out_.append("0\r\n\r\n");
      break;
    case Framing::kContentLength:
    case Framing::kUntilClose:
      if (out_.empty()) {
        out_ = std::move(data);
      } else {
        out_.append(data);
      }
      break;
    case Framing::kNone:
      break;
  }
  if (end_stream) EndResponse();
}

void Http1Session::SendTrailers(uint64_t id, Headers trailers) {
  if (!IsOpen(id) || !response_started_) return;
  if (framing_ == Framing::kChunked) {
    out_.append("0\r\n");
    for (const Header& h : trailers) {
      if (IsWritableField(h)) AppendField(&out_, h);
    }
    out_.append("\r\n");
  }
  EndResponse();
}

void Http1Session::Reset(uint64_t id) {
  if (!IsOpen(id)) return;
  // The response cannot be ended on HTTP/1.1 other than by closing; the
  // handler asked for it, so no OnCancel.
  CloseExchange();
  closing_ = true;
  parser_.reset();
  in_.clear();
}

void Http1Session::EndResponse() {
  bool request_done = request_done_;
  CloseExchange();
  if (close_after_response_ || !request_done) {
    closing_ = true;
    parser_.reset();
    in_.clear();
    return;
  }
  // A pipelined request fed meanwhile; an error in it is reported through
  // the error response and WantsClose.
  ProcessInput().IgnoreError();
}

template <typename Fn>
void Http1Exchange::OnStrand(Fn fn) {
  poster_->Post([session = session_, id = id_, fn = std::move(fn)]() mutable {
    fn(*session, id);
    session->NotifyOutput();
  });
}

void Http1Exchange::SendHeaders(int status, Headers headers, bool end_stream) {
  OnStrand([status, headers = std::move(headers), end_stream](
               Http1Session& session, uint64_t id) mutable {
    session.SendHeaders(id, status, std::move(headers), end_stream);
  });
}

void Http1Exchange::SendData(std::string data, bool end_stream) {
  OnStrand([data = std::move(data), end_stream](Http1Session& session,
                                                uint64_t id) mutable {
    session.SendData(id, std::move(data), end_stream);
  });
}

void Http1Exchange::SendTrailers(Headers trailers) {
  OnStrand([trailers = std::move(trailers)](Http1Session& session,
                                            uint64_t id) mutable {
    session.SendTrailers(id, std::move(trailers));
  });
}

void Http1Exchange::SendResponse(int status, Headers headers, std::string body,
                                 Headers trailers) {
  OnStrand([status, headers = std::move(headers), body = std::move(body),
            trailers = std::move(trailers)](Http1Session& session,
                                            uint64_t id) mutable {
    const bool trailed = !trailers.empty();
    session.SendHeaders(id, status, std::move(headers), false);
    session.SendData(id, std::move(body), !trailed);
    if (trailed) session.SendTrailers(id, std::move(trailers));
  });
}

void Http1Exchange::Reset(bool) {
  OnStrand([](Http1Session& session, uint64_t id) { session.Reset(id); });
}

}  // namespace

std::unique_ptr<ConnectionSession> NewHttp1Session(SessionOptions options) {
  return std::make_unique<Http1Session>(std::move(options));
}

}  // namespace fleetd::server::rpc::http
