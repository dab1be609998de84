#!/usr/bin/env bash
# Builds the walwatch Python package (python/: the engine through PyO3, built by maturin) and
# installs it into a venv under target/, beside pytest, pytest-xdist and psycopg 3 from PyPI
# (the suite in tests/python/ and its inner xdist runs use them). Prints the venv's python.
#
#   bash tests/install-pywalwatch.sh        -> target/pywalwatch/venv/bin/python
#
# The wheel is built with the dev profile, so it reuses the dependencies the test build
# (`cargo build`, nextest) already compiled in target/; it lands in target/wheels. The tools
# are installed once; the wheel is rebuilt (incrementally) and reinstalled on every call.
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/venv.sh
VENV=${WALWATCH_PYWALWATCH_VENV:-$PWD/target/pywalwatch/venv}
PY="$VENV/bin/python"
have() { [ -x "$PY" ] && [ -x "$VENV/bin/maturin" ] \
  && "$PY" -c 'import pytest, xdist, psycopg' >/dev/null 2>&1; }
if ! have; then
  make_venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check maturin==1.16.0 pytest==9.2.0 \
    pytest-xdist==3.8.0 psycopg==3.3.9 psycopg-binary==3.3.9 >&2
fi
if ! have; then
  echo "install-pywalwatch: maturin, pytest, pytest-xdist and psycopg do not work in $VENV" >&2
  exit 1
fi
WHEELS=$PWD/target/wheels
rm -f "$WHEELS"/walwatch-*.whl
# A local wheel: no manylinux audit (it is installed here, never uploaded).
"$VENV/bin/maturin" build --profile dev --locked --manifest-path python/Cargo.toml \
  --interpreter "$PY" --compatibility linux --auditwheel skip --out "$WHEELS" >&2
"$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps \
  "$WHEELS"/walwatch-*.whl >&2
if ! "$PY" -c 'import walwatch, walwatch.pytest_plugin' >&2; then
  echo "install-pywalwatch: the built wheel does not import (see above)" >&2
  exit 1
fi
echo "$PY"
