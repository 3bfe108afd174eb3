#include "net/auth.hpp"

#include <cstdint>

namespace infer::net::detail {

namespace beast = boost::beast;

namespace {
std::string_view sv(beast::string_view s) { return {s.data(), s.size()}; }
}  // namespace

bool key_matches(const std::string& key, std::string_view tok) {
  unsigned diff = tok.size() != key.size();
  for (size_t i = 0; i < key.size(); ++i) diff |= unsigned(uint8_t(key[i]) ^ uint8_t(i < tok.size() ? tok[i] : 0));
  return diff == 0;
}

bool authorized(const std::string& key, const http::request<http::string_body>& req) {
  if (key.empty()) return true;
  auto it = req.find(http::field::authorization);
  if (it == req.end()) return false;
  std::string_view v = sv(it->value());
  if (v.size() < 7 || !beast::iequals(v.substr(0, 7), "Bearer ")) return false;
  return key_matches(key, v.substr(7));
}

ws_offer read_ws_offer(const std::string& api_key, const http::request<http::string_body>& req) {
  ws_offer out;
  std::string bearer;
  for (const auto& f : req) {  // the header may come more than once
    if (f.name() != http::field::sec_websocket_protocol) continue;
    std::string_view list = sv(f.value());
    while (!list.empty()) {
      size_t comma = list.find(',');
      std::string_view p = list.substr(0, comma);
      list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
      while (!p.empty() && (p.front() == ' ' || p.front() == '\t')) p.remove_prefix(1);
      while (!p.empty() && (p.back() == ' ' || p.back() == '\t')) p.remove_suffix(1);
      if (p == ws_protocol_name) {
        out.selected = std::string(p);
      } else if (p.size() > ws_bearer_prefix.size() && p.substr(0, ws_bearer_prefix.size()) == ws_bearer_prefix) {
        // Without a configured key any key will do: a page may always send the one it has.
        if (api_key.empty() || key_matches(api_key, p.substr(ws_bearer_prefix.size()))) {
          out.key_ok = true;
          bearer = std::string(p);
        }
      }
    }
  }
  if (out.selected.empty()) out.selected = std::move(bearer);
  return out;
}

}  // namespace infer::net::detail
