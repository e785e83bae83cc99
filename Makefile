# The two commands of the README's quick start, the fast inner loop, and the benchmark.
.PHONY: demo demo-build test soak fuzz check bench bench-deep bench-build

# Build the custom Caddy and run the demo stack on loopback (Ctrl-C, SIGTERM or SIGHUP
# stops every process it started).
demo: demo-build
	python3 e2e/demo.py $(DEMO_ARGS)

demo-build:
	scripts/install-deps.sh
	xcaddy/build.sh
	cd e2e/idp && go build -o ../../build/test-idp .

# Every test: engine, CLI, example policy cases, C ABI, Go module, end to end.
test:
	scripts/test.sh

# The fast inner loop (a few minutes, installs nothing): formatting, lints, the header's
# drift, the Rust tests, the Go module's tests against a freshly built engine.
check:
	cargo fmt --all -- --check
	@bad=$$(gofmt -l go-module e2e/idp bench/loadgen); if [ -n "$$bad" ]; then echo "gofmt would change: $$bad"; exit 1; fi
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	scripts/gen-header.sh --check
	cargo test --workspace --quiet
	cargo build --release --quiet -p zt-policy-ffi
	cd go-module && go vet ./... && go test -count=1 ./...

# Long runs, not part of `make test`: every fuzz target for 10 minutes, and the soak —
# 64 goroutines × 100,000 decisions through the FFI under the race detector with RSS
# checked, then 200 Caddy reloads under keep-alive load (as in make test).
fuzz:
	scripts/install-deps.sh
	scripts/fuzz.sh $${ZTP_FUZZ_SECONDS:-600}

soak:
	scripts/install-deps.sh
	xcaddy/build.sh
	cd e2e/idp && go build -o ../../build/test-idp .
	cargo build --release --quiet -p zt-policy-ffi
	cd go-module && ZTP_SOAK_DECISIONS=100000 go test -race -count=1 -timeout 60m -run TestSoakDecisionsThroughTheFFI -v ./internal/engine
	ZTP_SOAK_RELOADS=200 python3 -m pytest -q -s e2e/test_reload.py -k keep_alive

# The side-by-side benchmark of the edge, written to bench/RESULTS.md (not part of `make test`).
bench: bench-build
	python3 bench/run.py

# The same with the lab notebook: perf profiles split by code, the engine call's trace,
# cold caches, what one decision touches (valgrind's lackey). A few minutes more.
bench-deep: BENCH_DEPS = --bench
bench-deep: bench-build
	python3 bench/run.py --deep

# What both benchmarks run: our Caddy, the test IdP, the load generator, criterion.
bench-build:
	scripts/install-deps.sh $(BENCH_DEPS)
	xcaddy/build.sh
	cd e2e/idp && go build -o ../../build/test-idp .
	cd bench/loadgen && go build -o ../../build/loadgen .
	cargo bench -q -p zt-policy-core --bench decision --no-run
