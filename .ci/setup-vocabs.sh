#!/usr/bin/env bash
# Real tokenizer vocabularies for the trainer tests, into ./.tools/vocabs (idempotent, quick
# when present).   bash .ci/setup-vocabs.sh
# The llama-cpp-python source distribution on PyPI ships vocabulary-only GGUF files
# (vendor/llama.cpp/models/ggml-vocab-*.gguf: qwen2, llama-bpe, llama-spm, phi-3, gpt-2,
# deepseek-llm, mpt, falcon, …). We download the pinned sdist once (no build, no deps) and
# extract only those files; transformers loads a tokenizer from them (the `gguf` package).
# tests/tidetune_trainer/realvocab.py builds tokenizer directories from them.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="0.3.36"
DEST=.tools/vocabs
STAMP="$DEST/.llama-cpp-python-version"
CACHE=.tools/cache/llama-cpp-python

if [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ] && ls "$DEST"/ggml-vocab-*.gguf >/dev/null 2>&1; then
  exit 0
fi
PY=python3
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
mkdir -p "$CACHE" "$DEST"
SDIST="$CACHE/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
  "$PY" -m pip download -q --no-binary :all: --no-deps \
    --dest "$CACHE" "llama-cpp-python==$VERSION"
fi
if [ ! -f "$SDIST" ]; then
  echo "setup-vocabs: $SDIST not found after 'pip download llama-cpp-python==$VERSION'" >&2
  exit 1
fi
"$PY" - "$SDIST" "$DEST" <<'PY'
import os, re, sys, tarfile

sdist, dest = sys.argv[1], sys.argv[2]
pattern = re.compile(r"^[^/]+/vendor/llama\.cpp/models/(ggml-vocab-[A-Za-z0-9._-]+\.gguf)$")
found = 0
with tarfile.open(sdist, "r:gz") as tf:
    for member in tf:
        m = pattern.match(member.name)
        if not m or not member.isfile():
            continue
        target = os.path.join(dest, m.group(1))
        src = tf.extractfile(member)
        assert src is not None
        with open(target + ".tmp", "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.replace(target + ".tmp", target)
        found += 1
if not found:
    sys.exit(f"setup-vocabs: no vendor/llama.cpp/models/ggml-vocab-*.gguf in {sdist}")
print(f"setup-vocabs: {found} vocabularies in {dest}", file=sys.stderr)
PY
echo "$VERSION" >"$STAMP"
