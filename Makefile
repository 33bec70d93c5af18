# gantry: run `make` for the list of targets.
SHELL := /bin/bash
BIN := bin/gantry
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
GO ?= go

.DEFAULT_GOAL := help
.PHONY: help build dev dev-down dev-status dev-clean test test-short fmt vet fuzz clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

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

clean: ## remove build output
	rm -rf bin
