// request_parser: Beast's request parser with the limits it lacks (internal to net/).
#pragma once
#include <algorithm>
#include <boost/beast/http.hpp>
#include <cstdint>

namespace infer::net::detail {

namespace beast = boost::beast;
namespace http = beast::http;

// The request parser with the limits Beast's own lacks. Beast stores a field's name and
// value with 16-bit offsets and throws std::length_error past 65,533 bytes (a header of that
// size once server.max_header_bytes is raised, or any trailer field, which header_limit does
// not cover); this turns such a field into error::header_limit instead. Trailer fields count
// with the header's fields against max_header_bytes, and chunk extensions count with the
// chunk data against the body limit (Beast counts the data only).
class request_parser final : public http::request_parser<http::string_body> {
 public:
  request_parser(uint64_t field_budget, uint64_t body_budget) : field_budget_(field_budget), body_budget_(body_budget) {
    header_limit(uint32_t(std::min<uint64_t>(field_budget, UINT32_MAX)));
    body_limit(body_budget);
  }

 private:
  static constexpr size_t max_field_part = 65533;  // beast::http::basic_fields' off_t is 16 bits, minus ": "

  void on_field_impl(http::field name, beast::string_view name_string, beast::string_view value,
                     beast::error_code& ec) override {
    field_bytes_ += name_string.size() + value.size() + 4;  // ": " and CRLF
    if (name_string.size() > max_field_part || value.size() > max_field_part || field_bytes_ > field_budget_) {
      ec = http::error::header_limit;
      return;
    }
    get().insert(name, name_string, value);
  }

  void on_chunk_header_impl(std::uint64_t size, beast::string_view extensions, beast::error_code& ec) override {
    body_bytes_ += size + extensions.size();
    if (body_bytes_ > body_budget_) ec = http::error::body_limit;
  }

  uint64_t field_budget_, body_budget_;
  uint64_t field_bytes_ = 0, body_bytes_ = 0;
};

}  // namespace infer::net::detail
