"""The benchmark's own arithmetic and parsing, on text in the formats perf and
`go tool trace -d=parsed` print (run by `make test`; the benchmark itself is not)."""

import pytest

import deep
import harness

# `perf report --stdio --no-children --sort dso,sym -q -n -g none` lines, as printed for
# Caddy with zt_policy (one of each kind of code).
PERF = """
     3.48%           516  [kernel.kallsyms]  [k] _raw_spin_unlock_irqrestore
     2.78%           412  caddy              [.] runtime.tryDeferToSpanScan
     0.71%           106  caddy              [.] zt_policy_core::native::Program::truth
     0.39%            58  libc.so.6          [.] __memcmp_avx2_movbe
     0.24%            36  libc.so.6          [.] malloc
     0.10%            15  caddy              [.] ztp_engine_decide
     0.48%            71  caddy              [.] github.com/zt-policy/zt-policy/go-module.(*Handler).ServeHTTP
     0.01%             1  caddy              [.] type:.eq.github.com/zt-policy/zt-policy/go-module.counterKey
     0.05%             7  caddy              [.] runtime.cgocall
     0.03%             5  caddy              [.] _cgo_topofstack
     0.03%             4  caddy              [.] _cgo_93a0feffd0a6_Cfunc_ztp_engine_decide
     1.02%           152  [vdso]             [.] __vdso_clock_gettime
     0.51%            76  caddy              [.] slices.pdqsortCmpFunc[go.shape.struct { net/http.key string; net/http.values []string }]
     0.35%            52  caddy              [.] crypto/internal/fips140/aes/gcm.gcmAesDec.abi0
"""


def test_profile_counts_puts_each_sample_where_its_code_is():
    assert deep.profile_counts(PERF) == {
        "kernel": 516,
        "engine": 106 + 58 + 36 + 15,
        "module": 71 + 1,
        "cgo": 7 + 5 + 4,
        "rest": 412 + 152 + 76 + 52,
    }


def test_profile_counts_ignores_what_is_not_a_sample_line():
    assert sum(deep.profile_counts("# Samples: 3K of event 'cpu-clock:ppp'\n\n#\n").values()) == 0


def profile(engine, module, kernel, rest, requests):
    return dict(engine=engine, cgo=0.5, module=module, kernel=kernel, rest=rest,
                total=engine + 0.5 + module + kernel + rest, samples=1000, requests=requests)


def test_merged_profile_weights_rounds_by_their_requests():
    m = deep.merged_profile([profile(10, 2, 50, 150, 100), profile(20, 4, 50, 150, 300)])
    assert m["engine"] == pytest.approx(17.5)
    assert m["module"] == pytest.approx(3.5)
    assert m["total"] == pytest.approx(17.5 + 0.5 + 3.5 + 200)
    assert (m["samples"], m["requests"]) == (2000, 400)


def test_a_failed_round_fails_the_merged_profile():
    assert deep.merged_profile([profile(10, 2, 50, 150, 100), None]) is None
    assert deep.merged_profile([]) is None


def test_own_code_bound():
    # A's CPU from its profile (200.5 µs), not from the throughput rounds, which drifted.
    A = {"cpu_us_per_req": 170.0, "profile": profile(0, 0, 50, 150, 100)}
    B = {"cpu_us_per_req": 230.0, "profile": profile(17.5, 3.0, 50, 150, 100)}
    # 200.5 / (200.5 + 17.5 + 0.5 + 3.0)
    assert deep.own_code_bound(A, B) == pytest.approx(200.5 / 221.5)
    assert deep.own_code_bound({"cpu_us_per_req": 200.0}, B) is None


@pytest.mark.parametrize("by_rps, by_cpu, bound, met", [
    (0.96, 0.97, None, True),
    (0.96, 0.94, None, False),
    (0.94, 0.97, None, False),
    # The rounds drifted in B's favour, but its own code alone does not fit in 0.95.
    (1.12, 1.08, 0.90, False),
    (0.97, 0.96, 0.955, True),
])
def test_b_over_a_met(by_rps, by_cpu, bound, met):
    assert deep.b_over_a_met(by_rps, by_cpu, bound) is met


def footprint(code, data):
    return {"instructions": 1000, "code_lines": code, "code_pages": 10, "data_lines": data, "data_pages": 10,
            "allocations": 1}


def test_line_budget():
    A = {"cpu_us_per_req": 170.0, "profile": profile(0, 0, 50, 139.5, 100)}  # 190 µs in its profile
    B = {"profile": profile(15.0, 2.5, 50, 150, 100)}  # engine, module; cgo is 0.5
    B0 = {"profile": profile(5.0, 2.0, 50, 150, 100)}
    touched = {"B": footprint(600, 400), "B0": footprint(250, 150)}
    b = deep.line_budget(A, B, B0, touched)
    assert b["ns_per_line"] == pytest.approx({"B": 15.0, "B0": 12.5})
    # 190 / 0.95 - 190 = 10 µs for the module's own code; 3 of them are not the engine.
    assert b["engine_budget_us"] == pytest.approx(7.0)
    assert b["lines"] == 466  # 7,000 ns / 15 ns
    assert deep.line_budget(A, B, {"cpu_us_per_req": 1.0}, touched) is None


