#!/usr/bin/env bash
# Runs the walwatch Python package's suite (tests/python/test_*.py) with the venv that
# tests/install-pywalwatch.sh builds (it builds and installs the wheel first). The plugin starts
# a throwaway PostgreSQL for the session: WALWATCH_PG_BIN picks its server binaries (as for the
# Rust tests), WALWATCH_DSN (or --walwatch-dsn) uses a running server instead. Extra arguments
# go to pytest, e.g. `bash tests/python/run.sh -n 2 -k proxy`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=$(bash tests/install-pywalwatch.sh)
if [ -n "${WALWATCH_PG_BIN:-}" ]; then
  echo "python tests: PostgreSQL binaries from WALWATCH_PG_BIN=$WALWATCH_PG_BIN" >&2
fi
cd tests/python
exec "$PY" -m pytest "$@"
