package ztpolicy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/zt-policy/zt-policy/go-module/internal/engine"
)

const examplePolicy = "../examples/policy/policy.toml"

func provision(t testing.TB, h *Handler) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("provision: %v", err)
	}
	if err := h.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
}

func policyFile(t testing.TB, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "policy.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func cert(t testing.TB, name string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile("../examples/policy/certs/" + name + ".pem")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// countingReader reports how much of a body anything read.
type countingReader struct {
	r    io.Reader
	read int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read += n
	return n, err
}

type call struct {
	rec     *httptest.ResponseRecorder
	next    bool
	upHdr   http.Header
	upBody  []byte
	errBody map[string]map[string]any
}

func serve(t testing.TB, h *Handler, r *http.Request) call {
	t.Helper()
	c := call{rec: httptest.NewRecorder()}
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		c.next = true
		c.upHdr = r.Header.Clone()
		c.upBody, _ = io.ReadAll(r.Body)
		w.WriteHeader(200)
		return nil
	})
	if err := h.ServeHTTP(c.rec, r, next); err != nil {
		t.Fatalf("ServeHTTP: %v", err)
	}
	if c.rec.Code != 200 {
		if err := json.Unmarshal(c.rec.Body.Bytes(), &c.errBody); err != nil {
			t.Fatalf("deny body is not JSON: %q", c.rec.Body.String())
		}
	}
	return c
}

func chat(t testing.TB, who string, body string) *http.Request {
	r := httptest.NewRequest("POST", "https://ai.example.internal/v1/chat/completions", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	if who != "" {
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert(t, who)}}
	}
	return r
}

func TestAllowedRequestCarriesIdentityUpstreamNotTheSpoofedOne(t *testing.T) {
	h := &Handler{PolicyFile: examplePolicy, StripHeaders: []string{"X-Auth-Request-User"}}
	provision(t, h)
	body := `{"model":"llama-3.1-8b-instruct","max_tokens":16}`
	r := chat(t, "alice", body)
	r.Header.Set("X-Zt-Identity", "admin@example.com")
	r.Header.Set("X-Zt-Rule", "forged")
	r.Header.Set("X-Auth-Request-User", "admin")
	c := serve(t, h, r)
	if !c.next || c.rec.Code != 200 {
		t.Fatalf("want allowed, got %d %s", c.rec.Code, c.rec.Body)
	}
	if got := c.upHdr.Values("X-Zt-Identity"); len(got) != 1 || got[0] != "alice@example.com" {
		t.Errorf("identity upstream: %v", got)
	}
	if got := c.upHdr.Get("X-Zt-Rule"); got != "ml-users-inference" {
		t.Errorf("rule upstream: %q", got)
	}
	if got := c.upHdr.Get("X-Auth-Request-User"); got != "" {
		t.Errorf("stripped header reached upstream: %q", got)
	}
	if string(c.upBody) != body {
		t.Errorf("body upstream %q, want %q", c.upBody, body)
	}
	if c.rec.Header().Get("RateLimit-Policy") == "" {
		t.Error("no RateLimit-Policy on an allowed response")
	}
}

func TestDeniedRequestGetsOpenAIErrorNamingTheRule(t *testing.T) {
	h := &Handler{PolicyFile: examplePolicy}
	provision(t, h)
	c := serve(t, h, chat(t, "alice", `{"model":"gpt-4o"}`))
	if c.next || c.rec.Code != 403 {
		t.Fatalf("want 403 and no upstream call, got %d next=%v", c.rec.Code, c.next)
	}
	e := c.errBody["error"]
	if e["type"] != "permission_error" || e["code"] != "denied_by_rule" || e["rule"] != "model-allowed" {
		t.Errorf("error body %v", e)
	}
	if msg, _ := e["message"].(string); !strings.Contains(msg, `"model-allowed"`) {
		t.Errorf("message does not name the rule: %q", msg)
	}
	if ct := c.rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
}

