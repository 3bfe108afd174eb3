// GPT-2's vocabulary files (vocab.json + merges.txt, or encoder.json + vocab.bpe):
// tokenizer::from_files, and the file reading every loader uses.
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "tokenizer/impl.hpp"
#include "tokenizer/tokenizer.hpp"

namespace infer {
namespace tok_detail {

std::string read_file(const std::string& path, status& st, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    st = make_status(errc::io_error, std::string("tokenizer: cannot open ") + what + " '" + path + "'");
    return {};
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) st = make_status(errc::io_error, std::string("tokenizer: cannot read ") + what + " '" + path + "'");
  return std::move(ss).str();
}


}  // namespace tok_detail

namespace {
using namespace tok_detail;

// vocab.json as a flat object of token -> id, read without building a DOM.
struct vocab_reader : nlohmann::json_sax<nlohmann::json> {
  std::unordered_map<std::string, int32_t, sv_hash, std::equal_to<>> id_of;  // key (byte-unicode text) -> id
  int64_t max_id = -1;
  std::string key_, error;
  int depth = 0;

  bool fail(std::string why) {
    if (error.empty()) error = std::move(why);
    return false;
  }
  bool value(int64_t id) {
    if (depth != 1) return fail("not a flat object of token -> id");
    if (id < 0 || id > 10'000'000)
      return fail("id " + std::to_string(id) + " of token " + nlohmann::json(key_).dump() + " is out of range");
    id_of[key_] = int32_t(id);  // a key given twice keeps its last id, as json.load does
    max_id = std::max(max_id, id);
    return true;
  }
  bool not_id() { return fail("id of token " + nlohmann::json(key_).dump() + " is not an integer"); }
  bool null() override { return not_id(); }
  bool boolean(bool) override { return not_id(); }
  bool number_integer(number_integer_t v) override { return value(v); }
  bool number_unsigned(number_unsigned_t v) override {
    if (v > 10'000'000) return fail("id " + std::to_string(v) + " of token " + nlohmann::json(key_).dump() + " is out of range");
    return value(int64_t(v));
  }
  bool number_float(number_float_t, const string_t&) override { return not_id(); }
  bool string(string_t&) override { return not_id(); }
  bool binary(binary_t&) override { return not_id(); }
  bool start_object(std::size_t n) override {
    if (depth++ != 0) return fail("not a flat object of token -> id");
    if (n != std::size_t(-1)) id_of.reserve(n);
    else id_of.reserve(65536);
    return true;
  }
  bool key(string_t& k) override {
    key_ = std::move(k);
    return true;
  }
  bool end_object() override {
    --depth;
    return true;
  }
  bool start_array(std::size_t) override { return fail("not an object"); }
  bool end_array() override { return false; }
  bool parse_error(std::size_t pos, const std::string&, const nlohmann::detail::exception& e) override {
    return fail(std::string("not valid JSON (byte ") + std::to_string(pos) + "): " + e.what());
  }
};


}  // namespace

