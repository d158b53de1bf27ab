#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) with what a mode needs.
#   scripts/setup.sh serve   runtime (+ the diffusion stack when an NVIDIA GPU is present,
#                            or when LIVESTYLE_WITH_DIFFUSION=1)
#   scripts/setup.sh test    runtime + diffusion stack (CPU use) + test tools + eval (matplotlib, scikit-image)
# Idempotent and quiet: does nothing when the environment already has what the mode needs
# for this pyproject.toml (an environment set up for `test` also serves).
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
  test) extras="$extras,diffusion,dev,eval"; with_torch=1 ;;
  *) echo "usage: $0 serve|test" >&2; exit 2 ;;
esac

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.livestyle-setup"
project="$(sha256sum < "$root/pyproject.toml" | cut -c1-16)"
torch_wanted=""
if [ "$with_torch" = 1 ]; then torch_wanted="$torch_spec"; fi
if [ -f "$stamp" ]; then
  IFS='|' read -r had_project had_extras had_torch < "$stamp" || true
  covered=1
  for extra in ${extras//,/ }; do
    case ",$had_extras," in *",$extra,"*) ;; *) covered=0 ;; esac
  done
  if [ "$had_project" = "$project" ] && [ "$covered" = 1 ] && { [ -z "$torch_wanted" ] || [ "$had_torch" = "$torch_wanted" ]; }; then
    exit 0
  fi
  # Keep what was installed before: a test environment stays one when it also serves.
  for extra in ${had_extras//,/ }; do
    case ",$extras," in *",$extra,"*) ;; *) extras="$extras,$extra" ;; esac
  done
  if [ -z "$torch_wanted" ] && [ -n "${had_torch:-}" ]; then torch_wanted="$had_torch"; fi
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
if [ -n "$torch_wanted" ]; then
  echo "setup: installing $torch_wanted (the CUDA build with its CUDA libraries: several GB; first time only)" >&2
  # shellcheck disable=SC2086
  "${pip[@]}" install $torch_wanted
fi
echo "setup: installing livestyle[$extras]" >&2
"${pip[@]}" install -e "$root[$extras]"
echo "$project|$extras|$torch_wanted" > "$stamp"
