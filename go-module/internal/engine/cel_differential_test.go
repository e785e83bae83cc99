package engine

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"cel.dev/cel-go/cel"
)

// The engine's CEL (the Rust cel crate, with our flattening and native evaluator)
// against cel-go, the reference implementation Caddy and most policy engines use, on
// generated expressions: each is true, false or an error in cel-go, and must be the
// same in a decision (the rule matches, does not, or is listed with an error).
// cel-go evaluates the parsed expression without its type checker: the engine's rules
// read JSON values whose types are known only at run time, and cel-go's checker would
// refuse mixed types (1 < 1.5, [1, "a"]) before running, which the engine leaves to
// run time (where both agree). Seed 1 and a fresh seed each run; ZTP_CEL_SEED and
// ZTP_CEL_CASES (3,000 each) change them.

type celGen struct{ r *rand.Rand }

func (g celGen) pick(xs ...string) string { return xs[g.r.IntN(len(xs))] }

func (g celGen) intLit() string {
	return g.pick("0", "1", "-1", "2", "7", "42", "-42", "9223372036854775807", "-9223372036854775807",
		strconv.Itoa(g.r.IntN(1000)-500))
}
func (g celGen) uintLit() string { return g.pick("0u", "1u", "7u", "18446744073709551615u", "42u") }
func (g celGen) dblLit() string  { return g.pick("0.0", "1.5", "-2.25", "1e10", "0.1", "3.0") }
func (g celGen) strLit() string {
	return g.pick(`""`, `"a"`, `"abc"`, `"héllo"`, `"ABC"`, `"a.b"`, `"x y"`, `"日本"`, `"\u00e9"`)
}

func (g celGen) num(d int) string {
	if d <= 0 || g.r.IntN(3) == 0 {
		return g.pick(g.intLit(), g.intLit(), g.uintLit(), g.dblLit())
	}
	a, b := g.num(d-1), g.num(d-1)
	switch g.r.IntN(8) {
	case 0:
		return "(" + a + " + " + b + ")"
	case 1:
		return "(" + a + " - " + b + ")"
	case 2:
		return "(" + a + " * " + b + ")"
	case 3:
		return "(" + a + " / " + b + ")"
	case 4:
		return "(" + a + " % " + b + ")"
	case 5:
		return "-" + a
	case 6:
		return "size(" + g.str(d-1) + ")"
	default:
		return g.pick("int(", "double(", "uint(") + a + ")"
	}
}

func (g celGen) str(d int) string {
	if d <= 0 || g.r.IntN(2) == 0 {
		return g.strLit()
	}
	switch g.r.IntN(3) {
	case 0:
		return "(" + g.str(d-1) + " + " + g.str(d-1) + ")"
	case 1:
		// Integers only: string(double) is a known divergence (see below).
		return "string(" + g.pick(g.intLit(), g.uintLit(), "(7 - 9)", "size(\"abc\")") + ")"
	default:
		return g.pick(`"a"`, `"b"`)
	}
}

func (g celGen) list(d int) string {
	n := g.r.IntN(4)
	items := make([]string, n)
	for i := range items {
		if g.r.IntN(2) == 0 {
			items[i] = g.num(d - 1)
		} else {
			items[i] = g.str(d - 1)
		}
	}
	return "[" + strings.Join(items, ", ") + "]"
}

func (g celGen) boolean(d int) string {
	if d <= 0 {
		return g.pick("true", "false", "null == null", "1 == 1")
	}
	switch g.r.IntN(14) {
	case 0:
		return "(" + g.boolean(d-1) + " && " + g.boolean(d-1) + ")"
	case 1:
		return "(" + g.boolean(d-1) + " || " + g.boolean(d-1) + ")"
	case 2:
		return "!" + g.boolean(d-1)
	case 3:
		return g.num(d-1) + " " + g.pick("==", "!=", "<", "<=", ">", ">=") + " " + g.num(d-1)
	case 4:
		return g.str(d-1) + " " + g.pick("==", "!=", "<", ">") + " " + g.str(d-1)
	case 5:
		return g.str(d-1) + "." + g.pick("startsWith", "endsWith", "contains") + "(" + g.str(d-1) + ")"
	case 6:
		return g.str(d-1) + ".matches(" + g.pick(`"^a"`, `"b+"`, `"[a-c]{2}"`, `"^$"`, `"é"`) + ")"
	case 7:
		return g.pick(g.num(d-1), g.str(d-1)) + " in " + g.list(d)
	case 8:
		return g.list(d) + "." + g.pick("exists", "all", "exists_one") + "(x, " + g.pick("x == 1", "x != \"a\"", "size(string(x)) > 1", "x > 0") + ")"
	case 9:
		return "(" + g.boolean(d-1) + " ? " + g.boolean(d-1) + " : " + g.boolean(d-1) + ")"
	case 10:
		return `{"a": ` + g.num(d-1) + `, "b": ` + g.str(d-1) + `}.` + g.pick("a", "b", "c") + " == " + g.pick(g.num(d-1), g.str(d-1))
	case 11:
		return "has({\"a\": 1}." + g.pick("a", "b") + ")"
	case 12:
		return "size(" + g.list(d) + ") " + g.pick("==", ">") + " " + g.intLit()
	default:
		return g.list(d) + " == " + g.list(d)
	}
}

type outcome string

const (
	isTrue  outcome = "true"
	isFalse outcome = "false"
	isError outcome = "error"
)