func TestDecisionsAreCountedByOutcomeReasonAndRule(t *testing.T) {
	h := &Handler{PolicyFile: examplePolicy}
	provision(t, h)
	denied := decisions.WithLabelValues("denied", "denied_by_rule", "model-allowed")
	allowed := decisions.WithLabelValues("allowed", "allowed", "ml-users-inference")
	d0, a0 := testutil.ToFloat64(denied), testutil.ToFloat64(allowed)
	n0, s0 := histogram(t)
	serve(t, h, chat(t, "alice", `{"model":"gpt-4o"}`))
	serve(t, h, chat(t, "alice", `{"model":"llama-3.1-8b-instruct","max_tokens":8}`))
	serve(t, h, chat(t, "alice", `{"model":"llama-3.1-8b-instruct","max_tokens":8}`))
	if got := testutil.ToFloat64(denied) - d0; got != 1 {
		t.Errorf("denied counted %v times", got)
	}
	if got := testutil.ToFloat64(allowed) - a0; got != 2 {
		t.Errorf("allowed counted %v times", got)
	}
	// Every decision, allowed or denied, is timed once.
	n1, s1 := histogram(t)
	if n1-n0 != 3 || s1 <= s0 || s1-s0 > 10 {
		t.Errorf("decision_duration_seconds: %d observations, %v s", n1-n0, s1-s0)
	}
}

// histogram reads decision_duration_seconds: its count and sum.
func histogram(t *testing.T) (uint64, float64) {
	var m dto.Metric
	if err := decisionSeconds.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

func TestNoCertificateIs401WithChallenge(t *testing.T) {
	h := &Handler{PolicyFile: examplePolicy}
	provision(t, h)
	c := serve(t, h, chat(t, "", `{}`))
	if c.rec.Code != 401 || c.next || c.errBody["error"]["type"] != "authentication_error" {
		t.Fatalf("got %d %v", c.rec.Code, c.errBody)
	}
	if c.rec.Header().Get("WWW-Authenticate") == "" {
		t.Error("no WWW-Authenticate on 401")
	}
}

func TestBurstGets429WithRetryAfterAndRateLimitHeaders(t *testing.T) {
	h := &Handler{PolicyFile: policyFile(t, `
[[rule]]
name = "all"
effect = "allow"
when = 'true'
[[limit]]
name = "per-device"
rate = "1/m"
burst = 2
`)}
	provision(t, h)
	for i := 0; i < 2; i++ {
		if c := serve(t, h, chat(t, "alice", `{}`)); c.rec.Code != 200 {
			t.Fatalf("request %d: %d", i, c.rec.Code)
		}
	}
	c := serve(t, h, chat(t, "alice", `{}`))
	if c.rec.Code != 429 || c.next {
		t.Fatalf("want 429, got %d", c.rec.Code)
	}
	if got := c.rec.Header().Get("Retry-After"); got != "30" && got != "60" {
		t.Errorf("Retry-After %q", got)
	}
	if got := c.rec.Header().Get("RateLimit"); !strings.HasPrefix(got, `"per-device";r=0;t=`) {
		t.Errorf("RateLimit %q", got)
	}
	if got := c.rec.Header().Get("RateLimit-Policy"); got != `"per-device";q=2;w=120` {
		t.Errorf("RateLimit-Policy %q", got)
	}
	if c.errBody["error"]["type"] != "rate_limit_error" {
		t.Errorf("error type %v", c.errBody)
	}
}

func TestOversizedDeclaredBodyIs413WithoutReadingIt(t *testing.T) {
	h := &Handler{PolicyFile: examplePolicy}
	provision(t, h)
	body := &countingReader{r: bytes.NewReader(make([]byte, 300<<10))}
	r := chat(t, "alice", "")
	r.Body = io.NopCloser(body)
	r.ContentLength = 300 << 10
	rec := &replyWatcher{ResponseRecorder: httptest.NewRecorder(), body: body, readAtReply: -1}
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		t.Fatal("an oversized body reached the upstream")
		return nil
	})
	if err := h.ServeHTTP(rec, r, next); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 413 || rec.Header().Get("Connection") != "close" {
		t.Fatalf("want 413 with Connection: close, got %d %v", rec.Code, rec.Header())
	}
	// Decided and answered before a byte was read (what the client still sends is
	// dropped afterwards, so it can read the reply).
	if rec.readAtReply != 0 {
		t.Errorf("read %d bytes of a body declared over the limit before replying", rec.readAtReply)
	}
}

// replyWatcher notes how much of the body had been read when the reply began.
type replyWatcher struct {
	*httptest.ResponseRecorder
	body        *countingReader
	readAtReply int
}

func (w *replyWatcher) WriteHeader(code int) {
	if w.readAtReply < 0 {
		w.readAtReply = w.body.read
	}
	w.ResponseRecorder.WriteHeader(code)
}

