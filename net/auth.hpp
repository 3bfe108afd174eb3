// auth: the API key (server.api_key) on HTTP requests (Authorization: Bearer KEY) and on
// WebSocket upgrades, where a browser cannot set that header but can offer subprotocols:
// "bearer.KEY" carries the key. Internal to net/.
#pragma once
#include <boost/beast/http.hpp>
#include <string>
#include <string_view>

namespace infer::net::detail {

namespace http = boost::beast::http;

// Constant time in the key's length: does not leak how many bytes matched.
bool key_matches(const std::string& key, std::string_view tok);

// Whether `req` may use a keyed endpoint: no key configured, or the right bearer token.
bool authorized(const std::string& api_key, const http::request<http::string_body>& req);

// The answer to a WebSocket upgrade's subprotocols. It must name one of those offered (else
// the browser fails the connection): "inferd.v1" when offered, so that the key is not
// echoed, else the bearer one.
inline constexpr std::string_view ws_protocol_name = "inferd.v1";
inline constexpr std::string_view ws_bearer_prefix = "bearer.";

struct ws_offer {
  bool key_ok = false;    // a bearer.KEY with the right key was offered
  std::string selected;   // the subprotocol to answer with, empty: none
};

ws_offer read_ws_offer(const std::string& api_key, const http::request<http::string_body>& req);

}  // namespace infer::net::detail
