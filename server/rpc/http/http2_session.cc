// The HTTP/2 engine of the front door: nghttp2's server session, fed with
// nghttp2_session_mem_recv and drained with nghttp2_session_mem_send.
//
// Output is drained eagerly: after every Feed and every response operation
// the session moves what nghttp2 would send into `out_`, so the bytes waiting
// for the driver are exactly out_ plus the response bodies nghttp2 could not
// send yet (flow control). WantsRead compares that sum with the limit.
#include <malloc.h>
#include <nghttp2/nghttp2.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/rpc/http/exchange.h"
#include "server/rpc/http/session.h"

namespace fleetd::server::rpc::http {
namespace {

// The initial stream window and the connection window we advertise: large
// enough that a request body rarely waits for a WINDOW_UPDATE round trip.
constexpr int32_t kInitialWindow = 1 << 20;

// Opaque data of the PING that follows the shutdown notice (see Shutdown).
constexpr uint8_t kShutdownPing[8] = {'f', 'l', 'e', 'e', 't', 'd', 'g', 'o'};
// Opaque data of a keepalive PING (see Ping).
constexpr uint8_t kKeepalivePing[8] = {'f', 'l', 'e', 'e', 't', 'd', 'k', 'a'};

class Http2Session;

// What a handler holds. Only the poster, the ids and the immutable request:
// the session is dereferenced solely inside closures posted to the strand,
// which run only while the session lives (the driver closes the poster first).
class Http2Exchange final : public HeadExchange {
 public:
  Http2Exchange(Http2Session* session, std::shared_ptr<StrandPoster> poster,
                int32_t stream_id, RequestHead head)
      : HeadExchange(std::move(head)),
        session_(session),
        poster_(std::move(poster)),
        stream_id_(stream_id) {}

  void SendHeaders(int status, Headers headers, bool end_stream) override;
  void SendData(std::string data, bool end_stream) override;
  void SendTrailers(Headers trailers) override;
  void SendResponse(int status, Headers headers, std::string body,
                    Headers trailers) override;
  void Reset(bool internal_error) override;
  void ConsumeRequest(size_t bytes) override;

 private:
  Http2Session* const session_;
  const std::shared_ptr<StrandPoster> poster_;
  const int32_t stream_id_;
};

// Per-stream state, owned by the session and found by stream id.
struct Stream {
  explicit Stream(int32_t stream_id) : id(stream_id) {}
  const int32_t id;
  // ---- The request, while its header block arrives ----
  std::string method, path, authority, host;
  Headers headers;
  size_t header_bytes = 0;
  bool refused = false;  // header block over the limit: RST_STREAM sent
  // ---- After the request headers ----
  std::unique_ptr<RequestObserver> observer;  // null until the handler ran
  // The observer opens the stream's receive window itself (ConsumeRequest).
  bool handler_window = false;
  bool request_ended = false;
  // ---- The response ----
  bool response_started = false;  // HEADERS submitted with a data provider
  // The handler ended or reset the response (its last bytes may still be
  // queued): from then on the observer hears nothing, not even OnCancel.
  bool response_ended = false;
  bool data_eof = false;  // no more body: EOF once `body` is empty
  std::optional<Headers> trailers;
  std::deque<std::string> body;  // queued response bytes
  size_t body_offset = 0;        // consumed bytes of body.front()
  bool reset = false;            // RST_STREAM submitted
  bool cancelled = false;        // OnCancel called
};

class NullObserver final : public RequestObserver {
 public:
  void OnData(absl::string_view) override {}
  void OnEnd() override {}
  void OnCancel() override {}
};

// Header fields for nghttp2, pointing into `headers` (nghttp2 copies them),
// after ":status" when `status` is given.
std::vector<nghttp2_nv> ToNv(const Headers& headers,
                             const std::string* status) {
  std::vector<nghttp2_nv> nva;
  nva.reserve(headers.size() + 1);
  auto add = [&nva](absl::string_view name, absl::string_view value) {
    nva.push_back({reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                   reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())),
                   name.size(), value.size(), NGHTTP2_NV_FLAG_NONE});
  };
  if (status != nullptr) add(":status", *status);
  for (const Header& h : headers) add(h.name, h.value);
  return nva;
}

