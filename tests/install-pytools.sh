#!/usr/bin/env bash
# Installs the Python tools the tests use, from PyPI, in a venv under target/: DuckDB and
# pyarrow, which the Arrow interop tests read walwatch's files with (readers no one here wrote),
# and psycopg 3 (with its binary libpq build), the driver tests/proxy_clients.rs runs through
# `walwatch proxy`. Prints the venv's python.
#
#   bash tests/install-pytools.sh        -> target/pytools/venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/venv.sh
VENV=${WALWATCH_PYTOOLS_VENV:-$PWD/target/pytools/venv}
PY="$VENV/bin/python"
have() { [ -x "$PY" ] && "$PY" -c 'import duckdb, pyarrow, psycopg' >/dev/null 2>&1; }
if ! have; then
  make_venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check duckdb==2.0.0 pyarrow==26.0.1 \
    psycopg==3.3.9 psycopg-binary==3.3.9 >&2
fi
if ! have; then
  echo "install-pytools: duckdb, pyarrow and psycopg do not import from $VENV" >&2
  exit 1
fi
echo "$PY"
