#!/usr/bin/env python3
"""PyTorch transformers side of the GPU checks (runs on the GPU machine, see gpu-run.sh).

  export  build a model from a preset config with seeded random weights and save it with
          save_pretrained, plus prompts.txt (random token ids, one prompt a line):
          GPT2LMHeadModel (fp32 on disk, Conv1D [in, out]), or the Llama family from the
          real configs of Llama-3.2-1B, Qwen2.5-0.5B, Qwen3-0.6B, a 2-layer cut of
          GLM-4-9B-0414 and of Mistral-7B (bf16 on disk as released, sharded)
  check   compare the logits and greedy tokens written by cuda-logits-dump against the
          fp32 transformers model on the same weights (teacher-forced on our tokens):
          relative error (L2 over the vocabulary, per position) for prefill and for
          every decode step; greedy tokens of the first 32 steps. GPT-2 (fp16): under
          1e-2 and identical tokens. Llama family (bf16): at most 1.25x transformers' own
          bf16-versus-fp32 error on the same sequences (both reported), and where a
          token differs the reference's top two logits must lie within transformers'
          bf16 error of that row
  bench   transformers generate() in fp16 on the same weights, tokens/s per batch size,
          and the ratio to our engine's figures (bench-cuda's JSON lines)
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

PRESETS = {
    "small": dict(vocab_size=1000, n_positions=256, n_embd=256, n_layer=4, n_head=4),
    "gpt2-small": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
}


# The Llama family: the released configs (hidden sizes, heads, vocabularies, RoPE), with
# the depth cut where the real model would take minutes to export for no extra coverage.
# Mistral's sliding window is shortened so that it is shorter than the sequences checked.
LLAMA_PRESETS = {
    "llama3.2-1b": ("LlamaConfig", dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, hidden_act="silu",
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192),
        tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        bos_token_id=128000, eos_token_id=128001)),
    "qwen2.5-0.5b": ("Qwen2Config", dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, hidden_act="silu",
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True, use_sliding_window=False, sliding_window=32768,
        max_window_layers=21, bos_token_id=151643, eos_token_id=151643)),
    "qwen3-0.6b": ("Qwen3Config", dict(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, hidden_act="silu",
        max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True, attention_bias=False, use_sliding_window=False,
        bos_token_id=151643, eos_token_id=151645)),
    "glm4-9b-2l": ("Glm4Config", dict(
        vocab_size=151552, hidden_size=4096, intermediate_size=13696, num_hidden_layers=2,
        num_attention_heads=32, num_key_value_heads=2, head_dim=128, hidden_act="silu",
        partial_rotary_factor=0.5, max_position_embeddings=32768, rms_norm_eps=1e-5,
        rope_theta=10000.0, attention_bias=True, tie_word_embeddings=False,
        pad_token_id=151329, eos_token_id=[151329, 151336, 151338])),
    "mistral-7b-2l-sw32": ("MistralConfig", dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=2,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, hidden_act="silu",
        max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=10000.0,
        sliding_window=32, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)),
}


def load_model(path, dtype):
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to("cuda").eval()
    except TypeError:  # transformers < 4.56 spells it torch_dtype
        return AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype).to("cuda").eval()


def export_llama(a):
    cls, kw = LLAMA_PRESETS[a.preset]
    cfg = getattr(transformers, cls)(**kw, attn_implementation="eager")
    torch.manual_seed(a.seed)
    with torch.device("cuda"):
        m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        # HF's init leaves every norm at 1 and biases at 0, which would leave those paths
        # (q/k norms, post-norms, QKV bias) untested; a stronger embedding and head make
        # the next-token distribution less flat (fewer near-ties for the greedy check).
        for n, p in m.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            elif "embed_tokens" in n or "lm_head" in n:
                p.mul_(5.0)
    # Released checkpoints are bf16 on disk; both sides then read the same values.
    m = m.to(torch.bfloat16)
    m.config.torch_dtype = torch.bfloat16
    os.makedirs(a.out, exist_ok=True)
    m.save_pretrained(a.out, safe_serialization=True, max_shard_size=a.max_shard_size)
    V = cfg.vocab_size
    g = np.random.default_rng(a.seed)
    with open(os.path.join(a.out, "prompts.txt"), "w") as f:
        for _ in range(a.prompts):
            n = int(g.integers(5, 41))
            f.write(" ".join(str(int(t)) for t in g.integers(0, V, n)) + "\n")
    print(f"exported {a.preset} ({cls}, {sum(p.numel() for p in m.parameters()) / 1e6:.0f}M "
          f"params, bf16) to {a.out}: {sorted(os.listdir(a.out))}")


def export(a):
    if a.preset in LLAMA_PRESETS:
        return export_llama(a)
    torch.manual_seed(a.seed)
    cfg = GPT2Config(**PRESETS[a.preset], activation_function="gelu_new", resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5)
    m = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        # HF's init leaves LayerNorms at identity and biases at zero, which would leave
        # those paths untested; a stronger token embedding makes the next-token
        # distribution less flat (fewer near-ties for the greedy comparison).
        m.transformer.wte.weight.mul_(5.0)
        for n, p in m.named_parameters():
            if ".ln_" in n:
                if n.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.1 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.02 * torch.randn_like(p))
    os.makedirs(a.out, exist_ok=True)
    m.save_pretrained(a.out, safe_serialization=True)
    g = np.random.default_rng(a.seed)
    with open(os.path.join(a.out, "prompts.txt"), "w") as f:
        for _ in range(a.prompts):
            n = int(g.integers(5, 41))
            f.write(" ".join(str(int(t)) for t in g.integers(0, cfg.vocab_size, n)) + "\n")
    print(f"exported {a.preset} to {a.out}: {sorted(os.listdir(a.out))}")


def read_dump(path):
    with open(path, "rb") as f:
        n, V, steps = struct.unpack("<3i", f.read(12))
        out = []
        for _ in range(n):
            (L,) = struct.unpack("<i", f.read(4))
            gen = np.frombuffer(f.read(4 * steps), dtype=np.int32).copy()
            rows = L + steps - 1
            lg = np.frombuffer(f.read(4 * rows * V), dtype=np.float32).reshape(rows, V).copy()
            out.append((L, gen, lg))
    return V, steps, out


def rel(x, ref):
    return float(np.linalg.norm(x.astype(np.float64) - ref) / max(np.linalg.norm(ref.astype(np.float64)), 1e-30))


def hf_logits(m, seq):
    with torch.no_grad():
        ids = torch.tensor([seq], device="cuda")
        return m(ids).logits[0].float().cpu().numpy()


def compare(name, m, prompts, dump, steps_greedy=32, tol=1e-2, m_low=None, tol_factor=None,
            margin_ok=None):
    """Our dump against transformers, teacher-forced on our own tokens.

    tol: fixed bound on the relative error (GPT-2 fp16, the CPU backend). With m_low (the
    same weights in transformers at our 16-bit type) the bound is instead tol_factor x
    transformers' own low-precision error on the same sequences, measured here, and a
    greedy mismatch is accepted where the reference's top two logits are closer than
    transformers' low-precision logits are to fp32 on that row (margin_ok)."""
    V, steps, ours = read_dump(dump)
    r = dict(prefill_rel_max=0.0, decode_rel_max=0.0, decode_rel_per_step=[0.0] * steps,
             prefill_rel_mean=0.0, decode_rel_mean=0.0, greedy_compared=0, greedy_mismatches=[])
    if m_low is not None:
        r.update(hf_low_prefill_rel_max=0.0, hf_low_decode_rel_max=0.0,
                 hf_low_prefill_rel_mean=0.0, hf_low_decode_rel_mean=0.0,
                 hf_low_greedy_mismatches=0)
    npre = ndec = 0
    for i, (L, gen, lg) in enumerate(ours):
        assert L == len(prompts[i]), (L, len(prompts[i]))
        seq = prompts[i] + [int(t) for t in gen[:steps - 1]]
        ref = hf_logits(m, seq)
        low = hf_logits(m_low, seq) if m_low is not None else None
        for k in range(L + steps - 1):
            e = rel(lg[k], ref[k])
            el = rel(low[k], ref[k]) if low is not None else 0.0
            if k < L:
                r["prefill_rel_max"] = max(r["prefill_rel_max"], e)
                r["prefill_rel_mean"] += e
                npre += 1
                if low is not None:
                    r["hf_low_prefill_rel_max"] = max(r["hf_low_prefill_rel_max"], el)
                    r["hf_low_prefill_rel_mean"] += el
            else:
                s_ = k - L + 1
                r["decode_rel_per_step"][s_] = max(r["decode_rel_per_step"][s_], e)
                r["decode_rel_max"] = max(r["decode_rel_max"], e)
                r["decode_rel_mean"] += e
                ndec += 1
                if low is not None:
                    r["hf_low_decode_rel_max"] = max(r["hf_low_decode_rel_max"], el)
                    r["hf_low_decode_rel_mean"] += el
        for k in range(min(steps_greedy, steps)):
            row = ref[L - 1 + k]
            want = int(np.argmax(row))  # lowest id on ties, like our rule
            r["greedy_compared"] += 1
            if low is not None and int(np.argmax(low[L - 1 + k])) != want:
                r["hf_low_greedy_mismatches"] += 1  # for scale: transformers' own low precision
            if int(gen[k]) != want:
                top = np.sort(row)[::-1]
                mm = dict(prompt=i, step=k, ours=int(gen[k]), hf=want,
                          hf_margin=float(top[0] - top[1]),
                          ours_logit_gap=float(row[want] - row[int(gen[k])]))
                if low is not None:
                    mm["hf_low_row_abs_err"] = float(np.max(np.abs(low[L - 1 + k] - row)))
                    mm["within_low_precision_error"] = mm["ours_logit_gap"] <= mm["hf_low_row_abs_err"]
                r["greedy_mismatches"].append(mm)
    r["prefill_rel_mean"] /= max(npre, 1)
    r["decode_rel_mean"] /= max(ndec, 1)
    r["decode_rel_per_step"] = [round(x, 6) for x in r["decode_rel_per_step"]]
    if m_low is None:
        r["ok"] = (r["prefill_rel_max"] < tol and r["decode_rel_max"] < tol
                   and not r["greedy_mismatches"])
        bound = f"< {tol:g}"
    else:
        r["hf_low_prefill_rel_mean"] /= max(npre, 1)
        r["hf_low_decode_rel_mean"] /= max(ndec, 1)
        bp, bd = tol_factor * r["hf_low_prefill_rel_max"], tol_factor * r["hf_low_decode_rel_max"]
        r["ok"] = (r["prefill_rel_max"] <= bp and r["decode_rel_max"] <= bd
                   and all(mm["within_low_precision_error"] for mm in r["greedy_mismatches"]))
        bound = f"<= {tol_factor}x transformers' own ({bp:.2e} / {bd:.2e})"
    print(f"[{name}] prefill rel err max {r['prefill_rel_max']:.2e} (mean {r['prefill_rel_mean']:.2e}), "
          f"decode rel err max {r['decode_rel_max']:.2e} (mean {r['decode_rel_mean']:.2e}) over "
          f"{steps - 1} steps {bound}; greedy {r['greedy_compared']} compared, "
          f"{len(r['greedy_mismatches'])} mismatches -> {'PASS' if r['ok'] else 'FAIL'}")
    if m_low is not None:
        print(f"[{name}] transformers low precision vs fp32 on the same sequences: prefill max "
              f"{r['hf_low_prefill_rel_max']:.2e} (mean {r['hf_low_prefill_rel_mean']:.2e}), decode max "
              f"{r['hf_low_decode_rel_max']:.2e} (mean {r['hf_low_decode_rel_mean']:.2e}); its greedy "
              f"tokens differ from fp32's at {r['hf_low_greedy_mismatches']} of {r['greedy_compared']}")
    for mm in r["greedy_mismatches"][:10]:
        print("   mismatch", mm)
    return r, ours


