# gantry: run `make` for the list of targets.
SHELL := /bin/bash
BIN := bin/gantry
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
GO ?= go
# Docker: the image tag, the compose project (prefix of every container,
# network and volume name) and the set's size; see docs/DOCKER.md.
# DEFAULT_IMAGE is gantry's own tag: the only one up, e2e, chaos, chaos-ci and
# bench-docker build. Any other IMAGE (USER_IMAGE non-empty) is the user's,
# typically built FROM gantry:dev: those targets run it as it is and never
# build under its tag; only `make image IMAGE=...` does.
DEFAULT_IMAGE := gantry:dev
IMAGE ?= $(or $(GANTRY_IMAGE),$(DEFAULT_IMAGE))
USER_IMAGE := $(filter-out $(DEFAULT_IMAGE),$(IMAGE))
GANTRY_PROJECT ?= gantry
MASTERS ?=
VOLUMES ?= 0
COMPOSE_ENV = GANTRY_PROJECT=$(GANTRY_PROJECT) GANTRY_IMAGE=$(IMAGE) MASTERS=$(MASTERS) VOLUMES=$(VOLUMES) GANTRY_BIN=$(BIN)

.DEFAULT_GOAL := help
.PHONY: help build dev dev-down dev-status dev-clean test test-short fmt vet fuzz clean \
	busybox image use-image up down ps logs e2e bench-docker clean-image chaos chaos-ci bench

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build the static binary bin/gantry (CGO_ENABLED=0)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/gantry

dev: build ## build, then start 3 masters + 2 workers as local processes and print their URLs
	@scripts/dev.sh up

dev-down: ## stop the make dev processes (data is kept in .dev)
	@scripts/dev.sh down

dev-status: ## print the make dev cluster's status
	@scripts/dev.sh status

dev-clean: dev-down ## stop make dev and delete its data
	rm -rf .dev

test: ## the whole test suite: gofmt check, go vet, go test -race (what .ci/run calls)
	@scripts/test.sh

test-short: ## unit tests only, without the race detector
	$(GO) test -short ./...

fmt: ## format the code
	gofmt -w $$(git ls-files '*.go')

vet: ## go vet
	$(GO) vet ./...

fuzz: ## run each fuzz target for FUZZTIME (default 30s)
	@scripts/fuzz.sh $(or $(FUZZTIME),30s)

clean: ## remove build output (bin/; the cached busybox in build/ stays, see clean-image)
	rm -rf bin

busybox: ## fetch a static busybox for the image into build/busybox (apt-get download busybox-static; cached)
	@scripts/busybox.sh build/busybox

image: build busybox ## build the Docker image IMAGE (default gantry:dev) FROM scratch: static binary + busybox
	docker build -t $(IMAGE) --build-arg VERSION=$(VERSION) \
		--build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) .

use-image: $(if $(USER_IMAGE),,image) ## build gantry:dev; with another IMAGE use it as it is (not rebuilt), failing when it does not exist
ifneq ($(USER_IMAGE),)
	@echo "using the image $(IMAGE) as it is (not rebuilt)"
	@docker image inspect $(IMAGE) >/dev/null 2>&1 || \
		{ echo "image $(IMAGE) does not exist; build it first, or leave IMAGE unset to build $(DEFAULT_IMAGE)" >&2; exit 1; }
endif

clean-image: ## remove the cached busybox (build/) and the image IMAGE
	rm -rf build
	-docker image rm $(IMAGE)

up: use-image ## build gantry:dev (another IMAGE: use it as it is), then start 3 masters + workers under compose (MASTERS=5 for five), wait, print the URLs
	@$(COMPOSE_ENV) MASTERS=$(or $(MASTERS),3) scripts/compose.sh up

down: ## remove the compose set and the workers its leader started (VOLUMES=1 also deletes the Raft data)
	@$(COMPOSE_ENV) scripts/compose.sh down

ps: ## the compose set's containers, leader-started workers included
	@$(COMPOSE_ENV) scripts/compose.sh ps

logs: ## follow the compose set's logs (SERVICE=master-1 for one, TAIL=n lines of history)
	@$(COMPOSE_ENV) SERVICE=$(SERVICE) TAIL=$(or $(TAIL),100) scripts/compose.sh logs

e2e: $(if $(wildcard test/e2e),use-image) ## end-to-end tests against the image (gantry:dev built, or IMAGE as it is) and compose set (test/e2e, build tag e2e; needs Docker)
ifneq ($(wildcard test/e2e),)
	@GANTRY_IMAGE=$(IMAGE) $(GO) test -tags e2e -count=1 -timeout 30m -v ./test/e2e/...
else
	@echo "e2e: there are no e2e tests yet (test/e2e does not exist); nothing ran"
endif

bench-docker: use-image ## failover and scale-up figures under compose (test/e2e benchmarks; ROUNDS=5, SCALE_ROUNDS=3); writes bench-docker.json
	GANTRY_IMAGE=$(IMAGE) GANTRY_BENCH_ROUNDS=$(or $(ROUNDS),5) GANTRY_BENCH_SCALE_ROUNDS=$(or $(SCALE_ROUNDS),3) \
		$(GO) test -tags e2e -count=1 -timeout 30m -run '^$$' -bench . -benchtime 1x -v ./test/e2e/...

chaos: use-image ## fault injection against a fresh compose cluster, then a verdict (DURATION=5m SEED= FAULTS=all CLIENTS=8 KEEP=0; docs/CHAOS.md)
	@DURATION=$(or $(DURATION),5m) SEED=$(SEED) FAULTS=$(FAULTS) CLIENTS=$(CLIENTS) KEEP=$(KEEP) GANTRY_IMAGE=$(IMAGE) scripts/chaos.sh

# The CI run: fixed seed, leader kill, pause and partition, about 75 s of faults.
CHAOS_CI_SEED ?= 20261127
chaos-ci: use-image ## the short chaos run of .ci/run: 75s, fixed seed, kill-leader,pause-leader,partition-leader
	@DURATION=75s SEED=$(CHAOS_CI_SEED) FAULTS=kill-leader,pause-leader,partition-leader GANTRY_IMAGE=$(IMAGE) scripts/chaos.sh

bench: ## gantry beside a 3-member etcd on loopback: throughput, failover, latency (installs etcd-server; BENCH_ARGS=; docs/BENCHMARKS.md)
	@BENCH_ARGS="$(BENCH_ARGS)" scripts/bench.sh