absl::string_view View(const uint8_t* data, size_t len) {
  return absl::string_view(reinterpret_cast<const char*>(data), len);
}

// nghttp2's allocations for one session. Its outbound frame buffer (one
// chunk of 9 + 1 + 16,384 bytes, allocated with the session and kept for its
// whole life) gets pages of its own, which the session hands back to the
// kernel when the driver finds the connection idle (ReleaseIdleMemory): the
// buffer holds nothing between frames, and 20,000 mostly idle connections
// would otherwise keep 16 KiB each resident. Everything else goes to malloc.
class SessionMemory {
 public:
  SessionMemory() {
    mem_.mem_user_data = this;
    mem_.malloc = &Malloc;
    mem_.free = &Free;
    mem_.calloc = &Calloc;
    mem_.realloc = &Realloc;
  }
  SessionMemory(const SessionMemory&) = delete;
  SessionMemory& operator=(const SessionMemory&) = delete;
  ~SessionMemory() {
    for (const Block& block : paged_) ::munmap(block.data, block.mapped);
  }

  nghttp2_mem* mem() { return &mem_; }
  // Call right before creating the session: it allocates its frame buffer
  // then, and only that block is mapped (and ever dropped). Cleared after.
  void ExpectFrameBuffer(bool expect) { map_frame_buffer_ = expect; }

  // Drops the frame buffers' pages; they read as zeros when next touched.
  // REQUIRES: nothing is queued in nghttp2 (mem_send returned 0).
  void ReleaseIdle() {
    for (Block& block : paged_) {
      if (block.touched) {
        ::madvise(block.data, block.mapped, MADV_DONTNEED);
        block.touched = false;
      }
    }
  }
  // Whether a frame buffer's pages are resident.
  bool Touched() const {
    for (const Block& block : paged_) {
      if (block.touched) return true;
    }
    return false;
  }
  // The frame buffers may hold data again (a frame is being packed).
  void MarkUsed() {
    for (Block& block : paged_) block.touched = true;
  }

 private:
  // nghttp2's NGHTTP2_FRAMEBUF_CHUNKLEN: frame header, padding length, the
  // largest payload.
  static constexpr size_t kFrameBufBytes = 9 + 1 + 16384;

  struct Block {
    void* data;
    size_t mapped;
    bool touched;
  };

  static SessionMemory* Self(void* p) { return static_cast<SessionMemory*>(p); }

  void* MapBlock(size_t size) {
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    const size_t mapped = (size + page - 1) / page * page;
    void* data = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (data == MAP_FAILED) return nullptr;
    paged_.push_back({data, mapped, true});
    return data;
  }
  // The paged block at `ptr`, or null.
  Block* Find(void* ptr) {
    for (Block& block : paged_) {
      if (block.data == ptr) return &block;
    }
    return nullptr;
  }

