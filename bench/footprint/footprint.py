"""What one decision touches, counted rather than timed.

Under load a decision finds little of the engine in the CPU caches (bench/RESULTS.md,
"Where B's cost goes"), so its cost follows the memory it touches more than the
instructions it runs. This builds footprint.c against the engine's static library,
runs one decision of setup B (example policy with raised limits, alice's certificate,
carol's token, a chat completion) after five warm-up decisions under valgrind's lackey,
and counts, for that decision alone: instructions, distinct 64-byte lines and 4 KiB
pages of code and of data, and calls into malloc/realloc. Unlike a timing these
numbers do not move with the machine's load, so a change to the engine can be judged
by them on a noisy machine.

    python3 bench/footprint/footprint.py [LIB.a]   (default: target/release/libzt_policy_ffi.a)
    python3 bench/footprint/footprint.py --by-function [LIB.a]
        also lists the functions that touch the most lines (code lines they occupy,
        data lines they load or store), to see where a cut would count.
    python3 bench/footprint/footprint.py --b0 [...]
        the same for one decision of setup B0 (the one-rule policy).
"""

import bisect
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ALLOC = {"malloc", "realloc", "calloc"}


def build(work: Path, lib: Path) -> Path:
    exe = work / "footprint"
    # Static, so that libc's allocator has symbols in the same table as the engine.
    subprocess.run(["gcc", "-O2", "-g", "-static", "-I", str(ROOT / "rust/ffi/include"),
                    "-I", str(ROOT / "rust/ffi/tests/c"), str(HERE / "footprint.c"),
                    str(lib), "-lpthread", "-ldl", "-lm", "-o", str(exe)],
                   check=True, capture_output=True)
    return exe


def symbols(exe: Path):
    table = []
    out = subprocess.run(["nm", "--defined-only", "-n", "-C", str(exe)], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwWiI":
            table.append((int(parts[0], 16), parts[2]))
    return [a for a, _ in table], [s for _, s in table]


def measure(lib: Path = ROOT / "target/release/libzt_policy_ffi.a", by_function: bool = False,
            setup: str = "B") -> dict:
    """The footprint of one decision of `setup`: "B" (the example policy, with carol's
    token verified against the example JWKS) or "B0" (the one-rule policy, which reads
    neither the token nor the body)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import run  # noqa: E402  (bench/run.py: the policies setups B and B0 use)

    with tempfile.TemporaryDirectory(prefix="ztp-footprint-") as w:
        work = Path(w)
        exe = build(work, lib)
        if setup == "B":
            policy, jwks = run.bench_policy(work, raise_limits=True), str(ROOT / "examples/policy/idp/jwks.json")
        elif setup == "B0":
            policy, jwks = work / "policy-one-rule.toml", "-"
            policy.write_text(run.ONE_RULE_POLICY)
        else:
            raise ValueError(f"footprint: no setup {setup!r} (B or B0)")
        der = work / "alice.der"
        subprocess.run(["openssl", "x509", "-in", str(ROOT / "examples/policy/certs/alice.pem"), "-outform", "DER",
                        "-out", str(der)], check=True)
        trace = work / "trace"
        # Lackey traces the whole run (about 300 MB, nearly all of it loading the policy
        # and the warm-ups); sed keeps only the traced decision's window, in a pipe, so
        # the rest is never written or parsed.
        with open(trace, "w") as t:
            window = subprocess.Popen(["sed", "-n", "/^@@FOOTPRINT-START/,/^@@FOOTPRINT-END/p"],
                                      stdin=subprocess.PIPE, stdout=t)
            p = subprocess.run(["valgrind", "--tool=lackey", "--trace-mem=yes", "--log-fd=2", str(exe), str(policy),
                                jwks, str(der),
                                str(ROOT / "examples/policy/idp/carol.jwt")], stdout=subprocess.PIPE,
                               stderr=window.stdin, text=True)
            window.stdin.close()
            window.wait()
        if p.returncode != 0 or "status 200" not in p.stdout:
            raise SystemExit(f"footprint: the traced decision was not allowed: {p.stdout.strip()}")
        if window.returncode != 0:
            raise SystemExit(f"footprint: sed could not cut the trace (exit status {window.returncode})")
        addrs, names = symbols(exe)

        def name(a):
            i = bisect.bisect_right(addrs, a) - 1
            return names[i] if i >= 0 else "?"

        ins, ilines, dlines, allocs = 0, set(), set(), 0
        inside, prev, s = False, None, "?"
        fn_code, fn_data, fn_ins = {}, {}, {}
        with open(trace) as t:
            for line in t:
                if line.startswith("@@FOOTPRINT-START"):
                    inside = True
                elif line.startswith("@@FOOTPRINT-END"):
                    break
                elif not inside:
                    continue
                elif line.startswith("I "):
                    a = int(line[3:].split(",", 1)[0], 16)
                    ins += 1
                    ilines.add(a >> 6)
                    s = name(a)
                    if by_function:
                        fn_code.setdefault(s, set()).add(a >> 6)
                        fn_ins[s] = fn_ins.get(s, 0) + 1
                    if s != prev and s in ALLOC:
                        allocs += 1
                    prev = s
                elif line[:2] in (" L", " S", " M"):
                    dlines.add(int(line[3:].split(",", 1)[0], 16) >> 6)
                    if by_function:
                        fn_data.setdefault(s, set()).add(int(line[3:].split(",", 1)[0], 16) >> 6)
        if ins == 0:
            raise SystemExit("footprint: the trace has no decision between the @@FOOTPRINT markers")
        result = {
            "instructions": ins,
            "code_lines": len(ilines), "code_pages": len({x >> 6 for x in ilines}),
            "data_lines": len(dlines), "data_pages": len({x >> 6 for x in dlines}),
            "allocations": allocs,
        }
        if by_function:
            top = sorted(set(fn_code) | set(fn_data),
                         key=lambda f: -(len(fn_code.get(f, ())) + len(fn_data.get(f, ()))))
            result["by_function"] = [(len(fn_code.get(f, ())), len(fn_data.get(f, ())), fn_ins.get(f, 0), f)
                                     for f in top]
        return result


if __name__ == "__main__":
    args = sys.argv[1:]
    by_function = "--by-function" in args
    setup = "B0" if "--b0" in args else "B"
    libs = [Path(a) for a in args if a not in ("--by-function", "--b0")]
    r = measure(*libs[:1], by_function=by_function, setup=setup)
    rows = r.pop("by_function", [])
    print(json.dumps(r, indent=1))
    if rows:
        print(f"{'code':>5} {'data':>5} {'instr':>6}  function (code and data lines, instructions)")
        for code, data, ins, f in rows[:60]:
            print(f"{code:5d} {data:5d} {ins:6d}  {f[:150]}")
