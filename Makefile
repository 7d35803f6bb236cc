# Build, test and demo entry points. Every target that builds runs the
# idempotent set-up first, so each works on a fresh Debian/Ubuntu machine.

SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
# go-dqlite links Debian's libsqlite3 instead of compiling its own copy.
TAGS := libsqlite3
export CGO_LDFLAGS_ALLOW := -Wl,-z,now|-Wl,--as-needed
# controllerd links Dqlite and its dependencies statically, so the charm runs
# on a machine that has only glibc (ldd shows libc and libm alone).
STATIC_CGO_LDFLAGS := -Wl,--as-needed -l:libdqlite.a -l:libraft.a -l:libuv_a.a -l:libsqlite3.a -l:liblz4.a -lm -ldl -lpthread

BUILD := build
BIN := $(BUILD)/bin
CHARM_DIR := $(BUILD)/charm
CHARM_ZIP := $(BUILD)/dqlite-controller.charm
TEST_TIMEOUT ?= 60m

.PHONY: all setup build charm test bench demo fuzz vet clean

all: charm

setup:
	@scripts/setup.sh

build: setup
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/dispatch ./hooks
	CGO_LDFLAGS="$(STATIC_CGO_LDFLAGS)" $(GO) build -trimpath -tags $(TAGS) -o $(BIN)/controllerd ./workload/cmd/controllerd

charm: build
	$(GO) run ./charm/cmd/packcharm -bin $(BIN) -out $(CHARM_DIR) -zip $(CHARM_ZIP)

vet: setup
	$(GO) vet -tags $(TAGS) ./...

# Unit, process-level and end-to-end tests. The end-to-end scenarios run the
# built charm in build/charm, so the charm is built first.
test: charm vet
	DQC_CHARM_DIR=$(abspath $(CHARM_DIR)) $(GO) test -tags $(TAGS) -timeout $(TEST_TIMEOUT) -p 3 ./...

bench: charm
	DQC_CHARM_DIR=$(abspath $(CHARM_DIR)) $(GO) test -tags $(TAGS) -timeout $(TEST_TIMEOUT) -p 1 -run '^$$' -bench . -benchtime 1x ./...

fuzz: setup
	$(GO) test -tags $(TAGS) -run '^$$' -fuzz FuzzParse -fuzztime 60s ./controllerconf

# A narrated session on a simulated Juju model (tests/sim): the built charm and
# controllerd on network-namespace machines. Needs root; cleans up on Ctrl-C.
demo: charm
	$(GO) build -o $(BIN)/jujusim ./tests/cmd/jujusim
	$(BIN)/jujusim -charm $(CHARM_DIR)

clean:
	rm -rf $(BUILD)
