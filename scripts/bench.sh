#!/usr/bin/env bash
# bench.sh: `make bench`. Installs Debian's etcd-server when etcd is missing,
# builds bin/gantry and runs test/bench/cmd/gantry-bench: gantry beside a
# 3-member etcd cluster, both as local processes on loopback with fsync on.
# Writes bench-report.json and docs/failover.svg; see docs/BENCHMARKS.md.
#
# Environment: BENCH_ARGS (more gantry-bench flags, e.g. "--repeats 5"),
# ETCD (an etcd binary to use instead).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${ETCD:-}" ] && ! command -v etcd >/dev/null 2>&1; then
	echo "== bench: etcd not found; installing Debian's etcd-server"
	SUDO=""
	[ "$(id -u)" = 0 ] || SUDO="sudo"
	$SUDO apt-get update -qq || true
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
	# The package starts a system etcd on the default ports; the bench
	# starts its own on free ports, so stop that one when it runs.
	$SUDO systemctl stop etcd >/dev/null 2>&1 || $SUDO service etcd stop >/dev/null 2>&1 || true
fi

make --no-print-directory build
go build -o bin/gantry-bench ./test/bench/cmd/gantry-bench
# shellcheck disable=SC2086
exec bin/gantry-bench ${BENCH_ARGS:-}
