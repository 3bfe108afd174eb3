#!/usr/bin/env python3
"""check-layers: no #include points up a layer.

The folders form layers (README "Layout"); a file may include its own folder and any folder
of a lower layer, never one of its own layer or above. Run by ctest (test_layers, label cpu).
A new folder must be placed in LAYERS below, or this check fails naming it.

  scripts/check-layers.py [ROOT]     exit 0 when clean, 1 with one line per wrong include
"""
import os
import re
import sys

# rank: lower layers first. Folders of one rank do not include each other.
LAYERS = [
    ["base"],                                   # result, sampling params, half, utf8, safetensors
    ["kernels", "tokenizer", "template", "web"],  # CPU/CUDA kernels; text <-> ids; Jinja; static pages
    ["model", "config", "grammar"],             # architectures, weights; TOML + command line; constraints -> token masks
    ["engine"],                                 # backends, scheduler, KV blocks
    ["gpu", "supervision"],                     # CUDA backend; pure supervision policies
    ["actors"],                                 # CAF actors, the service
    ["net"],                                    # Beast server, wire formats
    ["fuzz"],                                   # fuzz entry points (a library the tests reuse)
    ["apps", "bench", "examples", "tests"],     # programs
]
RANK = {folder: i for i, layer in enumerate(LAYERS) for folder in layer}
SOURCE_EXT = (".cpp", ".hpp", ".h", ".cu", ".cuh")
SKIP_DIRS = {"third_party", ".git", "scripts", "docs", "cmake", ".ci"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([A-Za-z0-9_.-]+)/')


def main() -> int:
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    errors = []
    for top in sorted(os.listdir(root)):
        path = os.path.join(root, top)
        if not os.path.isdir(path) or top in SKIP_DIRS or top.startswith((".", "build")):
            continue
        has_source = any(f.endswith(SOURCE_EXT) for _, _, fs in os.walk(path) for f in fs)
        if not has_source:
            continue
        if top not in RANK:
            errors.append(f"{top}/: folder not placed in a layer (add it to LAYERS in scripts/check-layers.py and the README)")
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            for name in sorted(filenames):
                if not name.endswith(SOURCE_EXT):
                    continue
                file = os.path.join(dirpath, name)
                with open(file, encoding="utf-8", errors="replace") as fh:
                    for lineno, line in enumerate(fh, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        target = m.group(1)
                        if target == top or target not in RANK:
                            continue  # own folder, or a path relative to this one / a dependency
                        if RANK[target] >= RANK[top]:
                            rel = os.path.relpath(file, root)
                            errors.append(f"{rel}:{lineno}: {top}/ (layer {RANK[top]}) includes {target}/ "
                                          f"(layer {RANK[target]}): {line.strip()}")
    for e in errors:
        print(e)
    if errors:
        print(f"check-layers: {len(errors)} include(s) point up or across a layer", file=sys.stderr)
        return 1
    print("check-layers: every include points down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
