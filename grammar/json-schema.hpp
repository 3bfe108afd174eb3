// json_schema: a JSON schema (the subset OpenAI's strict mode and vLLM document) to a
// byte_pattern of the JSON texts that validate against it.
//
// Supported keywords: type (a name or a list), properties, required, additionalProperties
// (false; true or a schema are accepted but no extra property is generated: the output still
// validates), items, minItems, maxItems, enum, const, anyOf, allOf of one schema, $ref to
// "#", "#/$defs/..." or "#/definitions/..." (recursion bounded by max_depth), $defs /
// definitions, string minLength / maxLength, pattern (grammar/regex.hpp, without the length
// bounds) and format (date, time, date-time, uuid), and the annotations (title, description,
// default, examples, $schema, $id, $comment, deprecated, readOnly, writeOnly). Any other
// keyword is an error naming it (never a silently looser output).
//
// The output's shape: properties in the schema's order (required ones always, optional
// ones may be left out), strings as their JSON literal (escapes allowed), at most
// max_whitespace whitespace bytes (space, \n, \t) wherever JSON allows whitespace, numbers of
// bounded digits (json_options::max_*_digits), and
// containers nested at most max_depth deep where the schema leaves the depth open
// (json_object, an untyped value, a recursive $ref).
#pragma once
#include <nlohmann/json.hpp>

#include "base/result.hpp"
#include "grammar/byte-dfa.hpp"

namespace infer::grammar {

struct json_options {
  int32_t max_whitespace = 2;
  int32_t max_depth = 5;
  int32_t max_items_bound = 256;  // a larger minItems / maxItems is refused
  // Numbers: at most this many digits before the point, after it, and in the exponent (so
  // the largest is 9999999999999999.9999999999999999e99, well inside a double).
  int32_t max_int_digits = 16;
  int32_t max_frac_digits = 16;
  int32_t max_exp_digits = 2;
};

// invalid_argument with the schema path and keyword, e.g.
// `schema.properties.age: unsupported keyword "minimum"`.
result<pattern_ptr> json_schema_pattern(const nlohmann::ordered_json& schema, const json_options& opt = {});
// Any JSON object (OpenAI's response_format json_object).
pattern_ptr json_object_pattern(const json_options& opt = {});

}  // namespace infer::grammar