result<tokenizer> tokenizer::from_files(const std::string& vocab_json, const std::string& merges_txt) {
  status st;
  std::string vtext = read_file(vocab_json, st, "vocab file");
  if (!st) return st;
  std::string mtext = read_file(merges_txt, st, "merges file");
  if (!st) return st;

  // SAX: a DOM of 50k keys costs about three times the parse itself.
  vocab_reader rd;
  bool parsed = false;
  try {
    parsed = nlohmann::json::sax_parse(vtext, &rd);
  } catch (const std::exception& e) {
    if (rd.error.empty()) rd.error = e.what();
  }
  if (!parsed || !rd.error.empty() || rd.id_of.empty())
    return make_status(errc::format_error, "tokenizer: vocab file '" + vocab_json + "' is not a JSON object of token -> id" +
                                               (rd.error.empty() ? std::string() : ": " + rd.error));
  auto p = std::make_shared<impl>();
  std::vector<std::string> tok_bytes;
  auto& id_of = rd.id_of;
  const int64_t max_id = rd.max_id;
  tok_bytes.resize(size_t(max_id + 1));
  std::vector<uint8_t> seen(size_t(max_id + 1), 0);
  for (const auto& [key, id] : id_of) {
    if (seen[size_t(id)])
      return make_status(errc::format_error, "tokenizer: vocab file '" + vocab_json + "': id " + std::to_string(id) +
                                                 " is used by more than one token");
    seen[size_t(id)] = 1;
    tok_bytes[size_t(id)] = key_to_bytes(key);
  }
  const auto& bu = byte_unicode();
  auto key_of_byte = [&](int b) {
    std::string k;
    uint32_t cp = bu.to_cp[size_t(b)];
    if (cp < 0x80) k.push_back(char(cp));
    else { k.push_back(char(0xC0 | (cp >> 6))); k.push_back(char(0x80 | (cp & 0x3F))); }
    return k;
  };
  for (int b = 0; b < 256; ++b) {
    auto it = id_of.find(key_of_byte(b));
    if (it == id_of.end())
      return make_status(errc::format_error, "tokenizer: vocab file '" + vocab_json + "' has no token for byte " +
                                                 std::to_string(b) + " (not a byte-level BPE vocabulary)");
    p->byte_id[size_t(b)] = it->second;
  }
  if (auto it = id_of.find("<|endoftext|>"); it != id_of.end()) p->eot = it->second;

  // merges: "a b" per line, rank = line order; "#version" lines and blank lines skipped.
  // A pair listed twice keeps its last rank, as dict(zip(merges, range)) does.
  p->ranks.reserve(size_t(max_id + 1));
  uint32_t rank = 0;
  size_t line_no = 0, pos = 0;
  std::string joined;
  while (pos < mtext.size()) {
    size_t eol = mtext.find('\n', pos);
    if (eol == std::string::npos) eol = mtext.size();
    std::string_view line(mtext.data() + pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.starts_with("#version") || line.find_first_not_of(" \t") == std::string_view::npos) continue;
    std::string_view parts[3];
    int np = 0;
    size_t i = 0;
    while (i < line.size() && np < 3) {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
      if (i >= line.size()) break;
      size_t s = i;
      while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
      parts[np++] = line.substr(s, i - s);
    }
    auto bad = [&](const std::string& why) {
      return make_status(errc::format_error, "tokenizer: merges file '" + merges_txt + "' line " +
                                                 std::to_string(line_no) + ": " + why);
    };
    if (np != 2) return bad("expected two tokens separated by a space");
    auto a = id_of.find(parts[0]);
    auto b = id_of.find(parts[1]);
    joined.assign(parts[0]).append(parts[1]);
    auto ab = id_of.find(std::string_view(joined));
    if (a == id_of.end() || b == id_of.end() || ab == id_of.end())
      return bad("token '" + std::string(parts[a == id_of.end() ? 0 : 1]) +
                 (ab == id_of.end() && a != id_of.end() && b != id_of.end() ? "' merged" : "'") +
                 " is not in the vocab file '" + vocab_json + "'");
    p->ranks[impl::pair_key(a->second, b->second)] = impl::merge{rank++, ab->second};
  }

  std::string err;
  if (!compile_regex(gpt2_pattern, p->gpt2_re, err))
    return make_status(errc::internal, "tokenizer: GPT-2 pattern: " + err);

  p->kind = impl::kind_t::gpt2;
  p->format = "vocab.json + merges.txt (GPT-2 byte-level BPE)";
  std::vector<std::string> tok_strs(tok_bytes.size());
  for (auto& [key, id] : id_of) tok_strs[size_t(id)] = key;
  p->str_to_id = std::move(id_of);
  p->finish_tables(tok_bytes, tok_strs);
  if (p->eot >= 0) {
    p->added.push_back({"<|endoftext|>", p->eot, true, false, false, false, false});
    p->raw_trie.insert("<|endoftext|>", 0);
    p->special[size_t(p->eot)] = 1;
  }
  return tokenizer(std::move(p));
}

}  // namespace infer
