#include "grammar/byte-dfa.hpp"

#include <algorithm>
#include <unordered_map>

namespace infer::grammar {

pattern_ptr byte_pattern::make_empty() { return std::make_shared<byte_pattern>(); }

pattern_ptr byte_pattern::make_set(const byte_set& s) {
  auto p = std::make_shared<byte_pattern>();
  p->type = kind::set;
  p->bytes = s;
  return p;
}

pattern_ptr byte_pattern::make_byte(uint8_t b) {
  byte_set s;
  s.set(b);
  return make_set(s);
}

pattern_ptr byte_pattern::make_literal(std::string_view bytes) {
  std::vector<pattern_ptr> parts;
  for (unsigned char c : bytes) parts.push_back(make_byte(c));
  return make_seq(std::move(parts));
}

pattern_ptr byte_pattern::make_seq(std::vector<pattern_ptr> parts) {
  if (parts.empty()) return make_empty();
  if (parts.size() == 1) return parts[0];
  auto p = std::make_shared<byte_pattern>();
  p->type = kind::seq;
  p->parts = std::move(parts);
  return p;
}

pattern_ptr byte_pattern::make_alt(std::vector<pattern_ptr> parts) {
  if (parts.size() == 1) return parts[0];
  auto p = std::make_shared<byte_pattern>();
  p->type = kind::alt;  // no parts: matches nothing
  p->parts = std::move(parts);
  return p;
}

pattern_ptr byte_pattern::make_repeat(pattern_ptr x, int32_t min, int32_t max) {
  if (min == 1 && max == 1) return x;
  auto p = std::make_shared<byte_pattern>();
  p->type = kind::repeat;
  p->parts.push_back(std::move(x));
  p->min = min;
  p->max = max;
  return p;
}

pattern_ptr byte_pattern::make_utf8_char(const byte_set& ascii) {
  auto range = [](int lo, int hi) {
    byte_set s;
    for (int b = lo; b <= hi; ++b) s.set(size_t(b));
    return make_set(s);
  };
  byte_set a;
  for (int b = 0; b < 0x80; ++b)
    if (ascii.test(size_t(b))) a.set(size_t(b));
  auto cont = range(0x80, 0xBF);
  std::vector<pattern_ptr> alts;
  if (a.any()) alts.push_back(make_set(a));
  alts.push_back(make_seq({range(0xC2, 0xDF), cont}));
  alts.push_back(make_seq({make_byte(0xE0), range(0xA0, 0xBF), cont}));
  byte_set e3;
  for (int b = 0xE1; b <= 0xEF; ++b)
    if (b != 0xED) e3.set(size_t(b));
  alts.push_back(make_seq({make_set(e3), cont, cont}));
  alts.push_back(make_seq({make_byte(0xED), range(0x80, 0x9F), cont}));  // no surrogates
  alts.push_back(make_seq({make_byte(0xF0), range(0x90, 0xBF), cont, cont}));
  alts.push_back(make_seq({range(0xF1, 0xF3), cont, cont, cont}));
  alts.push_back(make_seq({make_byte(0xF4), range(0x80, 0x8F), cont, cont}));
  return make_alt(std::move(alts));
}

namespace {

struct too_large {
  std::string what;
};

// Thompson NFA: each state has at most one byte-set edge and any number of epsilon edges.
struct nfa {
  struct state {
    int32_t set = -1;     // index into sets, -1: none
    int32_t target = -1;  // of the set edge
    int32_t eps = -1;     // head of its epsilon list
  };
  struct eps_edge {
    int32_t to, next;
  };
  std::vector<state> states;
  std::vector<eps_edge> eps;
  std::vector<byte_set> sets;
  std::unordered_map<byte_set, int32_t> set_ids;
  struct key_hash {
    size_t operator()(const std::pair<const byte_pattern*, int32_t>& k) const {
      return std::hash<const void*>()(k.first) * 1000003u ^ size_t(k.second);
    }
  };
  std::unordered_map<std::pair<const byte_pattern*, int32_t>, int32_t, key_hash> memo;
  int32_t limit = 0;

  int32_t add_state() {
    if (int32_t(states.size()) >= limit)
      throw too_large{"more than " + std::to_string(limit) + " automaton states before determinisation"};
    states.push_back({});
    return int32_t(states.size()) - 1;
  }
  void add_eps(int32_t from, int32_t to) {
    eps.push_back({to, states[size_t(from)].eps});
    states[size_t(from)].eps = int32_t(eps.size()) - 1;
  }
  int32_t set_id(const byte_set& s) {
    auto [it, fresh] = set_ids.emplace(s, int32_t(sets.size()));
    if (fresh) sets.push_back(s);
    return it->second;
  }