def test_footprint_section_says_whether_the_lines_explain_the_cost():
    A = {"cpu_us_per_req": 170.0, "profile": profile(0, 0, 50, 139.5, 100)}
    B = {"profile": profile(15.0, 2.5, 50, 150, 100)}
    touched = {"B": footprint(600, 400), "B0": footprint(250, 150)}
    alike = "\n".join(deep.footprint_section(touched, deep.line_budget(A, B, {"profile": profile(5.0, 2.0, 50, 150, 100)},
                                                                    touched)))
    assert "| B0 | 1,000 | 250 / 10 | 150 / 10 | 1 |" in alike
    assert "nearly the same for both" in alike and "**466 lines**" in alike and "takes 600 today" in alike
    # B0's engine at 1 µs: 2.5 ns per line against B's 15, so the lines do not explain it.
    unlike = "\n".join(deep.footprint_section(touched, deep.line_budget(A, B, {"profile": profile(1.0, 2.0, 50, 150, 100)},
                                                                     touched)))
    assert "not alike in this run" in unlike
    # Without profiles the table stands alone.
    bare = deep.footprint_section(touched, None)
    assert not any("ns per line" in line for line in bare)


# `go tool trace -d=parsed` output: a call into the engine that returns 5,888 ns later,
# an ordinary read syscall of another goroutine, and a call still running when the
# trace ends.
TRACE = """\
M=3331 P=0 G=113876 StateTransition Time=23715915805568 GoID=113876 Running->Syscall Reason=""
TransitionStack=
	github.com/zt-policy/zt-policy/go-module._Cfunc_ztp_engine_decide @ 0x1badb05
		_cgo_gotypes.go:189
	github.com/zt-policy/zt-policy/go-module.(*engine).decide.func1 @ 0x1baf3fd
M=3331 P=0 G=87215 StateTransition Time=23715915806000 GoID=87215 Running->Syscall Reason=""
TransitionStack=
	syscall.read @ 0x518cb7
		syscall/zsyscall_linux_amd64.go:736
M=3331 P=0 G=87215 StateTransition Time=23715915809000 GoID=87215 Syscall->Running Reason=""
M=3331 P=0 G=113876 StateTransition Time=23715915811456 GoID=113876 Syscall->Running Reason=""
M=3331 P=0 G=113877 StateTransition Time=23715915812000 GoID=113877 Running->Syscall Reason=""
TransitionStack=
	github.com/zt-policy/zt-policy/go-module._Cfunc_ztp_engine_decide @ 0x1badb05
"""


def test_cgo_call_times_times_only_the_calls_into_the_engine():
    assert deep.cgo_call_times(TRACE) == [pytest.approx(5.888)]


def test_cgo_call_times_without_a_call_is_none():
    assert deep.cgo_call_times("M=1 P=0 G=1 Sync Time=1 N=1\n") is None


def test_quantile_interpolates_within_the_buckets():
    # 100 decisions: 50 within 10 µs, 40 more within 25 µs, the last 10 within 50 µs.
    buckets = {10e-6: 50, 25e-6: 90, 50e-6: 100, float("inf"): 100}
    assert harness.quantile_us(buckets, 0.5) == pytest.approx(10)
    assert harness.quantile_us(buckets, 0.95) == pytest.approx(37.5)


def test_settle_section_reports_what_settling_adds_and_the_target():
    import settle

    def setup(cpu, ttfb):
        return {"rps": 1000, "cpu_us_per_req": cpu, "ttfb_p50_us": ttfb, "ttfb_p99_us": ttfb * 2,
                "p50_us": ttfb, "p99_us": ttfb * 2, "statuses": {"200": 10}}

    result = {"plain": {"B": setup(100, 900), "B-settle": setup(103, 905)},
              "streamed, usage added and removed": {"B": setup(120, 950), "B-settle": setup(131, 960)}}

    class A:
        rounds, seconds = 3, 3

    text = "\n".join(settle.section(result, A))
    assert "| plain | 100.0 | 103.0 | **+3.0** | met |" in text
    assert "| streamed, usage added and removed | 120.0 | 131.0 | **+11.0** | NOT met |" in text
    assert settle.summary(result) == ("plain +3.0 µs, streamed, usage added and removed +11.0 µs; "
                                      "time to first byte p50 (usage added) 950 → 960 µs")


def test_store_section_reports_what_the_store_adds_and_the_target():
    import store

    def setup(p50, p99, cpu, store_cpu=0.0, statuses=None):
        return {"rps": 1000, "cpu_us_per_req": cpu, "store_cpu_us_per_req": store_cpu, "p50_us": p50,
                "p99_us": p99, "statuses": statuses or {"200": 10}}

    class A:
        rounds, seconds = 3, 3

    met = {"B-local": setup(900, 2000, 100), "B-cluster": setup(1100, 2400, 180, 30)}
    text = "\n".join(store.section(met, A))
    assert "| latency p50 (µs) | 900 | 1100 | **+200** | |" in text
    assert "| latency p99 (µs) | 2000 | 2400 | **+400** | ≤ 500 µs: met |" in text
    assert "| Caddy CPU µs/request | 100.0 | 180.0 | **+80.0** | |" in text
    assert "not every answer" not in text
    assert store.summary(met) == "p50 +200 µs, p99 +400 µs, Caddy CPU +80.0 µs/request (+ store 30.0)"
    missed = {"B-local": setup(900, 2000, 100), "B-cluster": setup(1100, 2600, 180, 30, {"200": 9, "503": 1})}
    text = "\n".join(store.section(missed, A))
    assert "≤ 500 µs: NOT met" in text and "not every answer was 200" in text
