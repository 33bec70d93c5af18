#!/usr/bin/env bash
# chaos.sh: start a fresh compose cluster for the chaos harness
# (docker-compose.yml + docker-compose.chaos.yml, project "chaos", masters on
# host ports 18081-18083), run test/chaos/cmd/gantry-chaos against it, save
# the masters' logs, and remove the cluster with its volumes. Exits with the
# harness's code: 0 only when every invariant held. `make chaos` and
# `make chaos-ci` call it; see docs/CHAOS.md.
#
# Environment:
#   DURATION        how long faults are injected (5m)
#   SEED            schedule seed (empty: from the clock; the report prints it)
#   FAULTS          comma-separated faults (empty: all of them)
#   CLIENTS         concurrent submitting clients (8)
#   CHAOS_ARGS      more gantry-chaos flags, e.g. "--hold 5s-20s"
#   KEEP=1          leave the cluster running afterwards (make down GANTRY_PROJECT=chaos VOLUMES=1)
#   GANTRY_PROJECT  compose project (chaos); GANTRY_PORT_1..3 host ports
#   GANTRY_IMAGE    image (gantry:dev), built by `make image`
#   OUT             directory of chaos-report.json, chaos-history.jsonl and
#                   the logs (.)
set -euo pipefail
cd "$(dirname "$0")/.."

export GANTRY_PROJECT=${GANTRY_PROJECT:-chaos}
export GANTRY_PORT_1=${GANTRY_PORT_1:-18081} GANTRY_PORT_2=${GANTRY_PORT_2:-18082} GANTRY_PORT_3=${GANTRY_PORT_3:-18083}
export COMPOSE_EXTRA=docker-compose.chaos.yml MASTERS=3
export GANTRY_IMAGE=${GANTRY_IMAGE:-gantry:dev}
OUT=${OUT:-.}
mkdir -p "$OUT"

go build -o bin/gantry-chaos ./test/chaos/cmd/gantry-chaos

echo "== chaos: removing what an earlier run of project $GANTRY_PROJECT left"
VOLUMES=1 scripts/compose.sh down >/dev/null 2>&1 || true

finish() {
	local rc=$?
	mkdir -p "$OUT/chaos-logs"
	local c
	for c in $(docker ps -a --filter "label=io.gantry.cluster=$GANTRY_PROJECT" --format '{{.Names}}'); do
		docker logs "$c" >"$OUT/chaos-logs/$c.log" 2>&1 || true
	done
	if [ "${KEEP:-0}" = 1 ]; then
		echo "== chaos: KEEP=1, the cluster stays up (remove it: make down GANTRY_PROJECT=$GANTRY_PROJECT VOLUMES=1)"
	else
		echo "== chaos: removing the cluster (logs in $OUT/chaos-logs)"
		VOLUMES=1 scripts/compose.sh down || true
	fi
	exit $rc
}
trap finish EXIT

echo "== chaos: starting project $GANTRY_PROJECT"
scripts/compose.sh up

args=(--project "$GANTRY_PROJECT" --image "$GANTRY_IMAGE"
	--ports "$GANTRY_PORT_1,$GANTRY_PORT_2,$GANTRY_PORT_3"
	--duration "${DURATION:-5m}" --clients "${CLIENTS:-8}"
	--report "$OUT/chaos-report.json" --history "$OUT/chaos-history.jsonl")
[ -z "${SEED:-}" ] || args+=(--seed "$SEED")
[ -z "${FAULTS:-}" ] || args+=(--faults "$FAULTS")
# shellcheck disable=SC2206
[ -z "${CHAOS_ARGS:-}" ] || args+=($CHAOS_ARGS)
echo "== chaos: bin/gantry-chaos ${args[*]}"
bin/gantry-chaos "${args[@]}"
