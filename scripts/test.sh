#!/usr/bin/env bash
# Set up (see scripts/setup.sh) and run the whole test suite, GUI tests in a real napari
# viewer on a virtual X display. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
venv="${VENV:-.venv}"
# the venv's bin first: the tests call its console scripts (mrisynth, npe2, dcm2niix)
export PATH="$PWD/$venv/bin:$PATH" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
run=("$venv/bin/python" -m pytest -ra --durations=15 "$@")
if [[ -z "${DISPLAY:-}" ]] && command -v xvfb-run >/dev/null 2>&1; then
  exec xvfb-run -a -s "-screen 0 1400x1000x24" "${run[@]}"
fi
exec "${run[@]}"
