#!/usr/bin/env bash
# Installs the Python tools the Arrow interop tests read walwatch's files with: DuckDB and
# pyarrow from PyPI (readers no one here wrote), in a venv under target/. Prints the venv's
# python.
#
#   bash tests/install-pytools.sh        -> target/pytools/venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/venv.sh
VENV=${WALWATCH_PYTOOLS_VENV:-$PWD/target/pytools/venv}
PY="$VENV/bin/python"
have() { [ -x "$PY" ] && "$PY" -c 'import duckdb, pyarrow' >/dev/null 2>&1; }
if ! have; then
  make_venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check duckdb==2.0.0 pyarrow==26.0.1 >&2
fi
if ! have; then
  echo "install-pytools: duckdb and pyarrow do not import from $VENV" >&2
  exit 1
fi
echo "$PY"
