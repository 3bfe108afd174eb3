// Byte-pair encoding of one pre-tokenized word: the merge loop over a ranked candidate
// heap, the word cache, and the id tables built once at load time.
#include <algorithm>

#include "tokenizer/impl.hpp"
#include "tokenizer/tokenizer.hpp"

namespace infer {

using namespace tok_detail;

void tokenizer::impl::push_cand(scratch& sc, int32_t left) const {
  const node& l = sc.nodes[size_t(left)];
  if (l.next < 0) return;
  const node& r = sc.nodes[size_t(l.next)];
  auto it = ranks.find(pair_key(l.id, r.id));
  if (it == ranks.end()) return;
  sc.heap.push_back({it->second.rank, left, l.id, r.id, it->second.id});
  std::push_heap(sc.heap.begin(), sc.heap.end(), std::greater<>{});
}

// The tokenizers library's merge_word: the lowest-ranked pair present is merged first,
// leftmost first among equals, and the pairs a merge makes compete at once (so a file
// whose merges rank a longer pair before a shorter one, like Gemma 3's runs of U+2581,
// gets the library's result). On learned merges, where a pair ranks after the pairs
// that made its halves, this equals encoder.py's round-by-round merging (the GPT-2
// oracle). A heap of candidates (rank, position) over a linked list of symbols makes it
// O(n log n); the vectors live in the caller's scratch, so a word allocates nothing
// once they have grown.
void tokenizer::impl::bpe(scratch& sc) const {
  sc.nodes.clear();
  sc.heap.clear();
  sc.ids.clear();
  const int32_t n = int32_t(sc.syms.size());
  for (int32_t i = 0; i < n; ++i) sc.nodes.push_back({sc.syms[size_t(i)], i - 1, i + 1 < n ? i + 1 : -1});
  for (int32_t i = 0; i + 1 < n; ++i) push_cand(sc, i);
  while (!sc.heap.empty()) {
    std::pop_heap(sc.heap.begin(), sc.heap.end(), std::greater<>{});
    const cand c = sc.heap.back();
    sc.heap.pop_back();
    node& l = sc.nodes[size_t(c.left)];
    if (l.id != c.a || l.next < 0 || sc.nodes[size_t(l.next)].id != c.b) continue;  // stale
    node& r = sc.nodes[size_t(l.next)];
    l.id = c.merged;
    l.next = r.next;
    if (r.next >= 0) sc.nodes[size_t(r.next)].prev = c.left;
    r.id = -1;  // dead
    if (l.prev >= 0) push_cand(sc, l.prev);
    push_cand(sc, c.left);
  }
  for (int32_t i = 0; i >= 0 && i < n; i = sc.nodes[size_t(i)].next) sc.ids.push_back(sc.nodes[size_t(i)].id);
}

// The word's initial symbols: one per byte (byte-level), else one per character, with
// a character missing from the vocabulary spelled as its <0xNN> bytes (byte_fallback)
// or as the unknown token (consecutive ones fused into one with fuse_unk), or dropped
// when the model has neither (the tokenizers library fails the whole encode there).
void tokenizer::impl::word_symbols(std::string_view word, scratch& sc) const {
  sc.syms.clear();
  if (byte_symbols) {
    // -1: a byte the vocabulary lacks and no unk_token to stand for it (dropped, as
    // the library would fail the encode instead).
    for (char c : word)
      if (int32_t id = byte_id[uint8_t(c)]; id >= 0) sc.syms.push_back(id);
    return;
  }
  bool last_unk = false;
  size_t i = 0;
  while (i < word.size()) {
    size_t s = i;
    next_cp(word, i);
    auto it = model_id.find(word.substr(s, i - s));
    if (it != model_id.end()) {
      sc.syms.push_back(it->second);
      last_unk = false;
      continue;
    }
    if (byte_fallback) {
      bool all = true;
      for (size_t k = s; k < i; ++k) all = all && fallback_id[uint8_t(word[k])] >= 0;
      if (all) {
        for (size_t k = s; k < i; ++k) sc.syms.push_back(fallback_id[uint8_t(word[k])]);
        last_unk = false;
        continue;
      }
    }
    if (unk_id >= 0) {
      if (!(fuse_unk && last_unk)) sc.syms.push_back(unk_id);
      last_unk = true;
    }
  }
}

void tokenizer::impl::encode_word(std::string_view word, std::vector<int32_t>& out, scratch& sc) const {
  if (word.empty()) return;
  if (byte_symbols && word.size() == 1) {
    if (byte_id[uint8_t(word[0])] >= 0) out.push_back(byte_id[uint8_t(word[0])]);
    return;
  }
  if (ignore_merges) {
    if (auto it = model_id.find(word); it != model_id.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= k_cache_max_chunk;
  cache_shard* shard = nullptr;
  if (cacheable) {
    shard = &cache[sv_hash{}(word) % k_cache_shards];
    std::lock_guard<std::mutex> lk(shard->mu);
    auto it = shard->map.find(word);
    if (it != shard->map.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  word_symbols(word, sc);
  bpe(sc);
  out.insert(out.end(), sc.ids.begin(), sc.ids.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lk(shard->mu);
    if (shard->map.size() >= k_cache_max_entries) shard->map.clear();
    shard->map.emplace(std::string(word), sc.ids);
  }
}

void tokenizer::impl::finish_tables(std::vector<std::string>& tok_bytes, std::vector<std::string>& tok_strs) {
  size_t total = 0;
  for (auto& t : tok_bytes) total += t.size();
  bytes.clear();
  bytes.reserve(total);
  offs.clear();
  offs.reserve(tok_bytes.size() + 1);
  for (auto& t : tok_bytes) {
    offs.push_back(uint32_t(bytes.size()));
    bytes += t;
  }
  offs.push_back(uint32_t(bytes.size()));
  total = 0;
  for (auto& t : tok_strs) total += t.size();
  strs.clear();
  strs.reserve(total);
  soffs.clear();
  soffs.reserve(tok_strs.size() + 1);
  for (auto& t : tok_strs) {
    soffs.push_back(uint32_t(strs.size()));
    strs += t;
  }
  soffs.push_back(uint32_t(strs.size()));
  special.resize(tok_bytes.size(), 0);
}

}  // namespace infer
