#!/usr/bin/env bash
# Builds a self-contained folder with the `outpost` executable and everything it needs
# (Python runtime, dependencies, canonical Avro schemas):
#
#   packaging/build_pyinstaller.sh [DIST_DIR]      # default: dist  ->  dist/outpost/outpost
#
# Needs PyInstaller in the build environment (pip install pyinstaller); PYTHON picks the
# interpreter (default .venv/bin/python). The folder runs on machines of the same OS and
# architecture with the same or a newer glibc: build on the oldest distribution you
# support. Windows: packaging/windows/build.ps1 does the same with outpost.exe.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DIST=${1:-dist}
WORK=${OUTPOST_BUILD_DIR:-build/pyinstaller}

# the encoders generated from the schemas (agent/avro_codegen.py), built with the folder
"$PYTHON" -m agent.avro_codegen
"$PYTHON" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" packaging/outpost.spec
# the operations guide beside the executable: the systemd unit's Documentation= names it
install -D -m 0644 docs/operations.md "$DIST/outpost/docs/operations.md"
"$DIST/outpost/outpost" schemas list >/dev/null
echo "built $DIST/outpost/ ($(du -sh "$DIST/outpost" | cut -f1)); run $DIST/outpost/outpost --help"
