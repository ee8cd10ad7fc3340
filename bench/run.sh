#!/usr/bin/env bash
# The gateway benchmark: generate-IRN requests/s and p50/p99 latency, in one run on this
# machine, against the simulator directly, nginx (static headers), a bare hyper proxy on
# gstgate's own stack (the floor: what the stack costs), gstgate in passthrough mode,
# gstgate in gateway-encryption mode, gstgate in gateway mode with a drop-in client (logged in
# to gstgate, encrypting with gstgate's SEK) and gstgate in passthrough mode with the Redis
# session store. See BENCHMARKS.md.
#
#   bench/run.sh                          # 5 rounds × 10 s per target, refreshes BENCHMARKS.md
#   bench/run.sh --rounds 3 --duration 5s --report none
#   bench/run.sh --targets passthrough,redis --report none   # memory vs Redis store
#   bench/run.sh --targets gateway,dropin --report none      # the cost of drop-in mode
#   bench/run.sh --perf passthrough       # plus a perf profile of one more run
#   bench/run.sh --help                   # every option (also settable as BENCH_* variables)
#
# Installs nginx, wrk and redis-server from Debian when they are missing (the benchmark starts
# a redis-server of its own on a free port; Debian's redis-server service, started by the
# package, is not used), then runs
# `cargo bench --bench gateway` (release build of gstgate and of the orchestrator,
# benches/gateway/main.rs). Run it on an otherwise idle machine: the report lists any other busy
# process it saw.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
for arg in "$@"; do
  if [[ "$arg" == --perf* ]] && ! command -v perf >/dev/null 2>&1; then missing+=(linux-perf); fi
done

if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "bench/run.sh: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; then
    # Debian 13 has no nginx-light any more; the nginx package is the same server.
    missing=("${missing[@]/nginx-light/nginx}")
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
fi

export BENCH_COMMAND="bench/run.sh${*:+ $*}"
exec cargo bench --bench gateway -- "$@"