def check(a):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    gpt2 = cfg.get("model_type") == "gpt2"
    m = load_model(a.model, torch.float32)
    prompts = [list(map(int, l.split())) for l in open(os.path.join(a.model, "prompts.txt")) if l.strip()]
    res = dict(check="hf-logits", model=a.name, arch=cfg.get("architectures", ["?"])[0],
               prompts=len(prompts), device=torch.cuda.get_device_name(0),
               transformers=transformers.__version__)
    if gpt2:
        r, ours = compare(f"{a.name} cuda vs transformers fp32", m, prompts, a.dump)
        # transformers' own fp16 error on the same sequences, for scale.
        m16 = load_model(a.model, torch.float16)
        e16 = 0.0
        for i, (L, gen, lg) in enumerate(ours):
            seq = prompts[i] + [int(t) for t in gen[:-1]]
            ref, r16 = hf_logits(m, seq), hf_logits(m16, seq)
            e16 = max(e16, max(rel(r16[k], ref[k]) for k in range(len(seq))))
        del m16
        res["transformers_fp16_rel_max"] = e16
        print(f"[{a.name}] for scale: transformers fp16 vs fp32 rel err max {e16:.2e}")
    else:
        low_t = torch.float16 if a.dtype == "fp16" else torch.bfloat16
        m_low = load_model(a.model, low_t)
        r, ours = compare(f"{a.name} cuda {a.dtype} vs transformers fp32", m, prompts, a.dump,
                          m_low=m_low, tol_factor=a.tol_factor)
        del m_low
        torch.cuda.empty_cache()
    res["cuda"] = r
    res["dtype"] = "fp16" if gpt2 else a.dtype
    ok = r["ok"]
    if a.cpu_dump and os.path.exists(a.cpu_dump):
        rc, cpu = compare(f"{a.name} cpu backend vs transformers fp32", m, prompts, a.cpu_dump,
                          tol=1e-2 if gpt2 else a.cpu_tol)
        res["cpu"] = rc
        ok = ok and rc["ok"]
        same, n, worst = 0, 0, 0.0
        for (L, g1, l1), (_, g2, l2) in zip(ours, cpu):
            k = 0
            while k < len(g1) and g1[k] == g2[k]:
                k += 1
            same += min(k, 32)
            n += min(len(g1), 32)
            # logits rows agree in input while the generated prefixes agree
            rows = L + min(k, len(g1) - 1)
            worst = max(worst, max(rel(l1[j], l2[j]) for j in range(rows)))
        res["cuda_vs_cpu"] = dict(greedy_same_first32=same, compared=n, logits_rel_max=worst)
        print(f"[{a.name}] cuda vs cpu backend: {same}/{n} greedy tokens identical (first 32), "
              f"logits rel err max {worst:.2e}")
    res["ok"] = ok
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(res) + "\n")
    sys.exit(0 if ok else 1)


