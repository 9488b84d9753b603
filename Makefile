# pgcanary: `make demo` shows it working, `make test` proves it. See README.md.
SHELL := /bin/bash
GO ?= go
BIN := bin/pgcanary
# Packages that run goroutines concurrently get the race detector (all of ours do).
RACE_PKGS := ./...

.PHONY: all build test lint unit e2e demo bench bench-floor bench-mirror bench-routing bench-shadow bench-backfill bench-verify deps clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/pgcanary

# deps installs what the tests need that Go does not bring: PostgreSQL from Debian packages.
deps:
	bash scripts/ensure-postgres.sh

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

# test: lint, then every test with the race detector against throwaway PostgreSQL clusters.
test: deps lint build
	$(GO) test -race -count=1 -timeout 12m $(RACE_PKGS)

demo: deps build
	bash scripts/demo.sh

# bench: pgbench through pgcanary vs direct vs PgBouncer (installs pgbouncer when missing).
bench: build
	bash scripts/ensure-postgres.sh --with-pgbouncer
	PGCANARY_BIN=$(BIN) bash bench/passthrough.sh

# bench-floor: pgcanary vs PgBouncer vs two protocol-blind Go relays (bench/relayfloor).
bench-floor: build
	bash scripts/ensure-postgres.sh --with-pgbouncer
	PGCANARY_BIN=$(BIN) bash bench/floor.sh

# bench-mirror: mirrored UPDATEs through pgcanary vs the same mirror done by a trigger.
bench-mirror: build deps
	PGCANARY_BIN=$(BIN) bash bench/mirror.sh

# bench-routing: reads served by the new shape vs the old, through pgcanary.
bench-routing: build deps
	PGCANARY_BIN=$(BIN) bash bench/routing.sh

# bench-shadow: client reads with every read compared against a side database that is down.
bench-shadow: build deps
	PGCANARY_BIN=$(BIN) bash bench/shadow.sh

# bench-backfill, bench-verify: 1M rows against one INSERT ... SELECT / one hash aggregate.
bench-backfill: build deps
	PGCANARY_BIN=$(BIN) bash bench/backfill.sh

bench-verify: build deps
	PGCANARY_BIN=$(BIN) bash bench/verify.sh

clean:
	rm -rf bin
