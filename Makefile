# The two commands of the README's quick start, and the benchmark.
.PHONY: demo test bench

# Build the custom Caddy and run the demo stack on loopback (Ctrl-C stops it).
demo:
	scripts/install-deps.sh
	xcaddy/build.sh
	cd e2e/idp && go build -o ../../build/test-idp .
	python3 e2e/demo.py

# Every test: engine, CLI, example policy cases, C ABI, Go module, end to end.
test:
	scripts/test.sh

# The side-by-side benchmark of the edge, written to bench/RESULTS.md (not part of `make test`).
bench:
	scripts/install-deps.sh --bench
	xcaddy/build.sh
	cd e2e/idp && go build -o ../../build/test-idp .
	cd bench/loadgen && go build -o ../../build/loadgen .
	cargo bench -q -p zt-policy-core --bench decision --no-run
	python3 bench/run.py