  static void* Malloc(size_t size, void* user) {
    SessionMemory* self = Self(user);
    if (self->map_frame_buffer_ && size == kFrameBufBytes) {
      // Only the frame buffer, allocated while the session is created:
      // other allocations of this size (an HPACK string of the right
      // length) hold state between frames and must never be dropped.
      self->map_frame_buffer_ = false;
      return self->MapBlock(size);
    }
    return std::malloc(size);
  }
  static void Free(void* ptr, void* user) {
    if (ptr == nullptr) return;
    SessionMemory* self = Self(user);
    for (size_t i = 0; i < self->paged_.size(); ++i) {
      if (self->paged_[i].data == ptr) {
        ::munmap(ptr, self->paged_[i].mapped);
        self->paged_.erase(self->paged_.begin() + static_cast<ptrdiff_t>(i));
        return;
      }
    }
    std::free(ptr);
  }
  static void* Calloc(size_t n, size_t size, void* user) {
    SessionMemory* self = Self(user);
    if (self->map_frame_buffer_ && n != 0 && size == kFrameBufBytes / n &&
        n * size == kFrameBufBytes) {
      self->map_frame_buffer_ = false;
      return self->MapBlock(kFrameBufBytes);  // mapped pages are zero
    }
    return std::calloc(n, size);
  }
  static void* Realloc(void* ptr, size_t size, void* user) {
    SessionMemory* self = Self(user);
    if (ptr == nullptr) return Malloc(size, user);
    if (Block* block = self->Find(ptr)) {
      if (size <= block->mapped) return ptr;
      void* grown = std::malloc(size);
      if (grown == nullptr) return nullptr;
      std::memcpy(grown, ptr, block->mapped);
      Free(ptr, user);
      return grown;
    }
    return std::realloc(ptr, size);
  }

  nghttp2_mem mem_;
  // Set by ExpectFrameBuffer: the next allocation of kFrameBufBytes is the
  // session's frame buffer.
  bool map_frame_buffer_ = false;
  std::vector<Block> paged_;
};

