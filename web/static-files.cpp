#include "web/static-files.hpp"

namespace infer {

const static_file* find_static_file(std::string_view url_path) {
  url_path = url_path.substr(0, url_path.find_first_of("?#"));
  // The page is one document; /dashboard shows its dashboard alone (app.js reads the path).
  if (url_path == "/" || url_path == "/dashboard" || url_path == "/dashboard/") url_path = "/index.html";
  // An exact match against a fixed table: no file system, so no path can escape it.
  for (const auto& f : static_files())
    if (f.path == url_path) return &f;
  return nullptr;
}

}  // namespace infer
