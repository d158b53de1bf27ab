#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) with what a mode needs.
#   scripts/setup.sh serve   runtime (+ the diffusion stack when an NVIDIA GPU is present)
#   scripts/setup.sh test    runtime + diffusion stack (CPU use) + test tools
# Idempotent: does nothing when the environment already matches pyproject.toml.
set -euo pipefail
mode=${1:-serve}
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${LIVESTYLE_VENV:-$root/.venv}
python=${PYTHON:-python3}
# torch is always pinned exactly: an unpinned torch resolves to a multi-GB CUDA build.
# 2.14.1 + torchvision 0.29.1 are the pair that import together here (override if needed).
torch_spec=${LIVESTYLE_TORCH:-"torch==2.14.1 torchvision==0.29.1"}

extras="speed"
with_torch=0
case "$mode" in
  serve)
    if [ "${LIVESTYLE_WITH_DIFFUSION:-}" = 1 ] || command -v nvidia-smi >/dev/null 2>&1; then
      extras="$extras,diffusion"; with_torch=1
    fi ;;
  test) extras="$extras,diffusion,dev"; with_torch=1 ;;
  *) echo "usage: $0 serve|test" >&2; exit 2 ;;
esac

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.livestyle-setup"
want="$(cat "$root/pyproject.toml" | sha256sum | cut -c1-16) $extras $torch_spec"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
if [ "$with_torch" = 1 ]; then
  echo "setup: installing $torch_spec (large; first time only)"
  # shellcheck disable=SC2086
  "${pip[@]}" install $torch_spec
fi
echo "setup: installing livestyle[$extras]"
"${pip[@]}" install -e "$root[$extras]"
echo "$want" > "$stamp"
