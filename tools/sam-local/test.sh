#!/usr/bin/env bash
# CI driver for the real `sam local invoke` tests (tests/sam_local):
#   1. tools/lambda-image/build.sh  (apt packages, python3.13 Lambda base image in podman)
#   2. SAM CLI in its own venv .tools/sam (created if missing)
#   3. sam build of the repo's template.yaml (python3.13 from pyenv on PATH)
#   4. pytest tests/sam_local inside tools/sam-local/run-in-netns.sh with HARMONY_SAM_LOCAL=1
# Prints a timing summary at the end. Exit code: pytest's (or the failing step's).
#
# Env:
#   HARMONY_SAM_VERSION     aws-sam-cli version for .tools/sam (default 1.170.0)
#   HARMONY_SAM_VENV        SAM venv (default <repo>/.tools/sam)
#   HARMONY_SAM_BUILD_DIR   sam build dir (default <repo>/.aws-sam/build)
#   HARMONY_PYTHON          python running pytest (default <repo>/.venv/bin/python)
#   HARMONY_SAM_TIMINGS     per-invoke timings file (default <build dir>/../sam-local-timings.jsonl)
#   PYENV_VERSION           default: <pyenv global>:<newest installed 3.13.x>
#   PYTEST_ARGS             extra pytest arguments (default -v)
# Needs root (see build.sh / run-in-netns.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
cd "$REPO"

SAM_VERSION="${HARMONY_SAM_VERSION:-1.170.0}"
SAM_VENV="${HARMONY_SAM_VENV:-$REPO/.tools/sam}"
BUILD_DIR="${HARMONY_SAM_BUILD_DIR:-$REPO/.aws-sam/build}"
PY="${HARMONY_PYTHON:-$REPO/.venv/bin/python}"
export HARMONY_SAM_TIMINGS="${HARMONY_SAM_TIMINGS:-$(dirname "$BUILD_DIR")/sam-local-timings.jsonl}"

log() { printf '[sam-local %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
declare -a TIMES=()
step() {  # name command...
  local name="$1"; shift
  local t0=$SECONDS rc=0
  log "== $name"
  "$@" || rc=$?
  TIMES+=("$(printf '%-22s %5d s  rc=%d' "$name" $((SECONDS - t0)) "$rc")")
  return $rc
}
PYTEST_OUT="$(mktemp /tmp/harmony-sam-local-pytest.XXXXXX)"
summary() {
  local rc=$?
  { echo "---- sam-local timings ----"; printf '%s\n' "${TIMES[@]}"
    [ -s "$HARMONY_SAM_TIMINGS" ] && cat "$HARMONY_SAM_TIMINGS"; } >&2
  # Repeat pytest's closing line last, so it stays the run's closing line after the timings.
  grep -E '(passed|failed|errors?|skipped|no tests ran)( |,).* in [0-9.]+s' "$PYTEST_OUT" 2>/dev/null | tail -n1 || true
  rm -f "$PYTEST_OUT"
  exit $rc
}
trap summary EXIT

[ -f template.yaml ] || { log "no template.yaml in $REPO"; exit 1; }
[ -x "$PY" ] || { log "no python at $PY (set HARMONY_PYTHON)"; exit 1; }

# ---- 1. image
step "lambda image" bash "$REPO/tools/lambda-image/build.sh"

# ---- 2. SAM CLI venv
ensure_sam() {
  if [ -x "$SAM_VENV/bin/sam" ] && "$SAM_VENV/bin/sam" --version 2>/dev/null | grep -q " $SAM_VERSION\$"; then
    return 0
  fi
  local base
  base="$(command -v python3.11 || command -v python3)"
  log "installing aws-sam-cli==$SAM_VERSION into $SAM_VENV (with $base)"
  "$base" -m venv "$SAM_VENV"
  # keep the venv out of git whatever .gitignore says
  [ -f "$(dirname "$SAM_VENV")/.gitignore" ] || printf '*\n' > "$(dirname "$SAM_VENV")/.gitignore"
  timeout 900 "$SAM_VENV/bin/pip" install -q --disable-pip-version-check "aws-sam-cli==$SAM_VERSION" \
    2> >(grep -v 'is ignored: it is neither' >&2)
}
step "sam cli venv" ensure_sam
export HARMONY_SAM="$SAM_VENV/bin/sam"
export SAM_CLI_TELEMETRY=0

# ---- 3. sam build (python3.13 must be on PATH for the python3.13 runtime)
# template.yaml's Fn::ForEach (a ShardFunction per entry of ShardIds): SAM CLI expands it locally
# only when asked; the tests' `sam local start-lambda` inherit this too
export SAM_CLI_ENABLE_LANGUAGE_EXTENSIONS=1
if [ -z "${PYENV_VERSION:-}" ] && command -v pyenv >/dev/null 2>&1; then
  p313="$(pyenv versions --bare 2>/dev/null | grep -E '^3\.13(\.[0-9]+)?$' | sort -V | tail -n1 || true)"
  glob_v="$(pyenv global 2>/dev/null | head -n1 || true)"
  if [ -n "$p313" ]; then export PYENV_VERSION="${glob_v:+$glob_v:}$p313"; fi
fi
log "PYENV_VERSION=${PYENV_VERSION:-} python3.13=$(command -v python3.13 || echo none)"
rm -f "$HARMONY_SAM_TIMINGS"
step "sam build" timeout 1800 "$HARMONY_SAM" build --template-file template.yaml \
  --build-dir "$BUILD_DIR" --cached --cache-dir "$(dirname "$BUILD_DIR")/cache"
export HARMONY_SAM_TEMPLATE="$BUILD_DIR/template.yaml"

# ---- 4. the tests, in a private network namespace with podman + moto
read -r -a EXTRA <<< "${PYTEST_ARGS:--v}"
run_pytest() {
  set -o pipefail
  "$HERE/run-in-netns.sh" env HARMONY_SAM_LOCAL=1 "$PY" -m pytest -p no:cacheprovider \
    "$REPO/tests/sam_local" "${EXTRA[@]}" | tee "$PYTEST_OUT"
}
step "pytest tests/sam_local" run_pytest
