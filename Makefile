# The two commands of the README's quick start.
.PHONY: test bench

# Every test: engine, CLI, example policy cases.
test:
	scripts/test.sh

# The criterion benchmark of one decision (not part of `make test`).
bench:
	cargo bench -p zt-policy-core --bench decision
