// The PCRE2 regexes of pre-tokenizers and normalizers (tokenizer/impl.hpp: regex).
#include "tokenizer/impl.hpp"

namespace infer::tok_detail {

struct pcre2_code_deleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};

bool compile_regex(const std::string& pattern, regex& out, std::string& err) {
  int code = 0;
  PCRE2_SIZE off = 0;
  pcre2_code* re = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                                 &code, &off, nullptr);
  if (!re) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(code, buf, sizeof buf);
    err = "PCRE2 cannot compile the pattern at offset " + std::to_string(off) + ": " + reinterpret_cast<const char*>(buf);
    return false;
  }
  // JIT is a speed-up only: without it pcre2_match interprets the same pattern.
  out.jit = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
  out.code = std::shared_ptr<pcre2_code>(re, pcre2_code_deleter{});
  return true;
}

void regex::find_all(std::string_view s, std::vector<std::pair<uint32_t, uint32_t>>& out) const {
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code.get(), nullptr);
  if (!md) return;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t off = 0;
  while (off < s.size()) {
    // s is valid UTF-8 (checked or repaired by the caller), so no UTF check.
    int rc = jit ? pcre2_jit_match(code.get(), subject, s.size(), off, PCRE2_NO_UTF_CHECK, md, nullptr)
                 : pcre2_match(code.get(), subject, s.size(), off, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0) break;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t ms = ov[0], me = ov[1];
    if (me > ms) {
      out.emplace_back(uint32_t(ms), uint32_t(me));
      off = me;
    } else {  // an empty match: step over one character
      size_t len = 1;
      if (ms < s.size()) scan_utf8(reinterpret_cast<const unsigned char*>(s.data()) + ms, s.size() - ms, len);
      off = ms + len;
    }
  }
  pcre2_match_data_free(md);
}

}  // namespace infer::tok_detail