def bench(a):
    m = load_model(a.model, torch.float16)
    V = m.config.vocab_size
    ours = {}
    if a.ours and os.path.exists(a.ours):
        for line in open(a.ours):
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if j.get("bench") == "cuda-engine":
                ours[j["batch"]] = j
    print(f"transformers generate(), fp16, prompt {a.prompt}, {a.new} new tokens, greedy, "
          f"{torch.cuda.get_device_name(0)}")
    print(f"{'batch':>6} {'hf_s':>8} {'hf_tok/s':>10} {'ours_e2e_tok/s':>15} {'ratio':>7}")
    for B in [int(x) for x in a.batches.split(",")]:
        g = torch.Generator(device="cuda").manual_seed(B)
        ids = torch.randint(0, V, (B, a.prompt), device="cuda", generator=g)
        kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
        with torch.no_grad():
            m.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)  # warm-up
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = m.generate(ids, max_new_tokens=a.new, min_new_tokens=a.new, **kw)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
        assert out.shape == (B, a.prompt + a.new), out.shape
        tps = B * a.new / dt
        o = ours.get(B)
        ratio = o["e2e_tok_s"] / tps if o else float("nan")
        print(f"{B:>6} {dt:>8.2f} {tps:>10.0f} {o['e2e_tok_s'] if o else float('nan'):>15.0f} {ratio:>7.1f}")
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(dict(bench="hf-generate", batch=B, prompt=a.prompt, new=a.new,
                                        seconds=dt, tok_s=tps, ours_e2e_tok_s=o["e2e_tok_s"] if o else None,
                                        ours_decode_tok_s=o["decode_tok_s"] if o else None,
                                        ratio_e2e=ratio, device=torch.cuda.get_device_name(0))) + "\n")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--preset", choices=sorted(PRESETS) + sorted(LLAMA_PRESETS), required=True)
    e.add_argument("--max-shard-size", default="1GB",
                   help="save_pretrained's shard bound (the 1B-class presets then span shards)")
    e.add_argument("--seed", type=int, default=1)
    e.add_argument("--out", required=True)
    e.add_argument("--prompts", type=int, default=16)
    c = sub.add_parser("check")
    c.add_argument("--model", required=True)
    c.add_argument("--dump", required=True)
    c.add_argument("--cpu-dump")
    c.add_argument("--json")
    c.add_argument("--name", default="model")
    c.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"],
                   help="the type our CUDA backend ran in (Llama family)")
    c.add_argument("--tol-factor", type=float, default=1.25)
    c.add_argument("--cpu-tol", type=float, default=1e-5)
    b = sub.add_parser("bench")
    b.add_argument("--model", required=True)
    b.add_argument("--batches", default="1,64,256")
    b.add_argument("--prompt", type=int, default=32)
    b.add_argument("--new", type=int, default=128)
    b.add_argument("--json")
    b.add_argument("--ours")
    a = p.parse_args()
    {"export": export, "check": check, "bench": bench}[a.cmd](a)


if __name__ == "__main__":
    main()
