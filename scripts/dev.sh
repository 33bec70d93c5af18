#!/usr/bin/env bash
# dev.sh: run the `make dev` topology (3 masters + 2 workers) as local
# processes on loopback.
#
#   scripts/dev.sh up     start everything, wait for a leader, print the URLs
#   scripts/dev.sh down   stop everything (SIGTERM: leaders hand over, workers drain)
#   scripts/dev.sh status print the cluster table
#
# Environment: GANTRY_BIN (default bin/gantry), GANTRY_DEV_DIR (default .dev:
# data, logs and pids), GANTRY_DEV_OFFSET (added to every port, default 0).
# Ports without offset: masters HTTP 8081-8083, Raft 7001-7003, gossip
# 7946-7948; workers HTTP 9001-9002, gossip 7951-7952.
set -euo pipefail

BIN=${GANTRY_BIN:-bin/gantry}
DIR=${GANTRY_DEV_DIR:-.dev}
OFF=${GANTRY_DEV_OFFSET:-0}
MASTERS=3
WORKERS=2

port() { echo $(($1 + OFF)); }
addrs() {
	local out="" i
	for i in $(seq 1 $MASTERS); do out+="${out:+,}http://127.0.0.1:$(port $((8080 + i)))"; done
	echo "$out"
}

# any_alive: true while any process in the pids file still runs (zombies,
# which some init processes reap late, do not count).
any_alive() {
	local p state
	[ -f "$DIR/pids" ] || return 1
	for p in $(cat "$DIR/pids"); do
		kill -0 "$p" 2>/dev/null || continue
		state=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null || echo Z)
		[ "$state" = Z ] || return 0
	done
	return 1
}

up() {
	if any_alive; then
		echo "already running (scripts/dev.sh down to stop)"; exit 1
	fi
	mkdir -p "$DIR/logs"
	: >"$DIR/pids"
	local peers="" joins="" i
	for i in $(seq 1 $MASTERS); do
		peers+="${peers:+,}m$i=127.0.0.1:$(port $((7000 + i)))"
		joins+="${joins:+,}127.0.0.1:$(port $((7945 + i)))"
	done
	for i in $(seq 1 $MASTERS); do
		"$BIN" master --id "m$i" --data-dir "$DIR/m$i" \
			--http "127.0.0.1:$(port $((8080 + i)))" --raft "127.0.0.1:$(port $((7000 + i)))" \
			--gossip "127.0.0.1:$(port $((7945 + i)))" --peers "$peers" --join "$joins" \
			>"$DIR/logs/m$i.log" 2>&1 &
		echo $! >>"$DIR/pids"
	done
	for i in $(seq 1 $WORKERS); do
		"$BIN" worker --id "w$i" --http "127.0.0.1:$(port $((9000 + i)))" \
			--gossip "127.0.0.1:$(port $((7950 + i)))" --join "$joins" --slots 4 \
			>"$DIR/logs/w$i.log" 2>&1 &
		echo $! >>"$DIR/pids"
	done
	# Wait until a leader serves and both workers have joined.
	local deadline=$((SECONDS + 60))
	until "$BIN" status --addr "$(addrs)" --request-timeout 5s --json 2>/dev/null |
		grep -c '"state": "alive"' | grep -qx "$WORKERS"; do
		if [ $SECONDS -ge $deadline ]; then
			echo "cluster did not come up within 60s; logs are in $DIR/logs" >&2
			exit 1
		fi
		sleep 0.5
	done
	"$BIN" status --addr "$(addrs)"
	echo
	echo "masters: $(addrs)"
	echo "workers: http://127.0.0.1:$(port 9001), http://127.0.0.1:$(port 9002)"
	echo "logs:    $DIR/logs/    stop: make dev-down"
	echo "try:     $BIN submit --wait -- sh -c 'echo hello'"
}

down() {
	[ -f "$DIR/pids" ] || { echo "not running"; return 0; }
	xargs -r kill -TERM <"$DIR/pids" 2>/dev/null || true
	local deadline=$((SECONDS + 45))
	while any_alive; do
		if [ $SECONDS -ge $deadline ]; then xargs -r kill -KILL <"$DIR/pids" 2>/dev/null || true; break; fi
		sleep 0.2
	done
	rm -f "$DIR/pids"
	echo "stopped (data kept in $DIR; make dev-clean removes it)"
}

case "${1:-up}" in
up) up ;;
down) down ;;
status) "$BIN" status --addr "$(addrs)" ;;
*) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