func TestChunkedBodyIsReadOnlyUpToTheLimit(t *testing.T) {
	h := &Handler{PolicyFile: examplePolicy}
	provision(t, h)
	body := &countingReader{r: bytes.NewReader(make([]byte, 1<<20))}
	r := chat(t, "alice", "")
	r.Body = io.NopCloser(body)
	r.ContentLength = -1
	c := serve(t, h, r)
	if c.rec.Code != 413 || c.next {
		t.Fatalf("want 413, got %d", c.rec.Code)
	}
	if max := 256<<10 + 1; body.read > max+32<<10 {
		t.Errorf("read %d bytes, the limit is %d", body.read, max)
	}
}

func TestBodyUnderTheLimitGoesOnByteForByte(t *testing.T) {
	h := &Handler{PolicyFile: examplePolicy}
	provision(t, h)
	payload := `{"model":"qwen2.5-7b-instruct","max_tokens":8,"messages":[{"role":"user","content":"` + strings.Repeat("é", 5000) + `"}]}`
	for _, chunked := range []bool{false, true} {
		r := chat(t, "alice", payload)
		if chunked {
			r.Body = io.NopCloser(strings.NewReader(payload))
			r.ContentLength = -1
		} else if r.ContentLength != int64(len(payload)) {
			t.Fatalf("test request declares %d", r.ContentLength)
		}
		c := serve(t, h, r)
		if c.rec.Code != 200 {
			t.Fatalf("chunked=%v: got %d %s", chunked, c.rec.Code, c.rec.Body)
		}
		if string(c.upBody) != payload {
			t.Errorf("chunked=%v: upstream body differs: %d bytes, want %d", chunked, len(c.upBody), len(payload))
		}
	}
}

func TestEngineFailureIs500AndNeverReachesUpstream(t *testing.T) {
	h := &Handler{PolicyFile: examplePolicy}
	provision(t, h)
	h.decideFn = func(req, cert, body, out []byte) (int, error) { return 0, engine.SelftestPanic() }
	c := serve(t, h, chat(t, "alice", `{"model":"llama-3.1-8b-instruct","max_tokens":8}`))
	if c.rec.Code != 500 || c.next {
		t.Fatalf("want 500 without upstream, got %d next=%v", c.rec.Code, c.next)
	}
	if c.errBody["error"]["code"] != "engine_error" {
		t.Errorf("body %v", c.errBody)
	}
}

func TestRequestAfterReleaseFailsClosed(t *testing.T) {
	h := &Handler{PolicyFile: examplePolicy}
	provision(t, h)
	h.eng.Free()
	c := serve(t, h, chat(t, "alice", `{"model":"llama-3.1-8b-instruct","max_tokens":8}`))
	if c.rec.Code != 500 || c.next {
		t.Fatalf("want 500 without upstream, got %d next=%v", c.rec.Code, c.next)
	}
}

// On a reload Caddy cleans the old configuration up while its requests may still be in
// flight: they are decided by their engine as usual, never refused for that.
func TestRequestOutlivingItsConfigurationIsStillDecided(t *testing.T) {
	h := &Handler{PolicyFile: examplePolicy}
	provision(t, h)
	if err := h.Cleanup(); err != nil {
		t.Fatal(err)
	}
	c := serve(t, h, chat(t, "alice", `{"model":"llama-3.1-8b-instruct","max_tokens":8}`))
	if c.rec.Code != 200 || !c.next {
		t.Fatalf("want allowed, got %d %v", c.rec.Code, c.errBody)
	}
	c = serve(t, h, chat(t, "alice", `{"model":"gpt-4o"}`))
	if c.rec.Code != 403 || c.next {
		t.Fatalf("want denied, got %d", c.rec.Code)
	}
}

