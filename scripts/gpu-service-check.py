#!/usr/bin/env python3
"""The service end to end on the device, on a real model shape: inferd (CUDA backend) over
the WebSocket protocol and /v1/completions must give the same greedy tokens as the CUDA
engine alone (cuda-logits-dump, no actors, no scheduler, no server) on the same seeded
synthetic weights. Standard library only (the GPU machine has no websockets package).

  gpu-service-check.py --bin DIR --model synthetic:llama3.2-1b --work DIR [--json FILE]

Each prompt runs alone on both sides (one sequence, batch 1), so that both take the same
kernels and graph bucket: a batch of other shapes may pick other GEMM algorithms, whose bf16
rounding differs, and random weights have near-ties that such rounding flips.
"""
import argparse, base64, json, os, random, socket, struct, subprocess, sys, time, urllib.request

STEPS = 32


def engine_alone(bin_dir, model, prompt, work):
    pf = os.path.join(work, "prompt.txt")
    with open(pf, "w") as f:
        f.write(" ".join(map(str, prompt)) + "\n")
    out = os.path.join(work, "engine.bin")
    subprocess.run([os.path.join(bin_dir, "cuda-logits-dump"), model, pf, out, "--steps", str(STEPS),
                    "--max-model-len", "512"], check=True, stdout=subprocess.DEVNULL)
    with open(out, "rb") as f:
        n, _v, steps = struct.unpack("<iii", f.read(12))
        _l = struct.unpack("<i", f.read(4))[0]
        gen = list(struct.unpack(f"<{steps}i", f.read(4 * steps)))
    os.remove(out)
    return gen


def ws_connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(f"websocket upgrade refused: {head!r}")
    return s


def ws_send(s, text):
    data = text.encode()
    mask = os.urandom(4)
    n = len(data)
    hdr = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise RuntimeError("websocket closed")
        b += c
    return b


def ws_recv(s):
    b0, b1 = recv_exact(s, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", recv_exact(s, 2))[0]
    elif n == 127:
        n = struct.unpack(">Q", recv_exact(s, 8))[0]
    payload = recv_exact(s, n)
    return b0 & 0x0F, payload


def service_ws(port, prompt):
    s = ws_connect(port)
    ws_send(s, json.dumps({"type": "generate", "id": "g", "prompt_tokens": prompt, "max_tokens": STEPS,
                           "temperature": 0, "ignore_eos": True}))
    toks, text = [], ""
    while True:
        op, p = ws_recv(s)
        if op != 1:
            continue
        f = json.loads(p)
        if f["type"] == "token":
            toks.append(f["token"])
            text += f["text"]
        elif f["type"] in ("done", "error"):
            s.close()
            if f["type"] == "error":
                raise RuntimeError(f"service error: {f}")
            return toks, text, f


def service_http(port, prompt):
    body = json.dumps({"prompt": prompt, "max_tokens": STEPS, "temperature": 0, "ignore_eos": True}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        j = json.loads(r.read())
    return j["choices"][0]["text"], j["choices"][0]["finish_reason"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--json")
    ap.add_argument("--tokenizer-dir", help="the model's tokenizer folder (the device has no third_party/npm)")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    rng = random.Random(7)
    prompts = [[rng.randrange(1, 1000) for _ in range(n)] for n in (7, 20, 33)]
    t0 = time.time()
    want = [engine_alone(a.bin, a.model, p, a.work) for p in prompts]
    t_engine = time.time() - t0
    pf = os.path.join(a.work, "port")
    if os.path.exists(pf):
        os.remove(pf)
    log = open(os.path.join(a.work, "inferd.log"), "w")
    proc = subprocess.Popen([os.path.join(a.bin, "inferd"), "--model", a.model, "--backend", "cuda",
                             "--listen", "127.0.0.1:0", "--port-file", pf, "--max-model-len", "512",
                             "--kv-memory-mb", "2048", "--log-level", "warn"]
                            + (["--tokenizer-dir", a.tokenizer_dir] if a.tokenizer_dir else []), stdout=log, stderr=subprocess.STDOUT)
    ok = True
    rows = []
    port = None
    try:
        for _ in range(1200):
            if os.path.exists(pf) and open(pf).read().strip():
                break
            time.sleep(0.1)
        port = int(open(pf).read().strip())
        for _ in range(1200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
                break
            except Exception:
                time.sleep(0.1)
        for p, w in zip(prompts, want):
            toks, text, done = service_ws(port, p)
            http_text, http_finish = service_http(port, p)
            same_ws = toks == w
            same_http = http_text == text
            ok = ok and same_ws and same_http and done.get("finish_reason") == "length" and http_finish == "length"
            first_diff = next((i for i, (x, y) in enumerate(zip(toks, w)) if x != y), None)
            rows.append({"prompt_len": len(p), "ws_equal_engine": same_ws, "http_text_equal_ws": same_http,
                         "first_diff": first_diff, "n": len(toks)})
            print(f"[{a.model}] prompt {len(p):2d} tokens: websocket {'==' if same_ws else '!='} engine alone "
                  f"({len(toks)} tokens{'' if same_ws else f', first difference at {first_diff}'}), "
                  f"/v1/completions text {'==' if same_http else '!='} websocket text")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
        if port is None or not ok:
            print(open(os.path.join(a.work, "inferd.log")).read()[-3000:])
    print(f"[{a.model}] {'PASS' if ok else 'FAIL'} (engine alone {t_engine:.1f} s for 3 prompts)")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps({"check": "service-vs-engine", "model": a.model, "ok": ok, "rows": rows}) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
