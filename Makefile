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

.PHONY: all setup build charm test bench demo fuzz jepsen vet clean

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
# The longest packages are listed first so that they start first (go test
# starts packages in the order given; ./... adds the rest once). The
# scenarios mostly wait on timers and hooks: with -p 4 the 2 cores were
# 144 % busy and the run took 8 m 50 s, so 6 run at once.
LONG_TEST_PKGS := ./tests/e2e ./workload/cmd/controllerd ./tests/e2e/bind \
	./tests/e2e/controlplane ./tests/e2e/restore ./tests/e2e/recovery ./tests/sim \
	./tests/e2e/rotation ./tests/jepsen ./tests/e2e/rolling
# The whole output also goes to build/test.log; when a test fails, its
# failure lines (the test's own messages, not the daemons' logs) are
# repeated at the end, where a truncated CI log still shows them.
test: charm vet
	DQC_CHARM_DIR=$(abspath $(CHARM_DIR)) $(GO) test -tags $(TAGS) -timeout $(TEST_TIMEOUT) -p 6 $(LONG_TEST_PKGS) ./... 2>&1 | tee $(BUILD)/test.log; \
		rc=$${PIPESTATUS[0]}; \
		if [ $$rc -ne 0 ]; then echo "== failures (whole output in $(BUILD)/test.log)"; \
			grep -E -- '^\s*--- FAIL|^\s+[a-z_]+_test\.go:[0-9]+: |^(panic|FAIL)' $(BUILD)/test.log | cut -c1-400 | head -80; fi; \
		exit $$rc

# Every benchmark (each repeats its measurement and reports the median and
# the spread with b.ReportMetric), then one table of them all
# (tests/cmd/benchtable); raw output in build/bench.txt.
bench: charm
	DQC_CHARM_DIR=$(abspath $(CHARM_DIR)) $(GO) test -tags $(TAGS) -timeout $(TEST_TIMEOUT) -p 1 -run '^$$' -bench . -benchtime 1x ./... 2>&1 | tee $(BUILD)/bench.txt; \
		test $${PIPESTATUS[0]} -eq 0
	@$(GO) run ./tests/cmd/benchtable < $(BUILD)/bench.txt | tee $(BUILD)/bench-table.md

# Every fuzz target for FUZZTIME each; the corpora (seeds and the inputs
# of crashes found) are kept in each package's testdata/fuzz.
FUZZTIME ?= 20s
FUZZ_TARGETS := ./controllerconf:FuzzParse \
	./charm:FuzzReconcile_PeerAndAppData ./charm:FuzzReconcile_NetworkGet \
	./workload/controlplane/apiserver:FuzzHandler_Request \
	./workload/daemon/control:FuzzServe_Request \
	./workload/consumer/apiagent:FuzzAgentConfig \
	./workload/controlplane/backup:FuzzList_Prune
fuzz: setup
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; echo "== $$name ($$pkg, $(FUZZTIME))"; \
		$(GO) test -tags $(TAGS) -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

# The Jepsen-style campaign (tests/jepsen): a 3-node then a 5-node cluster on
# the simulator, clients running `controllerd sql` on every machine, one
# fault at a time (kill -9, SIGSTOP, link cut, one-way drop, remove/add
# unit, full disk) for JEPSEN_FAULT_TIME each, at least 200 faults. Needs
# root. History, seed and summary go to build/jepsen/<time>-seed-<seed>/.
JEPSEN_FAULT_TIME ?= 10m
jepsen: charm
	@mkdir -p $(BUILD)/jepsen
	DQC_CHARM_DIR=$(abspath $(CHARM_DIR)) DQC_JEPSEN=full DQC_JEPSEN_FAULT_TIME=$(JEPSEN_FAULT_TIME) \
		DQC_JEPSEN_OUT=$(abspath $(BUILD))/jepsen $(GO) test -tags $(TAGS) -count=1 -timeout 45m -v \
		-run '^TestCampaign_Full$$' ./tests/jepsen 2>&1 | tee $(BUILD)/jepsen/last.log | grep -E '^(jepsen|  [0-9]|    (note|VIOLATION|register)|verdict|history|--- |ok|FAIL|PASS)'; \
		test $${PIPESTATUS[0]} -eq 0

# A narrated session on a simulated Juju model (tests/sim): the built charm and
# controllerd on network-namespace machines. Needs root; cleans up on Ctrl-C.
demo: charm
	$(GO) build -o $(BIN)/jujusim ./tests/cmd/jujusim
	$(BIN)/jujusim -charm $(CHARM_DIR)

clean:
	rm -rf $(BUILD)
