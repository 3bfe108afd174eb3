// node_guard: the TCP front of a worker node's CAF port. CAF 0.17's middleman accepts every
// connection, authenticates nobody without TLS, and reads (allocating first) whatever payload
// a BASP header announces. The guard listens on the node's public address and relays to the
// middleman published on loopback, with a connection cap and, on plain TCP, a bound on the
// payload each inbound BASP header announces (32-byte header, payload length at bytes 4..7,
// network order); a connection over either is closed. With TLS the bytes are opaque: only the
// cap applies (the handshake verifies the peer's certificate before any BASP).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "base/result.hpp"

namespace infer {

class node_guard {
 public:
  struct options {
    std::string host;          // where to listen (an address or a name)
    uint16_t port = 0;         // 0: any free port
    uint16_t backend_port = 0; // the middleman's port on 127.0.0.1
    int32_t max_connections = 8;
    uint32_t max_payload = 64u << 20;
    bool inspect = true;       // false: TLS, opaque bytes
  };
  static result<std::unique_ptr<node_guard>> start(const options& o);
  virtual ~node_guard() = default;
  virtual uint16_t port() const = 0;
  // Closes the listener and every relayed connection; idempotent, run by the destructor.
  virtual void stop() = 0;
};

}  // namespace infer
