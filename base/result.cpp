#include "base/result.hpp"

namespace infer {

const char* errc_name(errc e) {
  switch (e) {
    case errc::ok: return "ok";
    case errc::invalid_argument: return "invalid_argument";
    case errc::io_error: return "io_error";
    case errc::format_error: return "format_error";
    case errc::out_of_memory: return "out_of_memory";
    case errc::device_error: return "device_error";
    case errc::internal: return "internal";
  }
  return "unknown";
}

}  // namespace infer
