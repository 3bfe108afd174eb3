// status / result: errors as values across the engine (no exceptions across actors).
#pragma once
#include <string>
#include <utility>
#include <variant>

namespace infer {

enum class errc {
  ok = 0,
  invalid_argument,  // caller misuse: bad shapes, unknown sequence, ...
  io_error,          // file missing, unreadable
  format_error,      // bad header, wrong shape, truncated data
  out_of_memory,     // allocation failed (host or device)
  device_error,      // CUDA / cuBLAS failure
  internal,
};

const char* errc_name(errc e);

struct status {
  errc code = errc::ok;
  std::string message;
  static status ok() { return {}; }
  explicit operator bool() const { return code == errc::ok; }
  bool is_ok() const { return code == errc::ok; }
};

inline status make_status(errc c, std::string msg) { return status{c, std::move(msg)}; }

// A value or an error. Small on purpose: std::expected is C++23.
template <class T>
class result {
 public:
  result(T v) : v_(std::move(v)) {}
  result(status s) : v_(std::move(s)) {}
  bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& value() const& { return std::get<0>(v_); }
  T& operator*() & { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const status& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, status> v_;
};

}  // namespace infer
