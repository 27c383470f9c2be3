#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for napari-mrisynth: the system libraries napari needs
# (Qt xcb, OpenGL, Xvfb for headless rendering), a virtual environment, PyTorch, and the
# package itself (editable) with its extras. Safe to re-run: finished steps are skipped.
#
#   bash scripts/setup.sh            # runtime: napari + PyQt6 + the plugin
#   bash scripts/setup.sh --test     # also the test tools (pytest, dcm2niix, bids-validator...)
#
# Environment: PYTHON (interpreter, default python3.11 or python3), VENV (default .venv),
# TORCH_SPEC (default torch==2.13.0: the CPU wheel on this project's build machines, the
# CUDA build from PyPI on a Linux GPU machine), TORCH_INDEX_URL (e.g. a CUDA-specific index).
set -euo pipefail
cd "$(dirname "$0")/.."

extras="all"
[[ "${1:-}" == "--test" ]] && extras="all,test"

apt_packages=(
  xvfb xauth libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon0
  libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
  libxcb-render-util0 libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0 libxcb-shape0 libxcb-xfixes0
)
# dciodvfy (DICOM object validator) checks the DICOM SEG and exported series in the tests.
[[ "$extras" == *test* ]] && apt_packages+=(dicom3tools)
# PostgreSQL's server (initdb, pg_ctl in /usr/lib/postgresql/<ver>/bin): the ratings-store
# tests start a throwaway cluster to rate a study on a real server database.
[[ "$extras" == *test* ]] && apt_packages+=(postgresql)
# Orthanc and its DICOMweb plugin: the PACS tests start one on loopback ports and query,
# retrieve and send over DIMSE and DICOMweb.
[[ "$extras" == *test* ]] && apt_packages+=(orthanc orthanc-dicomweb)
# node and npm run the official BIDS validator, which checks the BIDS export in the tests.
if [[ "$extras" == *test* ]] && ! { command -v node && command -v npm; } >/dev/null 2>&1; then
  apt_packages+=(nodejs npm)
fi
if command -v dpkg-query >/dev/null 2>&1; then
  missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "==> installing system packages: ${missing[*]}"
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
else
  echo "==> not a Debian-like system: install Xvfb and Qt's xcb libraries yourself for headless GUI tests"
fi

# The BIDS validator (pinned) in .tools/, git-ignored; checked on every run, before the
# early exit below, because it lives outside the venv that the stamp describes.
bids_validator=".tools/node/node_modules/.bin/bids-validator"
if [[ "$extras" == *test* && ! -x "$bids_validator" ]]; then
  if command -v npm >/dev/null 2>&1; then
    echo "==> installing bids-validator@1.15.0 into .tools/node"
    npm install --no-audit --no-fund --prefix "$PWD/.tools/node" bids-validator@1.15.0 >/dev/null
  else
    echo "==> npm is missing: the BIDS validator tests will be skipped"
  fi
fi

venv="${VENV:-.venv}"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  python=$(command -v python3.11 || command -v python3)
fi
if [[ ! -x "$venv/bin/python" ]]; then
  echo "==> creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

# Re-running with nothing changed costs a hash, not a pip resolve.
stamp="$venv/.mrisynth-setup-$extras"
digest=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$digest" ]]; then
  echo "==> $venv is up to date ($extras)"
  exit 0
fi

# torch first and pinned, so that the package's "torch>=2.2" is already satisfied: here that
# is the CPU wheel on disk; on a user's Linux machine PyPI's default build, which has CUDA.
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "==> installing ${TORCH_SPEC:-torch==2.13.0}"
  "${pip[@]}" install "${TORCH_SPEC:-torch==2.13.0}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
echo "==> installing napari-mrisynth[$extras] (editable)"
"${pip[@]}" install -e ".[$extras]"
echo "$digest" >"$stamp"
echo "==> ready: $venv/bin/mrisynth"
