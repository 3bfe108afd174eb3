// escape: the shared part of the string writers of each text format, JSON (net/protocol's
// append_json_string, template/jinja's tojson) and TOML (config's toml_string_literal). The
// formats differ on purpose, and those differences are the rules below; the rest (named
// escapes, \u00XX for controls, well-formed UTF-8 copied, an ill-formed byte as U+FFFD) is
// one loop.
#pragma once
#include <string>
#include <string_view>

namespace infer {

struct escape_rules {
  bool escape_del = false;    // TOML: U+007F is a control that a basic string must escape
  bool upper_hex = false;     // TOML's writer: \u001F; JSON's and Python's: \u001f
  bool ensure_ascii = false;  // Python's json.dumps: non-ASCII as \uXXXX (surrogate pairs past U+FFFF)
  bool escaped_replacement = false;  // an ill-formed byte as the escape \uFFFD (TOML), not U+FFFD itself
};

inline constexpr escape_rules json_escape_rules{};
inline constexpr escape_rules toml_escape_rules{true, true, false, true};

// Appends `s` escaped for a double-quoted JSON or TOML string, without the quotes: the quote,
// the backslash and \n \r \t \b \f by name, other controls as \u00XX, well-formed UTF-8 copied (or
// \u-escaped with ensure_ascii), each byte of an ill-formed sequence as U+FFFD (both
// formats hold Unicode text only).
void append_escaped(std::string& out, std::string_view s, const escape_rules& r);

}  // namespace infer
