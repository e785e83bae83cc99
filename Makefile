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

# The criterion benchmark of one decision (not part of `make test`).
bench:
	cargo bench -p zt-policy-core --bench decision
