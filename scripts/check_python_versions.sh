#!/usr/bin/env bash
# Pre-release check: does the project install and pass its tests on every Python it promises?
#
# For each pyenv interpreter ~/.pyenv/versions/3.10.*, 3.11.*, 3.12.*, 3.13.* (or the versions
# given as arguments, e.g. `3.10 3.13`), build a fresh virtual environment in a temporary
# folder, install requirements.txt exactly as the README says, and run the tests. Not part of
# .ci/run: on Linux, every Python but the one with a local CPU wheel downloads PyPI's torch with
# its CUDA libraries (several GB per version).
#
# Usage (from anywhere in the checkout):
#   scripts/check_python_versions.sh                 # every version, the whole suite
#   QUICK=1 scripts/check_python_versions.sh 3.10    # unit tests + notebook 01 only
#   KEEP=/tmp/venvs scripts/check_python_versions.sh 3.11   # keep each venv in /tmp/venvs/VERSION
#
# Prints one line per version (install time, venv size, test summary) and exits non-zero if
# any version failed. Logs are kept in $LOGDIR (default: a temporary folder, printed).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
wanted=("$@")
[ ${#wanted[@]} -eq 0 ] && wanted=(3.10 3.11 3.12 3.13)
logdir=${LOGDIR:-$(mktemp -d)}
mkdir -p "$logdir"
# The README's test command, with its virtual environment's python replaced by the new one's.
readme_cmd=$(sed -n '/<!-- test-command -->/,/<!-- \/test-command -->/p' README.md \
             | grep -v -e '^<!--' -e '^```' | sed 's/.*\.venv\/bin\/python -m pytest/python -m pytest/')
if [ -n "${QUICK:-}" ]; then
  # Unit and hygiene tests (not the student editions' executions), then one fast notebook.
  test_cmd='python -m pytest -q -o addopts= tests -m "not student_run"; a=$?; python -m pytest -q notebooks/01_introduction.ipynb; b=$?; exit $(( a || b ))'
else
  test_cmd=$readme_cmd
fi
current_tmp=
trap 'rm -rf "$current_tmp"' EXIT
failed=0
summary=()
for minor in "${wanted[@]}"; do
  interp=$(ls -d "$HOME"/.pyenv/versions/"$minor".* 2>/dev/null | sort -V | tail -1)
  if [ -z "$interp" ]; then
    summary+=("$minor: no interpreter in ~/.pyenv/versions"); failed=1; continue
  fi
  version=$(basename "$interp")
  tmp=$(mktemp -d); current_tmp=$tmp
  log="$logdir/python-$version.log"
  echo "== Python $version (log: $log)"
  start=$(date +%s)
  if ! { "$interp/bin/python" -m venv "$tmp/venv" \
         && "$tmp/venv/bin/pip" install -r requirements.txt; } >"$log" 2>&1; then
    summary+=("$version: INSTALL FAILED after $(( $(date +%s) - start )) s (see $log)")
    failed=1; rm -rf "$tmp"; continue
  fi
  installed=$(( $(date +%s) - start ))
  size=$(du -sh "$tmp/venv" | cut -f1)
  torch=$("$tmp/venv/bin/python" -c 'import torch; print(torch.__version__)' 2>&1)
  start=$(date +%s)
  echo "tests: $test_cmd" >>"$log"
  if PATH="$tmp/venv/bin:$PATH" /usr/bin/time -f "CPU: %U user %S sys %e wall" bash -c "$test_cmd" >>"$log" 2>&1; then status=passed; else status=FAILED; failed=1; fi
  result=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed|error)|^CPU: ' "$log" | tr '\n' ' ')
  summary+=("$version: install ${installed} s, venv $size, torch $torch; tests $status in $(( $(date +%s) - start )) s: $result")
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && rm -rf "${KEEP:?}/$version" && mv "$tmp/venv" "$KEEP/$version"; fi
  rm -rf "$tmp"
done
echo
printf '%s\n' "${summary[@]}"
exit $failed