func celGoOutcome(env *cel.Env, expr string) (outcome, string) {
	// Parsed, not checked: evaluated dynamically, as the engine evaluates rules over
	// JSON values (cel-go's checker would also refuse mixed types before running).
	ast, iss := env.Parse(expr)
	if iss.Err() != nil {
		return isError, iss.Err().Error()
	}
	prg, err := env.Program(ast)
	if err != nil {
		return isError, err.Error()
	}
	v, _, err := prg.Eval(map[string]any{})
	if err != nil {
		return isError, err.Error()
	}
	switch v.Value() {
	case true:
		return isTrue, ""
	case false:
		return isFalse, ""
	}
	return isError, fmt.Sprintf("not a bool: %v", v)
}

func TestCELAgreesWithCelGo(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("ZTP_CEL_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	n := 3000
	if s := os.Getenv("ZTP_CEL_CASES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	env, err := cel.NewEnv()
	if err != nil {
		t.Fatal(err)
	}
	mismatches := map[string][]string{}
	counts := map[outcome]int{}
	for _, s := range []uint64{1, seed} {
		g := celGen{rand.New(rand.NewPCG(s, 7))}
		var exprs []string
		for len(exprs) < n {
			exprs = append(exprs, g.boolean(3))
		}
		const batch = 200
		for at := 0; at < len(exprs); at += batch {
			part := exprs[at:min(at+batch, len(exprs))]
			ours, loadErr := ourOutcomes(policyOf(part), len(part))
			for i, e := range part {
				want, why := celGoOutcome(env, e)
				got := isError // an expression the engine refuses to load is an error
				if loadErr == nil {
					got = ours[i]
				} else if one, err := ourOutcomes(policyOf([]string{e}), 1); err == nil {
					got = one[0] // another expression of the batch did not load
				}
				counts[want]++
				if got != want {
					key := fmt.Sprintf("cel-go %s, engine %s", want, got)
					mismatches[key] = append(mismatches[key], fmt.Sprintf("%s   (cel-go: %s)", e, why))
				}
			}
		}
	}
	t.Logf("seeds 1 and %d: %d expressions each; cel-go outcomes %v", seed, n, counts)
	for k, v := range mismatches {
		t.Errorf("%s: %d expressions, e.g.\n  %s", k, len(v), strings.Join(v[:min(len(v), 8)], "\n  "))
	}
}

// policyOf makes a policy with one allow rule r<i> per expression, and one that always
// allows (so a policy of expressions that are never true still loads).
func policyOf(exprs []string) string {
	var p strings.Builder
	p.WriteString("[settings]\nrequire_identity = false\n[[rule]]\nname = \"base\"\neffect = \"allow\"\nwhen = 'true'\n")
	for i, e := range exprs {
		fmt.Fprintf(&p, "[[rule]]\nname = \"r%d\"\neffect = \"allow\"\nwhen = '''%s'''\n", i, e)
	}
	return p.String()
}

// ourOutcomes loads the policy (rule r<i> per expression) and decides one request: a
// rule is true when matched, an error when listed in the rule errors, false otherwise.
func ourOutcomes(policy string, n int) ([]outcome, error) {
	e, err := New([]byte(policy), "cel.toml")
	if err != nil {
		return nil, err
	}
	defer e.Free()
	f := RequestFields{Method: "GET", Scheme: "https", Host: "h", Path: "/"}
	req := AppendRequestHeaders(AppendRequestFields(nil, &f), nil, "h")
	out := make([]byte, 1<<20)
	k, err := e.Decide(req, nil, nil, out)
	if err != nil {
		return nil, err
	}
	d, err := DecodeDecision(out[:k])
	if err != nil {
		return nil, err
	}
	res := make([]outcome, n)
	for i := range res {
		res[i] = isFalse
	}
	for _, m := range d.Matched {
		if i, err := strconv.Atoi(strings.TrimPrefix(m, "r")); err == nil && strings.HasPrefix(m, "r") {
			res[i] = isTrue
		}
	}
	for _, e := range d.Errors {
		name, _, _ := strings.Cut(e, ": ")
		if i, err := strconv.Atoi(strings.TrimPrefix(name, "r")); err == nil {
			res[i] = isError
		}
	}
	return res, nil
}

// The one divergence the generator found in 40,000 expressions, pinned so that fixing it
// shows: string() of a double. cel-go writes the shortest form with an exponent
// ("3e-10", "1e+10"); the cel crate writes Rust's decimal form ("0.0000000003",
// "10000000000"). Both agree on ordinary values ("0.1", "1.5"). A rule comparing
// string(double) with text should not rely on either form.
func TestKnownDivergenceStringOfADouble(t *testing.T) {
	env, err := cel.NewEnv()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		expr            string
		celGo, engineIs outcome
	}{
		{`string(0.1) == "0.1" && string(1.5) == "1.5"`, isTrue, isTrue},
		{`string(3e-10) == "3e-10"`, isTrue, isFalse},
		{`string(1e10) == "1e+10"`, isTrue, isFalse},
	} {
		got, why := celGoOutcome(env, c.expr)
		ours, err := ourOutcomes(policyOf([]string{c.expr}), 1)
		if err != nil {
			t.Fatal(err)
		}
		if got != c.celGo || ours[0] != c.engineIs {
			t.Errorf("%s: cel-go %s (%s), engine %s; pinned cel-go %s, engine %s", c.expr, got, why, ours[0], c.celGo, c.engineIs)
		}
	}
}