// Engine references nobody can reach any more are released, without a free call.
func TestUnreachableEnginesAreReleased(t *testing.T) {
	p, err := os.ReadFile(examplePolicy)
	if err != nil {
		t.Fatal(err)
	}
	before := engine.ReleasedUnreachable.Load()
	for i := 0; i < 10; i++ {
		if _, err := engine.New(p, "policy.toml"); err != nil {
			t.Fatal(err)
		}
	}
	// Cleanups run on their own goroutine after a collection: poll, nothing is timed.
	for i := 0; i < 500 && engine.ReleasedUnreachable.Load()-before < 10; i++ {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if got := engine.ReleasedUnreachable.Load() - before; got < 10 {
		t.Errorf("%d of 10 unreachable engines released", got)
	}
	// An engine freed explicitly is not released a second time. Engines of earlier
	// tests' handlers become garbage too: wait until no more are released.
	for stable, last := 0, int64(-1); stable < 5; {
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
		if n := engine.ReleasedUnreachable.Load(); n == last {
			stable++
		} else {
			stable, last = 0, n
		}
	}
	e, err := engine.New(p, "policy.toml")
	if err != nil {
		t.Fatal(err)
	}
	e.Free()
	before = engine.ReleasedUnreachable.Load()
	e = nil
	for i := 0; i < 20; i++ {
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
	if got := engine.ReleasedUnreachable.Load() - before; got != 0 {
		t.Errorf("a freed engine was released again (%d)", got)
	}
}

func TestPanicComesBackAsAnError(t *testing.T) {
	err := engine.SelftestPanic()
	if !errors.Is(err, engine.ErrEngine) || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("got %v", err)
	}
}

func TestBrokenPolicyFailsProvisionNamingTheRule(t *testing.T) {
	h := &Handler{PolicyFile: policyFile(t, "[[rule]]\nname = \"bad-one\"\neffect = \"allow\"\nwhen = 'request.path ==='\n")}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	err := h.Provision(ctx)
	if err == nil || !strings.Contains(err.Error(), `rule "bad-one" when`) || !strings.Contains(err.Error(), "policy.toml:4") {
		t.Fatalf("got %v", err)
	}
}

func TestReloadKeepsBucketsOfUnchangedLimits(t *testing.T) {
	path := policyFile(t, "[[rule]]\nname = \"all\"\neffect = \"allow\"\nwhen = 'true'\n[[limit]]\nname = \"l\"\nrate = \"1/h\"\nburst = 1\n")
	old := &Handler{PolicyFile: path}
	provision(t, old)
	serve(t, old, chat(t, "alice", `{}`))
	if c := serve(t, old, chat(t, "alice", `{}`)); c.rec.Code != 429 {
		t.Fatalf("setup: %d", c.rec.Code)
	}
	// Caddy provisions the new config before it cleans up the old one.
	next := &Handler{PolicyFile: path}
	provision(t, next)
	_ = old.Cleanup()
	if c := serve(t, next, chat(t, "alice", `{}`)); c.rec.Code != 429 {
		t.Fatalf("bucket did not survive the reload: %d", c.rec.Code)
	}
}

func TestDecodeDecisionRefusesTruncatedInput(t *testing.T) {
	h := &Handler{PolicyFile: examplePolicy}
	provision(t, h)
	var f engine.RequestFields
	f.Method, f.Path = "GET", "/v1/models"
	out := make([]byte, 4096)
	n, err := h.eng.Decide(engine.AppendRequestHeaders(engine.AppendRequestFields(nil, &f), nil, ""), cert(t, "alice").Raw, nil, out)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := engine.DecodeDecision(out[:n]); err != nil || !d.Allowed || d.Rule != "list-models" {
		t.Fatalf("%v %+v", err, d)
	}
	for cut := 0; cut < n; cut++ {
		if _, err := engine.DecodeDecision(out[:cut]); err == nil {
			t.Fatalf("accepted a decision cut at %d of %d", cut, n)
		}
	}
}

func TestCaddyfile(t *testing.T) {
	var h Handler
	d := caddyfile.NewTestDispenser(`zt_policy /etc/caddy/policy.toml {
		jwks_file /etc/caddy/jwks.json
		identity_header X-User
		strip_headers X-Auth-Request-User X-Auth-Request-Email
		stream_usage off
	}`)
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if h.PolicyFile != "/etc/caddy/policy.toml" || h.JWKSFile != "/etc/caddy/jwks.json" ||
		h.IdentityHeader != "X-User" || len(h.StripHeaders) != 2 || h.StreamUsage != "off" {
		t.Errorf("%+v", h)
	}
	for _, bad := range []string{"zt_policy", "zt_policy a b", "zt_policy p {\n nope 1\n}", "zt_policy p {\n strip_headers\n}",
		"zt_policy p {\n policy_file q\n}", "zt_policy {\n policy_file p\n policy_file q\n}",
		"zt_policy p {\n strip_headers A\n strip_headers B\n}", "zt_policy p {\n audience a\n audience b\n}",
		"zt_policy p {\n stream_usage maybe\n}", "zt_policy p {\n stream_usage\n}"} {
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	// The same check for JSON configuration ("stream_usage": "maybe").
	if err := (&Handler{StreamUsage: "maybe"}).Validate(); err == nil || !strings.Contains(err.Error(), "stream_usage") {
		t.Errorf("JSON stream_usage maybe: %v", err)
	}
}

func caddyDuration(d time.Duration) caddy.Duration { return caddy.Duration(d) }

// A body shorter than its Content-Length cannot be decided on: 400, never upstream.
func TestBodyShorterThanDeclaredIs400(t *testing.T) {
	h := &Handler{PolicyFile: examplePolicy}
	provision(t, h)
	r := chat(t, "alice", `{"model":"qwen2.5-7b-instruct"}`)
	r.ContentLength = 4096
	c := serve(t, h, r)
	if c.rec.Code != 400 || c.next || c.errBody["error"]["code"] != "bad_request" {
		t.Fatalf("got %d next=%v %v", c.rec.Code, c.next, c.errBody)
	}
}

// TestRE2CasesAreGoRegexp checks the table the engine's matches() is tested against
// (rust/core/tests/fixtures/re2_cases.json) row by row with Go's regexp, the RE2
// implementation cel-go uses, so the recorded answers are RE2's.
func TestRE2CasesAreGoRegexp(t *testing.T) {
	b, err := os.ReadFile("../rust/core/tests/fixtures/re2_cases.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases []struct {
		Pattern string `json:"pattern"`
		Input   string `json:"input"`
		Match   *bool  `json:"match"`
	}
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		re, err := regexp.Compile(c.Pattern)
		switch {
		case c.Match == nil && err == nil:
			t.Errorf("%q: recorded as refused, Go compiles it", c.Pattern)
		case c.Match != nil && err != nil:
			t.Errorf("%q: recorded as valid, Go refuses it: %v", c.Pattern, err)
		case c.Match != nil && re.MatchString(c.Input) != *c.Match:
			t.Errorf("%q on %q: recorded %v", c.Pattern, c.Input, *c.Match)
		}
	}
}

// Bodies are read into pooled buffers that go back when the proxy closes the body (or
// at once when the request is denied): under concurrency every upstream still gets
// its own body, byte for byte, never another request's.
func TestPooledBodiesNeverMix(t *testing.T) {
	h := &Handler{PolicyFile: policyFile(t, raisedExamplePolicy()), JWKSFile: "../examples/policy/idp/jwks.json"}
	provision(t, h)
	h.logger = zap.NewNop()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				model := "llama-3.1-8b-instruct"
				if i%3 == 0 {
					model = "gpt-4o" // denied: its buffer is released at once
				}
				body := fmt.Sprintf(`{"model":%q,"max_tokens":8,"messages":[{"role":"user","content":"g%d-i%d %s"}]}`,
					model, g, i, strings.Repeat("x", (g*997+i*131)%9000))
				r := chat(t, "alice", body)
				rec := httptest.NewRecorder()
				next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
					got, err := io.ReadAll(r.Body)
					_ = r.Body.Close()
					if err == nil && string(got) != body {
						err = fmt.Errorf("g%d i%d: upstream got another body", g, i)
					}
					return err
				})
				if err := h.ServeHTTP(rec, r, next); err != nil {
					errs <- err
					return
				}
				if want := map[bool]int{true: 403, false: 200}[i%3 == 0]; rec.Code != want {
					errs <- fmt.Errorf("g%d i%d: status %d", g, i, rec.Code)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Inline policies are pooled by their text: a reload of the same text keeps the
// buckets, another site's different inline policy never takes them over.
func TestInlinePoliciesShareBucketsOnlyWhenEqual(t *testing.T) {
	limited := "[[rule]]\nname = \"all\"\neffect = \"allow\"\nwhen = 'true'\n[[limit]]\nname = \"l\"\nrate = \"1/h\"\nburst = 1\n"
	site1 := &Handler{Policy: limited}
	provision(t, site1)
	serve(t, site1, chat(t, "alice", `{}`))
	if c := serve(t, site1, chat(t, "alice", `{}`)); c.rec.Code != 429 {
		t.Fatalf("setup: %d", c.rec.Code)
	}
	// Another site, another inline policy with the same limit: its own, full bucket.
	site2 := &Handler{Policy: limited + "# another site\n"}
	provision(t, site2)
	if c := serve(t, site2, chat(t, "alice", `{}`)); c.rec.Code != 200 {
		t.Fatalf("another inline policy took over the first one's bucket: %d", c.rec.Code)
	}
	// A reload of the first site's text keeps its (empty) bucket.
	reloaded := &Handler{Policy: limited}
	provision(t, reloaded)
	if c := serve(t, reloaded, chat(t, "alice", `{}`)); c.rec.Code != 429 {
		t.Fatalf("bucket did not survive the reload: %d", c.rec.Code)
	}
}
