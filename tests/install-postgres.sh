#!/usr/bin/env bash
# Installs the PostgreSQL server binaries walwatch's demo and tests start throwaway clusters
# with (initdb + postgres under /usr/lib/postgresql/*/bin), if they are not there yet.
# Debian/Ubuntu: apt-get; as root directly, else through sudo.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || [ -n "${WALWATCH_PG_BIN:-}" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-postgres: no apt-get here; install the PostgreSQL server (initdb, postgres) and set WALWATCH_PG_BIN to its bin directory" >&2
  exit 2
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
echo "install-postgres: installing the postgresql package (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq postgresql util-linux >/dev/null
# The package may start its own cluster on 5432; walwatch's tests never use it.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
