// static-files: the files of web/ (playground and dashboard), embedded into the binary at
// build time by web/embed.cmake, so inferd serves its page with nothing installed beside
// it and no internet. The HTTP router serves find_static_file(path) for a GET that no API
// route takes.
#pragma once
#include <span>
#include <string_view>

namespace infer {

struct static_file {
  std::string_view path;          // URL path of the file, "/app.js"
  std::string_view content_type;  // "text/javascript; charset=utf-8"
  std::string_view body;          // the bytes, alive for the whole program
};

// The file answering a URL path, or nullptr. "/" and "/dashboard" are the page
// (index.html); a query string or fragment is ignored; anything outside the embedded set
// (including "..", encoded or not) finds nothing.
const static_file* find_static_file(std::string_view url_path);

// Every embedded file, each under its own path (tests, listings).
std::span<const static_file> static_files();

}  // namespace infer
