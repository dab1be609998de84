# Sourced by the install scripts: `make_venv DIR` creates a Python venv at DIR, installing
# Debian's python3-venv first when `python3 -m venv` is missing (through sudo when not root).
make_venv() {
  local venv=$1
  mkdir -p "$(dirname "$venv")"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    echo "installing python3-venv" >&2
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv python3-pip >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
}
