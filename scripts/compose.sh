#!/usr/bin/env bash
# compose.sh: run the docker compose set (docker-compose.yml, plus
# docker-compose.5.yml for five masters) the same way from the Makefile, from
# tests and by hand.
#
#   scripts/compose.sh up       start the set, wait for a leader, the masters and
#                               the compose workers, print the status and URLs
#   scripts/compose.sh wait     only the waiting part of up
#   scripts/compose.sh down     remove everything of the project: containers
#                               (leader-started workers included), the network,
#                               and with VOLUMES=1 the volumes
#   scripts/compose.sh ps       compose ps, then every container labelled with
#                               the project (leader-started workers too)
#   scripts/compose.sh logs     compose logs -f (SERVICE=master-1 for one)
#   scripts/compose.sh status   gantry status against the published ports
#   scripts/compose.sh urls     the masters' host URLs, comma-separated
#   scripts/compose.sh tool     print the compose command in use
#   scripts/compose.sh compose ARGS...   any compose command on this project
#
# Environment:
#   GANTRY_PROJECT   project name (gantry): compose -p, container, network and
#                    volume name prefix, io.gantry.cluster label, cluster name
#   MASTERS          3 or 5; empty means 3 for up, and for the other commands
#                    5 when the project has a master-4 container or volume
#   VOLUMES          1: down also removes the Raft data volumes
#   GANTRY_PORT_1..5 host ports of the masters' HTTP API (8081..8085)
#   GANTRY_IMAGE     image (gantry:dev); never pulled. `make up` builds only
#                    gantry:dev; any other tag is used as it is
#   GANTRY_WORKERS   compose workers (2); GANTRY_WORKER_SLOTS (4) slots each
#   GANTRY_BIN       gantry client on the host (bin/gantry); when missing,
#                    the client inside a master container is used
#   COMPOSE          the compose command (default: `docker compose` when
#                    `docker compose version` works, else docker-compose)
#   WAIT             seconds `up`/`wait` waits for the cluster (120)
#   SERVICE, TAIL    for logs: one service, lines of history (100)
#   COMPOSE_EXTRA    more compose files to add, comma-separated (the chaos
#                    harness adds docker-compose.chaos.yml)
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=${GANTRY_PROJECT:-gantry}
export GANTRY_PROJECT=$PROJECT
BIN=${GANTRY_BIN:-bin/gantry}
WORKERS=${GANTRY_WORKERS:-2}
WAIT=${WAIT:-120}
LABEL="io.gantry.cluster=$PROJECT"

die() { echo "compose.sh: $*" >&2; exit 1; }

# Compose v1 lowercases the project name and drops other characters, v2
# rejects them; keep one spelling so names and labels always agree.
[[ $PROJECT =~ ^[a-z0-9][a-z0-9_-]*$ ]] ||
	die "GANTRY_PROJECT=$PROJECT: use lowercase letters, digits, - and _ (starting with a letter or digit)"

# compose_tool sets COMPOSE_CMD: $COMPOSE, else docker compose (v2) when it
# answers, else docker-compose (v1).
compose_tool() {
	if [ -n "${COMPOSE:-}" ]; then
		read -r -a COMPOSE_CMD <<<"$COMPOSE"
	elif docker compose version >/dev/null 2>&1; then
		COMPOSE_CMD=(docker compose)
	elif command -v docker-compose >/dev/null 2>&1; then
		COMPOSE_CMD=(docker-compose)
	else
		die "neither 'docker compose' nor docker-compose is installed"
	fi
}

# exists_container/exists_volume NAME: true when Docker has it.
exists_container() { [ -n "$(docker ps -aq --filter "name=^/$1\$")" ]; }
exists_volume() { docker volume inspect "$1" >/dev/null 2>&1; }

# masters: the number of masters, from MASTERS or from what exists.
masters() {
	if [ -n "${MASTERS:-}" ]; then
		echo "$MASTERS"
	elif exists_container "$PROJECT-master-4" || exists_volume "$PROJECT-master-4-data"; then
		echo 5
	else
		echo 3
	fi
}

N=$(masters)
case "$N" in
3) FILES=(-f docker-compose.yml) ;;
5) FILES=(-f docker-compose.yml -f docker-compose.5.yml) ;;
*) die "MASTERS=$N: use 3 or 5" ;;
esac
IFS=, read -r -a EXTRA <<<"${COMPOSE_EXTRA:-}"
for f in "${EXTRA[@]}"; do
	[ -z "$f" ] || FILES+=(-f "$f")
done

compose() { "${COMPOSE_CMD[@]}" -p "$PROJECT" "${FILES[@]}" "$@"; }

port() { local v="GANTRY_PORT_$1"; echo "${!v:-$((8080 + $1))}"; }
urls() {
	local out="" i
	for i in $(seq 1 "$N"); do out+="${out:+,}http://localhost:$(port "$i")"; done
	echo "$out"
}
master_services() { local i; for i in $(seq 1 "$N"); do echo "master-$i"; done; }

# gantry ARGS...: the client on the host, or inside a running master (which
# reaches the masters by service name) when the host has none.
gantry() {
	if [ -x "$BIN" ]; then
		"$BIN" "$@" --addr "$(urls)"
		return
	fi
	local c inner="" i
	c=$(docker ps -q --filter "label=$LABEL" --filter label=io.gantry.role=master | head -1)
	[ -n "$c" ] || { echo "no master container is running" >&2; return 1; }
	for i in $(seq 1 "$N"); do inner+="${inner:+,}http://master-$i:8080"; done
	docker exec "$c" /gantry "$@" --addr "$inner"
}

