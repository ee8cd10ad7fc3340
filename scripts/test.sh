#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests and the integration tests (which
# start the real gstgate binary and its GSP simulator on loopback ports).
# Installs what the tests need when it is missing, so it works on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

need cargo || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
# tests/status_page.rs renders /status in a real headless browser (Debian's chromium).
[ -x /usr/bin/chromium ] || apt_install --no-install-recommends chromium
# tests/replicas.rs starts real Redis servers (and redis-cli MONITOR) on loopback ports.
need redis-server && need redis-cli || apt_install --no-install-recommends redis-server
# tests/prometheus_rules.rs runs promtool on deploy/prometheus/. Only Debian's prometheus
# package ships it, and installing that package would also start a Prometheus server: the
# binary is taken out of the package into target/tools/ instead.
if ! need promtool && [ ! -x target/tools/promtool ]; then
  sudo=""; if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  deb="$(mktemp -d)"
  (cd "$deb" && apt-get download -qq prometheus)
  dpkg-deb -x "$deb"/prometheus_*.deb "$deb/root"
  mkdir -p target/tools
  cp "$deb/root/usr/bin/promtool" target/tools/promtool
  rm -rf "$deb"
fi
need promtool || export PROMTOOL="$PWD/target/tools/promtool"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --all-targets --locked -- --test-threads="${GSTGATE_TEST_THREADS:-4}"
echo "== all tests passed"
