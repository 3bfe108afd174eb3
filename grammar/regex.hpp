// regex: an ECMAScript-like regular expression to a byte_pattern (grammar/byte-dfa.hpp).
//
// Supported: literals (UTF-8), escapes (\d \w \s \D \W \S, \n \t \r \f \v \0, \xHH, \uHHHH,
// \u{H..}, an escaped punctuation character), `.` (any character but \n and \r), classes
// [a-z\d_] and [^...] (negated classes: ASCII members only), groups ( ), (?: ), (?<name> ),
// alternation |, quantifiers * + ? {m} {m,} {m,n} (lazy forms `*?` etc. accepted: the
// language is the same). The whole output must match: `^` at the start and `$` at the end
// are accepted and change nothing. Refused with an error naming the construct:
// backreferences, lookaround, \b \B, anchors elsewhere, flags, counts above 1000.
#pragma once
#include <string_view>

#include "base/result.hpp"
#include "grammar/byte-dfa.hpp"

namespace infer::grammar {

struct regex_options {
  // Inside a JSON string (a schema's `pattern`): characters JSON must escape (", \ and
  // controls) are left out, so the matched text is the string literal's body unchanged.
  bool json_string = false;
};

result<pattern_ptr> regex_pattern(std::string_view re, const regex_options& opt = {});

}  // namespace infer::grammar
