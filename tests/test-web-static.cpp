// The embedded web/ files: byte-exact copies of the sources, the right types, and no way
// out of the table.
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>
#include <string>

#include "web/static-files.hpp"

namespace {

std::string read_source(std::string_view url_path) {
  std::ifstream f(std::string(INFER_SOURCE_DIR) + "/web" + std::string(url_path), std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

}  // namespace

TEST_CASE("every embedded file is the source file, byte for byte") {
  auto files = infer::static_files();
  REQUIRE(files.size() >= 6);
  for (const auto& f : files) {
    CAPTURE(f.path);
    std::string src = read_source(f.path);
    CHECK(!src.empty());
    CHECK(f.body == src);
  }
}

TEST_CASE("the page answers /, /index.html and /dashboard") {
  const auto* root = infer::find_static_file("/");
  REQUIRE(root != nullptr);
  CHECK(root->path == "/index.html");
  CHECK(root->content_type == "text/html; charset=utf-8");
  CHECK(root->body.find("<canvas id=\"plot-tokens\"") != std::string_view::npos);
  CHECK(infer::find_static_file("/index.html") == root);
  CHECK(infer::find_static_file("/dashboard") == root);
  CHECK(infer::find_static_file("/?x=1") == root);
  CHECK(infer::find_static_file("/dashboard#live") == root);
}

TEST_CASE("content types follow the extension") {
  const auto* js = infer::find_static_file("/app.js");
  REQUIRE(js != nullptr);
  CHECK(js->content_type == "text/javascript; charset=utf-8");
  const auto* css = infer::find_static_file("/style.css?v=2");
  REQUIRE(css != nullptr);
  CHECK(css->content_type == "text/css; charset=utf-8");
  CHECK(css->body == read_source("/style.css"));
}

TEST_CASE("paths outside the table find nothing") {
  for (std::string_view p : {"", "/nope.js", "/../CMakeLists.txt", "/web/app.js", "/%2e%2e/app.js", "/app.js/",
                             "app.js", "/APP.JS", "/metrics", "/v1/stream", "/embed.cmake", "/CMakeLists.txt",
                             "/static-files.cpp"}) {
    CAPTURE(p);
    CHECK(infer::find_static_file(p) == nullptr);
  }
}