class Http2Session final : public ConnectionSession {
 public:
  explicit Http2Session(SessionOptions options) : options_(std::move(options)) {
    nghttp2_session_callbacks* callbacks;
    if (nghttp2_session_callbacks_new(&callbacks) != 0) {
      Fail(absl::ResourceExhaustedError("http2: out of memory"));
      return;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks,
                                                            &OnBeginHeaders);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, &OnHeader);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks,
                                                         &OnFrameRecv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks,
                                                              &OnDataChunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks,
                                                           &OnStreamClose);
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks,
                                                         &OnFrameSend);
    nghttp2_session_callbacks_set_error_callback2(callbacks, &OnError);
    nghttp2_option* option;
    int rv = nghttp2_option_new(&option);
    if (rv == 0) {
      // Closed streams are kept only for RFC 7540 priorities, which we
      // ignore; with 20,000 connections the memory matters more.
      nghttp2_option_set_no_closed_streams(option, 1);
      // Windows are opened by OnDataChunk (or, for a stream whose observer
      // ControlsRequestWindow, by ApplyConsume): nghttp2 itself then consumes
      // only what it never delivers (padding, data of closed streams).
      nghttp2_option_set_no_auto_window_update(option, 1);
      memory_.ExpectFrameBuffer(true);
      rv = nghttp2_session_server_new3(&session_, callbacks, this, option,
                                       memory_.mem());
      memory_.ExpectFrameBuffer(false);
      nghttp2_option_del(option);
    }
    nghttp2_session_callbacks_del(callbacks);
    if (rv != 0) {
      session_ = nullptr;
      Fail(absl::ResourceExhaustedError(
          absl::StrCat("http2: ", nghttp2_strerror(rv))));
      return;
    }
    const nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
         options_.limits.max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, kInitialWindow},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
         static_cast<uint32_t>(
             std::min<size_t>(options_.limits.max_header_bytes, UINT32_MAX))},
    };
    rv = nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings,
                                 std::size(settings));
    if (rv == 0) {
      rv = nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0,
                                                 kInitialWindow);
    }
    if (rv != 0) {
      Fail(absl::InternalError(absl::StrCat("http2: ", nghttp2_strerror(rv))));
      return;
    }
    Flush();
  }

  ~Http2Session() override {
    // After Abort every callback finds no stream, should nghttp2_session_del
    // call any.
    if (!aborted_) Abort();
    if (session_ != nullptr) nghttp2_session_del(session_);
  }

  absl::Status Feed(absl::string_view bytes) override {
    if (!error_.ok()) return error_;
    if (aborted_) return absl::FailedPreconditionError("http2: aborted");
    last_error_.clear();
    ssize_t rv = nghttp2_session_mem_recv(
        session_, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    if (rv < 0) {
      // nghttp2 queues nothing for these (a bad preface, a flood, a
      // callback failure): tell the peer ourselves, then close.
      std::string message = absl::StrCat("http2: ", nghttp2_strerror(int(rv)));
      switch (rv) {
        case NGHTTP2_ERR_FLOODED:
        case NGHTTP2_ERR_NOMEM:
          Fail(absl::ResourceExhaustedError(message));
          break;
        case NGHTTP2_ERR_CALLBACK_FAILURE:
          Fail(absl::InternalError(message));
          break;
        default:
          Fail(absl::InvalidArgumentError(message));
      }
      nghttp2_session_terminate_session(
          session_, rv == NGHTTP2_ERR_FLOODED ? NGHTTP2_ENHANCE_YOUR_CALM
                                              : NGHTTP2_PROTOCOL_ERROR);
      Flush();
      return error_;
    }
    Flush();
    // A connection error nghttp2 handled itself: it queued GOAWAY (now in
    // out_) and ignores the rest of the input.
    if (!error_.ok()) return error_;
    return absl::OkStatus();
  }

  void TakeOutput(std::string* out) override {
    Flush();
    if (out->empty()) {
      out->swap(out_);
    } else {
      out->append(out_);
    }
    // Do not keep a large buffer per idle connection.
    if (out_.capacity() > (64 << 10)) {
      std::string().swap(out_);
    } else {
      out_.clear();
    }
  }

  bool WantsRead() const override {
    if (!error_.ok() || aborted_ || session_ == nullptr) return false;
    if (out_.size() + queued_bytes_ >
        options_.limits.max_pending_output_bytes) {
      return false;  // also caps what a PING or SETTINGS flood can queue
    }
    return nghttp2_session_want_read(session_) != 0;
  }

  bool WantsClose() const override {
    if (!error_.ok() || aborted_ || session_ == nullptr) return true;
    return nghttp2_session_want_read(session_) == 0 &&
           nghttp2_session_want_write(session_) == 0;
  }

  bool Idle() const override { return streams_.empty(); }

  // Two-step GOAWAY, as RFC 9113 section 6.8 suggests: a shutdown notice
  // (last stream id 2^31-1) tells the client to open no more streams, and a
  // PING measures the round trip; when its ACK arrives every stream the
  // client opened before it saw the notice has arrived too, and the final
  // GOAWAY carries the last stream id we processed. Open streams finish;
  // nghttp2 then wants neither to read nor to write, so WantsClose turns true.
  void Shutdown() override {
    if (shutting_down_ || !error_.ok() || aborted_) return;
    shutting_down_ = true;
    int rv = nghttp2_submit_shutdown_notice(session_);
    if (rv == 0)
      rv = nghttp2_submit_ping(session_, NGHTTP2_FLAG_NONE, kShutdownPing);
    if (rv != 0) SubmitFinalGoaway();
    Flush();
  }

  bool Ping() override {
    if (!error_.ok() || aborted_ || session_ == nullptr) return false;
    if (nghttp2_submit_ping(session_, NGHTTP2_FLAG_NONE, kKeepalivePing) != 0) {
      return false;
    }
    Flush();
    return true;
  }

  void Abort() override {
    if (aborted_) return;
    aborted_ = true;
    std::map<int32_t, std::unique_ptr<Stream>> streams;
    streams.swap(streams_);
    queued_bytes_ = 0;
    for (auto& [id, stream] : streams) Cancel(*stream);
  }

  // ---- Response operations, on the strand (posted by Http2Exchange) ----

  void ApplyConsume(int32_t id, size_t bytes) {
    Stream* stream = Find(id);
    if (stream == nullptr || !stream->handler_window || bytes == 0) return;
    int rv = nghttp2_session_consume_stream(session_, id, bytes);
    if (nghttp2_is_fatal(rv)) {
      Fail(absl::InternalError(absl::StrCat("http2: ", nghttp2_strerror(rv))));
    }
    Flushed();
  }

  void ApplySendHeaders(int32_t id, int status, Headers headers,
                        bool end_stream) {
    SubmitHeaders(id, status, std::move(headers), end_stream);
    Flushed();
  }

  void ApplySendData(int32_t id, std::string data, bool end_stream) {
    SubmitData(id, std::move(data), end_stream);
    Flushed();
  }

  void ApplySendTrailers(int32_t id, Headers trailers) {
    SubmitTrailers(id, std::move(trailers));
    Flushed();
  }

  // The three in one step, so the response leaves in one write.
  void ApplySendResponse(int32_t id, int status, Headers headers,
                         std::string body, Headers trailers) {
    const bool trailed = !trailers.empty();
    SubmitHeaders(id, status, std::move(headers), false);
    SubmitData(id, std::move(body), !trailed);
    if (trailed) SubmitTrailers(id, std::move(trailers));
    Flushed();
  }

  void ApplyReset(int32_t id, bool internal_error) {
    Stream* stream = Find(id);
    if (stream == nullptr || stream->reset) return;
    stream->response_ended = true;
    ResetStream(*stream,
                internal_error ? NGHTTP2_INTERNAL_ERROR : NGHTTP2_CANCEL);
    Flushed();
  }

 private:
  void SubmitHeaders(int32_t id, int status, Headers headers, bool end_stream) {
    Stream* stream = Find(id);
    if (stream == nullptr || stream->response_started ||
        stream->response_ended) {
      return;
    }
    std::string status_text = std::to_string(status);
    std::vector<nghttp2_nv> nva = ToNv(headers, &status_text);
    nghttp2_data_provider provider;
    provider.source.ptr = nullptr;
    provider.read_callback = &ReadBody;
    int rv = nghttp2_submit_response(session_, id, nva.data(), nva.size(),
                                     end_stream ? nullptr : &provider);
    stream->response_started = true;
    if (end_stream) stream->response_ended = true;
    if (rv != 0) ResetStream(*stream, NGHTTP2_INTERNAL_ERROR);
  }

  void SubmitData(int32_t id, std::string data, bool end_stream) {
    Stream* stream = Find(id);
    if (stream == nullptr || !stream->response_started ||
        stream->response_ended) {
      return;
    }
    if (!data.empty()) {
      queued_bytes_ += data.size();
      stream->body.push_back(std::move(data));
    }
    if (end_stream) {
      stream->data_eof = true;
      stream->response_ended = true;
    }
    nghttp2_session_resume_data(session_, id);  // fails when not deferred
  }

  void SubmitTrailers(int32_t id, Headers trailers) {
    Stream* stream = Find(id);
    if (stream == nullptr || !stream->response_started ||
        stream->response_ended) {
      return;
    }
    if (!trailers.empty()) stream->trailers = std::move(trailers);
    stream->data_eof = true;
    stream->response_ended = true;
    nghttp2_session_resume_data(session_, id);
  }

  Stream* Find(int32_t id) {
    if (aborted_) return nullptr;
    auto it = streams_.find(id);
    return it == streams_.end() ? nullptr : it->second.get();
  }

  // Records the first fatal error; the connection must close.
  void Fail(absl::Status status) {
    if (error_.ok()) error_ = std::move(status);
  }

  void Cancel(Stream& stream) {
    if (stream.observer == nullptr || stream.response_ended ||
        stream.cancelled) {
      return;
    }
    stream.cancelled = true;
    stream.observer->OnCancel();
  }

  // Drops the queued body and sends RST_STREAM (once: nghttp2 ignores a
  // second one for a closed stream).
  void ResetStream(Stream& stream, uint32_t code) {
    DropBody(stream);
    if (stream.reset) return;
    stream.reset = true;
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream.id, code);
  }

  void DropBody(Stream& stream) {
    for (size_t i = 0; i < stream.body.size(); ++i) {
      queued_bytes_ -=
          stream.body[i].size() - (i == 0 ? stream.body_offset : 0);
    }
    stream.body.clear();
    stream.body_offset = 0;
  }

  // Moves what nghttp2 would send into out_.
  void Flush() {
    if (session_ == nullptr || aborted_) return;
    for (;;) {
      const uint8_t* data;
      ssize_t n = nghttp2_session_mem_send(session_, &data);
      if (n < 0) {
        Fail(absl::InternalError(
            absl::StrCat("http2: ", nghttp2_strerror(int(n)))));
        return;
      }
      if (n == 0) return;
      memory_.MarkUsed();
      out_.append(reinterpret_cast<const char*>(data), size_t(n));
    }
  }

  bool HoldsIdleMemory() const override {
    // The frame buffer holds nothing once mem_send has nothing to give.
    return session_ != nullptr && !aborted_ && streams_.empty() &&
           nghttp2_session_want_write(session_) == 0 && memory_.Touched();
  }
  void ReleaseIdleMemory() override {
    if (HoldsIdleMemory()) memory_.ReleaseIdle();
  }

  // Flush after a posted operation: outside Feed, the driver must be told.
  void Flushed() {
    Flush();
    if (options_.output_ready && (!out_.empty() || WantsClose())) {
      options_.output_ready();
    }
  }

  void SubmitFinalGoaway() {
    nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(session_),
                          NGHTTP2_NO_ERROR, nullptr, 0);
  }

  void StartExchange(int32_t id, Stream& stream, bool end_stream) {
    std::string authority =
        stream.authority.empty() ? stream.host : std::move(stream.authority);
    auto exchange = std::make_shared<Http2Exchange>(
        this, options_.poster, id,
        RequestHead{std::move(stream.method), std::move(stream.path),
                    std::move(authority), std::move(stream.headers),
                    HttpVersion::kHttp2, options_.peer, options_.secure});
    stream.observer = options_.handler(std::move(exchange));
    if (stream.observer == nullptr) {
      stream.observer = std::make_unique<NullObserver>();
    }
    stream.handler_window = stream.observer->ControlsRequestWindow();
    if (end_stream) EndRequest(stream);
  }

  void EndRequest(Stream& stream) {
    if (stream.request_ended) return;
    stream.request_ended = true;
    // Nothing reaches the observer after the response ended.
    if (stream.observer != nullptr && !stream.response_ended &&
        !stream.cancelled) {
      stream.observer->OnEnd();
    }
  }

  // ---- nghttp2 callbacks ----

  static Http2Session* Self(void* user_data) {
    return static_cast<Http2Session*>(user_data);
  }

  static int OnBeginHeaders(nghttp2_session*, const nghttp2_frame* frame,
                            void* user_data) {
    Http2Session* self = Self(user_data);
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
      self->streams_[frame->hd.stream_id] =
          std::make_unique<Stream>(frame->hd.stream_id);
    } else if (Stream* stream = self->Find(frame->hd.stream_id)) {
      stream->header_bytes = 0;  // request trailers: a block of their own
    }
    return 0;
  }

  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame,
                      const uint8_t* name, size_t namelen, const uint8_t* value,
                      size_t valuelen, uint8_t, void* user_data) {
    Http2Session* self = Self(user_data);
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    Stream* stream = self->Find(frame->hd.stream_id);
    if (stream == nullptr || stream->refused) return 0;
    // Names and values without RFC 9113's 32 bytes per field: laxer than the
    // SETTINGS_MAX_HEADER_LIST_SIZE we advertise, so a client that honours it
    // is never refused.
    stream->header_bytes += namelen + valuelen;
    if (stream->header_bytes > self->options_.limits.max_header_bytes) {
      // HPACK state stays intact (nghttp2 decodes the rest of the block),
      // so only this stream is refused.
      stream->refused = true;
      stream->headers.clear();
      self->ResetStream(*stream, NGHTTP2_REFUSED_STREAM);
      return 0;
    }
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;  // trailers
    absl::string_view n = View(name, namelen);
    absl::string_view v = View(value, valuelen);
    if (!n.empty() && n[0] == ':') {
      if (n == ":method") {
        stream->method = std::string(v);
      } else if (n == ":path") {
        stream->path = std::string(v);
      } else if (n == ":authority") {
        stream->authority = std::string(v);
      }
      return 0;  // :scheme and :protocol are not needed by the handlers
    }
    if (n == "host") stream->host = std::string(v);
    stream->headers.push_back({std::string(n), std::string(v)});
    return 0;
  }

  static int OnFrameRecv(nghttp2_session*, const nghttp2_frame* frame,
                         void* user_data) {
    Http2Session* self = Self(user_data);
    const bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS: {
        Stream* stream = self->Find(frame->hd.stream_id);
        if (stream == nullptr || stream->refused) return 0;
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
          self->StartExchange(frame->hd.stream_id, *stream, end_stream);
        } else if (end_stream) {
          self->EndRequest(*stream);
        }
        return 0;
      }
      case NGHTTP2_DATA:
        if (end_stream) {
          if (Stream* stream = self->Find(frame->hd.stream_id)) {
            self->EndRequest(*stream);
          }
        }
        return 0;
      case NGHTTP2_PING:
        if ((frame->hd.flags & NGHTTP2_FLAG_ACK) != 0 && self->shutting_down_ &&
            !self->final_goaway_ &&
            std::memcmp(frame->ping.opaque_data, kShutdownPing,
                        sizeof(kShutdownPing)) == 0) {
          self->final_goaway_ = true;
          self->SubmitFinalGoaway();
        }
        return 0;
      default:
        return 0;
    }
  }

  static int OnDataChunk(nghttp2_session* session, uint8_t, int32_t stream_id,
                         const uint8_t* data, size_t len, void* user_data) {
    Http2Session* self = Self(user_data);
    Stream* stream = self->Find(stream_id);
    bool deliver = stream != nullptr && stream->observer != nullptr &&
                   !stream->response_ended && !stream->cancelled;
    // The connection's window always opens at once; the stream's waits for
    // the handler when it asked to pace the body.
    int rv = deliver && stream->handler_window
                 ? nghttp2_session_consume_connection(session, len)
                 : nghttp2_session_consume(session, stream_id, len);
    if (nghttp2_is_fatal(rv)) return rv;
    if (deliver) stream->observer->OnData(View(data, len));
    return 0;
  }

  static int OnStreamClose(nghttp2_session*, int32_t stream_id, uint32_t,
                           void* user_data) {
    Http2Session* self = Self(user_data);
    if (self->aborted_) return 0;
    auto it = self->streams_.find(stream_id);
    if (it == self->streams_.end()) return 0;
    std::unique_ptr<Stream> stream = std::move(it->second);
    self->streams_.erase(it);
    self->DropBody(*stream);
    self->Cancel(*stream);
    return 0;
  }

  static int OnFrameSend(nghttp2_session* session, const nghttp2_frame* frame,
                         void* user_data) {
    Http2Session* self = Self(user_data);
    if (frame->hd.type == NGHTTP2_GOAWAY &&
        frame->goaway.error_code != NGHTTP2_NO_ERROR) {
      std::string reason =
          self->last_error_.empty()
              ? std::string(View(frame->goaway.opaque_data,
                                 frame->goaway.opaque_data_len))
              : self->last_error_;
      self->Fail(absl::InvalidArgumentError(absl::StrCat(
          "http2: connection error ",
          nghttp2_http2_strerror(frame->goaway.error_code), ": ", reason)));
      return 0;
    }
    // RFC 9113 8.1: a server that completed its response before the request
    // ended may stop the request with RST_STREAM(NO_ERROR).
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0) {
      Stream* stream = self->Find(frame->hd.stream_id);
      if (stream != nullptr && !stream->request_ended) {
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE,
                                  frame->hd.stream_id, NGHTTP2_NO_ERROR);
      }
    }
    return 0;
  }

  static int OnError(nghttp2_session*, int, const char* msg, size_t len,
                     void* user_data) {
    Self(user_data)->last_error_.assign(msg, len);
    return 0;
  }

  // The response body's data provider: what is queued, EOF (with trailers)
  // once the handler ended the body, otherwise wait for ApplySendData.
  static ssize_t ReadBody(nghttp2_session* session, int32_t stream_id,
                          uint8_t* buf, size_t length, uint32_t* data_flags,
                          nghttp2_data_source*, void* user_data) {
    Http2Session* self = Self(user_data);
    Stream* stream = self->Find(stream_id);
    if (stream == nullptr) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t copied = 0;
    while (copied < length && !stream->body.empty()) {
      const std::string& front = stream->body.front();
      size_t n = std::min(length - copied, front.size() - stream->body_offset);
      std::memcpy(buf + copied, front.data() + stream->body_offset, n);
      copied += n;
      stream->body_offset += n;
      self->queued_bytes_ -= n;
      if (stream->body_offset == front.size()) {
        stream->body.pop_front();
        stream->body_offset = 0;
      }
    }
    if (stream->body.empty() && stream->data_eof) {
      *data_flags |= NGHTTP2_DATA_FLAG_EOF;
      if (stream->trailers.has_value()) {
        std::vector<nghttp2_nv> nva = ToNv(*stream->trailers, nullptr);
        if (nghttp2_submit_trailer(session, stream_id, nva.data(),
                                   nva.size()) == 0) {
          *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
        stream->trailers.reset();
      }
    } else if (copied == 0) {
      return NGHTTP2_ERR_DEFERRED;
    }
    return ssize_t(copied);
  }

  SessionOptions options_;
  SessionMemory memory_;  // outlives session_ (deleted in the destructor)
  nghttp2_session* session_ = nullptr;
  std::map<int32_t, std::unique_ptr<Stream>> streams_;
  std::string out_;          // bytes ready for the driver
  size_t queued_bytes_ = 0;  // response body bytes nghttp2 has not taken
  absl::Status error_;       // fatal: the connection must close
  std::string last_error_;   // nghttp2's last error message
  bool shutting_down_ = false;
  bool final_goaway_ = false;
  bool aborted_ = false;
};