# check_data refuses to start a set whose size differs from the Raft data the
# volumes already hold: bootstrapping only happens on empty data, so the old
# voter set would stay.
check_data() {
	local has1=0 has4=0
	exists_volume "$PROJECT-master-1-data" && has1=1
	exists_volume "$PROJECT-master-4-data" && has4=1
	if [ "$N" = 5 ] && [ $has1 = 1 ] && [ $has4 = 0 ]; then
		die "volumes of a 3-master set exist for project $PROJECT; run 'make down VOLUMES=1' (deletes the data) before MASTERS=5"
	fi
	if [ "$N" = 3 ] && [ $has4 = 1 ]; then
		die "volumes of a 5-master set exist for project $PROJECT; run 'make down VOLUMES=1' (deletes the data) or use MASTERS=5"
	fi
}

# wait_ready polls until a leader serves, every master answers and the compose
# workers are alive (the leader may run more workers of its own).
wait_ready() {
	local deadline=$((SECONDS + WAIT)) out leaders nmasters alive
	echo "waiting up to ${WAIT}s for a leader, $N masters and $WORKERS workers..."
	while :; do
		out=$(gantry status --request-timeout 5s --json 2>/dev/null || true)
		leaders=$(grep -c '"role": "leader"' <<<"$out" || true)
		nmasters=$(grep -Ec '"role": "(leader|follower)"' <<<"$out" || true)
		alive=$(grep -c '"state": "alive"' <<<"$out" || true)
		if [ "$leaders" = 1 ] && [ "$nmasters" -ge "$N" ] && [ "$alive" -ge "$WORKERS" ]; then
			return 0
		fi
		if [ $SECONDS -ge $deadline ]; then
			echo "the cluster did not come up within ${WAIT}s (leader: $leaders, masters answering: $nmasters, workers alive: $alive)" >&2
			echo "see: scripts/compose.sh ps; scripts/compose.sh logs" >&2
			return 1
		fi
		sleep 1
	done
}

up() {
	check_data
	local image=${GANTRY_IMAGE:-gantry:dev}
	if ! docker image inspect "$image" >/dev/null 2>&1; then
		# Only gantry's own tag is built here; another one is the user's.
		[ "$image" = gantry:dev ] &&
			die "image gantry:dev not found; build it with 'make image' (nothing is pulled)"
		die "image $image does not exist; build it first, or leave IMAGE unset to build gantry:dev (nothing is pulled)"
	fi
	compose up -d
	wait_ready
	gantry status
	echo
	echo "masters: $(urls)"
	echo "status:  $BIN status --addr $(urls)"
	echo "try:     $BIN submit --addr $(urls) --wait -- sh -c 'echo hello from \$HOSTNAME'"
	echo "stop:    make down$([ "$PROJECT" = gantry ] || echo " GANTRY_PROJECT=$PROJECT")  (VOLUMES=1 also deletes the Raft data)"
}

down() {
	local ids
	# 1. Stop the masters first, so no leader starts workers while the rest
	#    goes. compose stop does not trigger the restart policy.
	compose stop $(master_services) || true
	ids=$(docker ps -q --filter "label=$LABEL" --filter label=io.gantry.role=master)
	[ -z "$ids" ] || docker stop $ids >/dev/null
	# 2. Every container of the cluster, leader-started workers included
	#    (io.gantry.managed=true, not compose's): compose down cannot remove the
	#    network while they are attached to it.
	ids=$(docker ps -aq --filter "label=$LABEL")
	[ -z "$ids" ] || { echo "removing the containers labelled $LABEL"; docker rm -f -v $ids >/dev/null; }
	# 3. What compose knows about: its containers, the network, and with
	#    VOLUMES=1 the named volumes.
	if [ "${VOLUMES:-0}" = 1 ]; then
		compose down --remove-orphans -v
		ids=$(docker volume ls -q --filter "label=$LABEL")
		[ -z "$ids" ] || docker volume rm $ids
	else
		compose down --remove-orphans
	fi
	# 4. The network, should anything have kept it alive.
	for ids in $(docker network ls -q --filter "label=$LABEL") $(docker network ls -q --filter "name=^$PROJECT-net\$"); do
		docker network rm "$ids" >/dev/null 2>&1 || true
	done
	local kept
	kept=$(docker volume ls -q --filter "label=$LABEL" | tr '\n' ' ')
	if [ -n "$kept" ]; then
		echo "removed project $PROJECT; Raft data kept in volumes: $kept(VOLUMES=1 removes them)"
	else
		echo "removed project $PROJECT; no volumes left"
	fi
}

ps() {
	compose ps
	echo
	echo "containers labelled $LABEL (io.gantry.managed=true: started by the leader):"
	docker ps -a --filter "label=$LABEL" \
		--format 'table {{.Names}}\t{{.Label "io.gantry.role"}}\t{{.Label "io.gantry.managed"}}\t{{.Status}}\t{{.Ports}}'
}

logs() {
	local svc=()
	[ -z "${SERVICE:-}" ] || svc=("$SERVICE")
	compose logs -f --tail="${TAIL:-100}" "${svc[@]}"
}

cmd=${1:-}
[ $# -eq 0 ] || shift
case "$cmd" in
up) compose_tool; up ;;
wait) wait_ready ;;
down) compose_tool; down ;;
ps) compose_tool; ps ;;
logs) compose_tool; logs ;;
status) gantry status "$@" ;;
urls) urls ;;
tool) compose_tool; echo "${COMPOSE_CMD[*]}" ;;
compose) compose_tool; compose "$@" ;;
*) echo "usage: $0 up|wait|down|ps|logs|status|urls|tool|compose ARGS..." >&2; exit 2 ;;
esac
