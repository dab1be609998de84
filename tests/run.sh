#!/usr/bin/env bash
# The whole test suite: installs what it needs (PostgreSQL server binaries, the Tansu Kafka
# broker, DuckDB and pyarrow for the Arrow interop tests, cargo-nextest),
# builds once, then runs every test (unit, integration against real throwaway PostgreSQL
# clusters, CLI, doc tests), plus formatting and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/install-postgres.sh
# The Kafka tests start their own broker from this binary; without it they fail, never skip.
WALWATCH_TANSU=$(bash tests/install-tansu.sh)
export WALWATCH_TANSU
# The Arrow interop tests read the output with DuckDB and pyarrow; without them they fail.
WALWATCH_PYTHON=$(bash tests/install-pytools.sh)
export WALWATCH_PYTHON
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "run.sh: installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

profile=default
if [ "${CI:-}" = "true" ]; then profile=ci; fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo nextest run --profile "$profile" --all-targets --locked --no-tests=fail
cargo test --doc --locked
