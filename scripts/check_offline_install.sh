#!/usr/bin/env bash
# Test TEACHING.md's offline-install recipe ("Running a lab"), once, on the machine that runs it.
#
# usage: scripts/check_offline_install.sh [WORKDIR]     (from the repository root; WORKDIR: a new folder)
#
# 1. With network (your package index): download every wheel of requirements.txt, plus
#    setuptools (pip needs it to build the `-e .` line, offline too), into WORKDIR/wheelhouse,
#    with the Python that runs this script: that is the Python the laptops must have
#    (`pip download --python-version 3.X` does not evaluate requirements.txt's
#    `python_version` markers for 3.X, only for the running Python).
# 2. Without network: a fresh virtual environment installs everything from the wheelhouse alone
#    (`--no-index`, and no pip configuration, so no other index or find-links folder can help).
# 3. It checks that torch is the pinned CPU build, that the packages are consistent (`pip
#    check`), and that `lora_helpers` imports; then it runs README's tests as TEACHING.md says.
#
# On Linux the CPU build of torch comes from PyTorch's CPU index: pass it as
# EXTRA_INDEX="--extra-index-url https://download.pytorch.org/whl/cpu" (TEACHING.md does), or
# leave EXTRA_INDEX empty where your pip configuration already provides the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-$(mktemp -d)}
PYTHON=${PYTHON:-python3}
EXTRA_INDEX=${EXTRA_INDEX:-}
mkdir -p "$WORK"
echo "== Python: $($PYTHON --version) ($PYTHON); work folder: $WORK"

start=$(date +%s)
grep -v '^-e' requirements.txt > "$WORK/wheels.txt"
# shellcheck disable=SC2086
$PYTHON -m pip download --quiet $EXTRA_INDEX -r "$WORK/wheels.txt" "setuptools>=68" -d "$WORK/wheelhouse"
echo "== downloaded $(ls "$WORK/wheelhouse" | wc -l) files, $(du -sh "$WORK/wheelhouse" | cut -f1), in $(( $(date +%s) - start )) s"
ls "$WORK/wheelhouse" | grep -E '^(torch|setuptools)-'
if ls "$WORK/wheelhouse" | grep -v '\.whl$'; then
  echo "!! the wheelhouse holds source archives (above): laptops would need compilers to build them"
fi

start=$(date +%s)
$PYTHON -m venv "$WORK/venv"
# Offline: no index, no pip configuration file, no find-links from the environment.
env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL PIP_CONFIG_FILE=/dev/null \
  "$WORK/venv/bin/pip" install --quiet --no-index --find-links "$WORK/wheelhouse" -r requirements.txt
echo "== installed offline in $(( $(date +%s) - start )) s; environment $(du -sh "$WORK/venv" | cut -f1)"

"$WORK/venv/bin/pip" check
"$WORK/venv/bin/python" - <<'EOF'
import importlib.metadata as md
import lora_helpers, torch
print("torch", torch.__version__, "| CUDA build:", torch.version.cuda, "| lora_helpers from", lora_helpers.__file__)
assert torch.__version__ == "2.13.0+cpu", torch.__version__
assert torch.version.cuda is None
assert not [d for d in md.distributions() if d.metadata["Name"].startswith("nvidia-")], "CUDA libraries installed"
EOF
"$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider -o addopts= tests/test_readme.py
echo "== offline install: OK"