void Http2Exchange::SendHeaders(int status, Headers headers, bool end_stream) {
  poster_->Post([session = session_, id = stream_id_, status,
                 headers = std::move(headers), end_stream]() mutable {
    session->ApplySendHeaders(id, status, std::move(headers), end_stream);
  });
}

void Http2Exchange::SendData(std::string data, bool end_stream) {
  poster_->Post([session = session_, id = stream_id_, data = std::move(data),
                 end_stream]() mutable {
    session->ApplySendData(id, std::move(data), end_stream);
  });
}

void Http2Exchange::SendTrailers(Headers trailers) {
  poster_->Post([session = session_, id = stream_id_,
                 trailers = std::move(trailers)]() mutable {
    session->ApplySendTrailers(id, std::move(trailers));
  });
}

void Http2Exchange::SendResponse(int status, Headers headers, std::string body,
                                 Headers trailers) {
  poster_->Post([session = session_, id = stream_id_, status,
                 headers = std::move(headers), body = std::move(body),
                 trailers = std::move(trailers)]() mutable {
    session->ApplySendResponse(id, status, std::move(headers), std::move(body),
                               std::move(trailers));
  });
}

void Http2Exchange::Reset(bool internal_error) {
  poster_->Post([session = session_, id = stream_id_, internal_error] {
    session->ApplyReset(id, internal_error);
  });
}

void Http2Exchange::ConsumeRequest(size_t bytes) {
  poster_->Post([session = session_, id = stream_id_, bytes] {
    session->ApplyConsume(id, bytes);
  });
}

}  // namespace

std::unique_ptr<ConnectionSession> NewHttp2Session(SessionOptions options) {
  return std::make_unique<Http2Session>(std::move(options));
}

}  // namespace fleetd::server::rpc::http