  // The entry state of `p` followed by `next`.
  int32_t emit(const byte_pattern* p, int32_t next) {
    using k = byte_pattern::kind;
    if (p->type == k::empty) return next;
    auto key = std::make_pair(p, next);
    if (auto it = memo.find(key); it != memo.end()) return it->second;
    int32_t entry = -1;
    switch (p->type) {
      case k::empty: entry = next; break;
      case k::set: {
        entry = add_state();
        states[size_t(entry)].set = set_id(p->bytes);
        states[size_t(entry)].target = next;
        break;
      }
      case k::seq: {
        int32_t cur = next;
        for (size_t i = p->parts.size(); i-- > 0;) cur = emit(p->parts[i].get(), cur);
        entry = cur;
        break;
      }
      case k::alt: {
        entry = add_state();
        for (const auto& part : p->parts) add_eps(entry, emit(part.get(), next));
        break;
      }
      case k::repeat: {
        const byte_pattern* x = p->parts[0].get();
        int32_t cur = next;
        if (p->max < 0) {
          int32_t loop = add_state();
          add_eps(loop, next);
          add_eps(loop, emit(x, loop));
          cur = loop;
        } else {
          for (int32_t j = 0; j < p->max - p->min; ++j) {  // optional copies, innermost first
            int32_t o = add_state();
            add_eps(o, next);
            add_eps(o, emit(x, cur));
            cur = o;
          }
        }
        for (int32_t j = 0; j < p->min; ++j) cur = emit(x, cur);
        entry = cur;
        break;
      }
    }
    memo.emplace(key, entry);
    return entry;
  }
};

struct vec_hash {
  size_t operator()(const std::vector<int32_t>& v) const {
    uint64_t h = 1469598103934665603ull;
    for (int32_t x : v) h = (h ^ uint32_t(x)) * 1099511628211ull;
    return size_t(h);
  }
};

}  // namespace

result<byte_dfa> compile_byte_dfa(const pattern_ptr& p, const dfa_limits& lim) {
  nfa n;
  n.limit = lim.nfa_states;
  int32_t final_state = 0, entry = 0;
  try {
    final_state = n.add_state();
    entry = n.emit(p.get(), final_state);
  } catch (const too_large& e) {
    return make_status(errc::invalid_argument, "the constraint is too large: " + e.what);
  }
  n.memo.clear();

  // Byte equivalence classes: bytes that every set treats alike.
  byte_dfa d;
  {
    std::unordered_map<std::string, int32_t> sig_ids;
    std::string sig(n.sets.size(), '0');
    for (int b = 0; b < 256; ++b) {
      for (size_t i = 0; i < n.sets.size(); ++i) sig[i] = n.sets[i].test(size_t(b)) ? '1' : '0';
      auto [it, fresh] = sig_ids.emplace(sig, int32_t(sig_ids.size()));
      d.cls_[size_t(b)] = uint8_t(it->second);
    }
    d.n_classes_ = int32_t(sig_ids.size());
  }
  const int32_t C = d.n_classes_;
  std::vector<int> rep(size_t(C), -1);
  for (int b = 0; b < 256; ++b)
    if (rep[d.cls_[size_t(b)]] < 0) rep[d.cls_[size_t(b)]] = b;
  std::vector<std::vector<uint8_t>> set_has(n.sets.size(), std::vector<uint8_t>(size_t(C), 0));
  for (size_t i = 0; i < n.sets.size(); ++i)
    for (int32_t c = 0; c < C; ++c) set_has[i][size_t(c)] = n.sets[i].test(size_t(rep[size_t(c)])) ? 1 : 0;

  // Subset construction. A DFA state is the sorted set of NFA states with a byte edge in the
  // closure, plus -1 first when the closure holds the final state.
  std::vector<int32_t> stamp(n.states.size(), -1);
  int32_t stamp_no = 0;
  std::vector<int32_t> stack;
  auto closure = [&](const std::vector<int32_t>& seeds, std::vector<int32_t>& out) {
    ++stamp_no;
    out.clear();
    stack.assign(seeds.begin(), seeds.end());
    bool fin = false;
    while (!stack.empty()) {
      int32_t s = stack.back();
      stack.pop_back();
      if (stamp[size_t(s)] == stamp_no) continue;
      stamp[size_t(s)] = stamp_no;
      if (s == final_state) fin = true;
      if (n.states[size_t(s)].set >= 0) out.push_back(s);
      for (int32_t e = n.states[size_t(s)].eps; e >= 0; e = n.eps[size_t(e)].next) stack.push_back(n.eps[size_t(e)].to);
    }
    std::sort(out.begin(), out.end());
    if (fin) out.insert(out.begin(), -1);
  };
  std::unordered_map<std::vector<int32_t>, int32_t, vec_hash> ids;
  std::vector<std::vector<int32_t>> sets_of;
  std::vector<int32_t> trans;
  std::vector<uint8_t> accept;
  std::vector<int32_t> cur, seeds;
  closure({entry}, cur);
  ids.emplace(cur, 0);
  sets_of.push_back(cur);
  for (size_t q = 0; q < sets_of.size(); ++q) {
    const std::vector<int32_t> members = sets_of[q];
    accept.push_back(!members.empty() && members[0] == -1 ? 1 : 0);
    trans.resize(trans.size() + size_t(C), byte_dfa::dead);
    for (int32_t c = 0; c < C; ++c) {
      seeds.clear();
      for (int32_t s : members)
        if (s >= 0 && set_has[size_t(n.states[size_t(s)].set)][size_t(c)]) seeds.push_back(n.states[size_t(s)].target);
      if (seeds.empty()) continue;
      closure(seeds, cur);
      auto [it, fresh] = ids.emplace(cur, int32_t(sets_of.size()));
      if (fresh) {
        if (int32_t(sets_of.size()) >= lim.dfa_states)
          return make_status(errc::invalid_argument, "the constraint is too large: more than " +
                                                         std::to_string(lim.dfa_states) + " automaton states");
        sets_of.push_back(cur);
      }
      trans[q * size_t(C) + size_t(c)] = it->second;
    }
  }
  const int32_t S = int32_t(sets_of.size());
  sets_of.clear();

  // Keep the states from which an accepting one is reachable (reverse BFS).
  std::vector<int32_t> rstart(size_t(S) + 1, 0), redge;
  for (int32_t t : trans)
    if (t >= 0) ++rstart[size_t(t) + 1];
  for (int32_t s = 0; s < S; ++s) rstart[size_t(s) + 1] += rstart[size_t(s)];
  redge.resize(size_t(rstart[size_t(S)]));
  {
    std::vector<int32_t> fill(rstart.begin(), rstart.end() - 1);
    for (int32_t s = 0; s < S; ++s)
      for (int32_t c = 0; c < C; ++c)
        if (int32_t t = trans[size_t(s) * size_t(C) + size_t(c)]; t >= 0) redge[size_t(fill[size_t(t)]++)] = s;
  }
  std::vector<uint8_t> live(size_t(S), 0);
  std::vector<int32_t> queue;
  for (int32_t s = 0; s < S; ++s)
    if (accept[size_t(s)]) live[size_t(s)] = 1, queue.push_back(s);
  for (size_t i = 0; i < queue.size(); ++i)
    for (int32_t k = rstart[size_t(queue[i])]; k < rstart[size_t(queue[i]) + 1]; ++k)
      if (!live[size_t(redge[size_t(k)])]) live[size_t(redge[size_t(k)])] = 1, queue.push_back(redge[size_t(k)]);
  if (!live[0]) return make_status(errc::invalid_argument, "the constraint matches no output at all");
  std::vector<int32_t> renum(size_t(S), -1);
  int32_t L = 0;
  for (int32_t s = 0; s < S; ++s)
    if (live[size_t(s)]) renum[size_t(s)] = L++;
  d.n_states_ = L;
  d.trans_.assign(size_t(L) * size_t(C), byte_dfa::dead);
  d.accept_.assign(size_t(L), 0);
  d.live_out_.assign(size_t(L), 0);
  for (int32_t s = 0; s < S; ++s) {
    const int32_t r = renum[size_t(s)];
    if (r < 0) continue;
    d.accept_[size_t(r)] = accept[size_t(s)];
    for (int32_t c = 0; c < C; ++c) {
      int32_t t = trans[size_t(s) * size_t(C) + size_t(c)];
      int32_t rt = t >= 0 ? renum[size_t(t)] : -1;
      d.trans_[size_t(r) * size_t(C) + size_t(c)] = rt;
      if (rt >= 0) d.live_out_[size_t(r)] = 1;
    }
  }
  return d;
}

}  // namespace infer::grammar
