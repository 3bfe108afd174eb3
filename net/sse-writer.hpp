// sse_writer: the bytes of a server-sent-event stream (text/event-stream) as an OpenAI
// streamed completion sends them: the response head, one `data: ...` event per chunk, a
// comment the client ignores, and the `data: [DONE]` end. HTTP/1.1 streams are chunked,
// HTTP/1.0 ones run until the connection closes. Pure: the session queues what it returns.
#pragma once
#include <string>
#include <string_view>

namespace infer::net {

struct sse_writer {
  bool chunked = true;  // HTTP/1.1: each event in a chunk of its own

  // The 200 response head. Without chunking the stream ends with the connection, so it
  // says close whatever `keep_alive` asked.
  std::string head(std::string_view request_id, bool keep_alive) const;
  // One event carrying `payload` (a JSON object, or [DONE]).
  std::string event(std::string_view payload) const;
  // A comment line (":"), which clients skip: a write that tells a closed peer from a
  // half-closed one (http_session::probe_after_eof).
  std::string comment() const;
  // The last event ([DONE]) and, chunked, the terminating empty chunk.
  std::string done() const;
};

}  // namespace infer::net
