package ztpolicy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/zt-policy/zt-policy/go-module/internal/engine"
)

// chunks writes b to w in pieces cut at random places (single bytes included).
func chunks(rng *rand.Rand, w io.Writer, b []byte) {
	for len(b) > 0 {
		n := 1 + rng.IntN(min(len(b), 1+rng.IntN(40)))
		_, _ = w.Write(b[:n])
		b = b[n:]
	}
}

// randomJSON is a JSON value with the words readers trip on: "usage" and "choices" in
// strings, nested, escaped.
func randomJSON(rng *rand.Rand, depth int) any {
	words := []string{"usage", "choices", `"usage":{"total_tokens":1}`, `\"`, "x", "é", "}", "{", "[]"}
	switch k := rng.IntN(7); {
	case depth > 2 || k == 0:
		return words[rng.IntN(len(words))]
	case k == 1:
		return rng.IntN(1000)
	case k == 2:
		return nil
	case k == 3:
		l := make([]any, rng.IntN(3))
		for i := range l {
			l[i] = randomJSON(rng, depth+1)
		}
		return l
	default:
		m := map[string]any{}
		for range rng.IntN(4) {
			m[words[rng.IntN(len(words))]] = randomJSON(rng, depth+1)
		}
		return m
	}
}

// randomResponse writes a top-level object by hand (so keys may repeat, as a sloppy
// upstream could send them) with a usage member somewhere, or none.
func randomResponse(rng *rand.Rand) []byte {
	var b bytes.Buffer
	b.WriteString("{")
	members := 1 + rng.IntN(6)
	for i := range members {
		if i > 0 {
			b.WriteString(strings.Repeat(" ", rng.IntN(2)) + ",\n"[:1+rng.IntN(2)])
		}
		var key string
		var val any
		switch rng.IntN(4) {
		case 0:
			key = "usage"
			switch rng.IntN(5) {
			case 0:
				val = nil
			case 1:
				val = map[string]any{"prompt_tokens": rng.IntN(1e6)}
			case 2:
				// Counts in the forms a reader may take another way.
				odd := []string{"1.0", "-3", "null", `"7"`, "1e2", "0", "18446744073709551615",
					"18446744073709551616", "9223372036854775808", "true", "[]", "{}"}
				val = map[string]any{
					"prompt_tokens":     json.RawMessage(odd[rng.IntN(len(odd))]),
					"completion_tokens": json.RawMessage(odd[rng.IntN(len(odd))]),
					"total_tokens":      rng.IntN(100),
				}
			default:
				p, c := rng.IntN(1e6), rng.IntN(1e6)
				val = map[string]any{"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
					"prompt_tokens_details": randomJSON(rng, 1)}
			}
		case 1:
			key = "choices"
			val = randomJSON(rng, 1)
		default:
			key = fmt.Sprint(randomJSON(rng, 3))
			val = randomJSON(rng, 0)
		}
		k, _ := json.Marshal(key)
		v, _ := json.Marshal(val)
		fmt.Fprintf(&b, "%s%s:%s%s", k, strings.Repeat(" ", rng.IntN(2)), strings.Repeat("\t", rng.IntN(2)), v)
	}
	b.WriteString("}\n")
	return b.Bytes()
}

// wantUsage is what encoding/json reads as the top-level usage.
func wantUsage(t *testing.T, doc []byte) *engine.Usage {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(doc, &m); err != nil {
		t.Fatalf("generated %q: %v", doc, err)
	}
	raw, ok := m["usage"]
	if !ok {
		return nil
	}
	var c usageCounts
	if json.Unmarshal(raw, &c) != nil || (c.PromptTokens == nil && c.CompletionTokens == nil && c.TotalTokens == nil) {
		return nil
	}
	v := func(p *uint64) uint64 {
		if p == nil {
			return engine.UsageAbsent
		}
		return *p
	}
	return &engine.Usage{Prompt: v(c.PromptTokens), Completion: v(c.CompletionTokens), Total: v(c.TotalTokens)}
}

// found is what a writer's finish reports, as a pointer (nil: no usage).
func found(u engine.Usage, ok bool) *engine.Usage {
	if !ok {
		return nil
	}
	return &u
}

func sameUsage(a, b *engine.Usage) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func TestJSONUsageIsReadAsEncodingJSONReadsItWhateverTheChunks(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, uint64(testing.AllocsPerRun(1, func() {}))+17))
	for i := range 3000 {
		doc := randomResponse(rng)
		rec := httptest.NewRecorder()
		rec.Header().Set("Content-Type", "application/json")
		uw := newUsageWriter(rec, false)
		chunks(rng, uw, doc)
		got := found(uw.finish())
		if want := wantUsage(t, doc); !sameUsage(got, want) {
			t.Fatalf("case %d: %s\ngot %+v, want %+v", i, doc, got, want)
		}
		if !bytes.Equal(rec.Body.Bytes(), doc) {
			t.Fatalf("case %d: the body changed on the way", i)
		}
	}
}

// randomStream is an SSE stream as vLLM writes it: content chunks, then (maybe) a
// usage-only chunk, then [DONE]; line ends LF or CRLF, comments and other fields
// between. Returns the stream, the stream without its usage-only event, and the usage.
func randomStream(rng *rand.Rand, withUsage bool) (full, stripped []byte, usage *engine.Usage) {
	nl := "\n"
	if rng.IntN(4) == 0 {
		nl = "\r\n"
	}
	var a, b bytes.Buffer
	event := func(lines ...string) string { return strings.Join(lines, nl) + nl + nl }
	both := func(s string) { a.WriteString(s); b.WriteString(s) }
	for i := range rng.IntN(6) {
		chunk, _ := json.Marshal(map[string]any{"id": "c", "object": "chat.completion.chunk",
			"choices": []any{map[string]any{"index": 0, "delta": map[string]any{"content": randomJSON(rng, 3)}}},
			"usage":   nil})
		lines := []string{"data: " + string(chunk)}
		if rng.IntN(5) == 0 {
			lines = append([]string{": keep-alive", fmt.Sprintf("id: %d", i)}, lines...)
		}
		both(event(lines...))
	}
	if withUsage {
		p, c := uint64(rng.IntN(5000)), uint64(rng.IntN(5000))
		tot := p + c
		usage = &engine.Usage{Prompt: p, Completion: c, Total: tot}
		chunk, _ := json.Marshal(map[string]any{"id": "c", "object": "chat.completion.chunk", "choices": []any{},
			"usage": map[string]any{"prompt_tokens": p, "completion_tokens": c, "total_tokens": tot}})
		a.WriteString(event("data:" + strings.Repeat(" ", rng.IntN(2)) + string(chunk)))
	}
	both(event("data: [DONE]"))
	return a.Bytes(), b.Bytes(), usage
}

func TestStreamUsageIsReadAndStrippedWhateverTheChunks(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 3))
	for i := range 3000 {
		withUsage := rng.IntN(4) != 0
		full, stripped, want := randomStream(rng, withUsage)
		for _, strip := range []bool{false, true} {
			rec := httptest.NewRecorder()
			rec.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
			uw := newUsageWriter(rec, strip)
			chunks(rng, uw, full)
			got := found(uw.finish())
			if !sameUsage(got, want) {
				t.Fatalf("case %d (strip %v): usage %+v, want %+v\n%q", i, strip, got, want, full)
			}
			wantBody := full
			if strip {
				wantBody = stripped
			}
			if !bytes.Equal(rec.Body.Bytes(), wantBody) {
				t.Fatalf("case %d (strip %v): client got\n%q\nwant\n%q", i, strip, rec.Body.Bytes(), wantBody)
			}
		}
	}
}

func TestAnUnfinishedEventIsStillDeliveredInStripMode(t *testing.T) {
	rec := httptest.NewRecorder()
	rec.Header().Set("Content-Type", "text/event-stream")
	uw := newUsageWriter(rec, true)
	_, _ = uw.Write([]byte("data: {\"choices\":[{\"delta\":{}}]}\n\ndata: {\"cho"))
	if got := rec.Body.String(); got != "data: {\"choices\":[{\"delta\":{}}]}\n\n" {
		t.Fatalf("a whole event must pass at its end: %q", got)
	}
	if _, ok := uw.finish(); ok {
		t.Fatal("no usage in this stream")
	}
	if !strings.HasSuffix(rec.Body.String(), "data: {\"cho") {
		t.Fatalf("what was held must be written at the end: %q", rec.Body.String())
	}
}

// allowAllByHeader is the start of test policies: every request allowed, the
// identity taken from the X-User header.
const allowAllByHeader = `
[settings]
require_identity = false
identity = 'request.headers["x-user"]'
[[rule]]
name = "all"
effect = "allow"
when = 'true'
`

const settlePolicy = allowAllByHeader + `[[limit]]
name = "tokens"
rate = "1000/h"
burst = 1000
cost = 'llm.max_output_tokens + llm.estimated_prompt_tokens'
settle = "usage"
[[concurrency]]
name = "streams"
max = 2
`

// settleRequest reserves 96 + 4 = 100 tokens (16 bytes of prompt text).
func settleRequest(user string, extra string) *http.Request {
	body := `{"model":"m","max_tokens":96,"messages":[{"role":"user","content":"0123456789ab"}]` + extra + `}`
	r := httptest.NewRequest("POST", "https://ai.example.internal/v1/chat/completions", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("X-User", user)
	return r
}

// remainingAfterProbe is the budget left, as the next request's RateLimit header
// reports it, before that request's own reservation (5 = 1 + 4).
func remainingAfterProbe(t *testing.T, h *Handler, user string) int {
	t.Helper()
	r := httptest.NewRequest("POST", "https://ai.example.internal/v1/chat/completions",
		strings.NewReader(`{"max_tokens":1,"messages":[{"role":"user","content":"0123456789ab"}]}`))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("X-User", user)
	rec := httptest.NewRecorder()
	err := h.ServeHTTP(rec, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		w.WriteHeader(http.StatusBadRequest) // refused upstream: the probe is refunded
		return nil
	}))
	if err != nil || rec.Code != http.StatusBadRequest {
		t.Fatalf("probe: %v %d %s", err, rec.Code, rec.Body)
	}
	var left int
	if _, err := fmt.Sscanf(strings.SplitN(rec.Header().Get("RateLimit"), ";r=", 2)[1], "%d", &left); err != nil {
		t.Fatalf("RateLimit %q: %v", rec.Header().Get("RateLimit"), err)
	}
	return left + 5
}

func TestEveryWayAResponseEndsSettlesByItsRule(t *testing.T) {
	usageJSON := `{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":4,"completion_tokens":26,"total_tokens":30}}`
	usageSSE := "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n" +
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":26,\"total_tokens\":30}}\n\ndata: [DONE]\n\n"
	reply := func(status int, ct, body string) func(http.ResponseWriter, *http.Request) error {
		return func(w http.ResponseWriter, _ *http.Request) error {
			w.Header().Set("Content-Type", ct)
			w.WriteHeader(status)
			_, _ = io.WriteString(w, body)
			return nil
		}
	}
	cases := []struct {
		name   string
		next   func(http.ResponseWriter, *http.Request) error
		cancel bool
		left   int // budget left afterwards
	}{
		{"json usage settles to it", reply(200, "application/json", usageJSON), false, 970},
		{"streamed usage settles to it", reply(200, "text/event-stream", usageSSE), false, 970},
		{"an error status without usage is refunded", reply(400, "application/json", `{"error":{}}`), false, 1000},
		{"no connection (502 error) is refunded", func(http.ResponseWriter, *http.Request) error {
			return caddyhttp.Error(http.StatusBadGateway, errors.New("dial tcp: connection refused"))
		}, false, 1000},
		{"a timeout keeps the reservation", reply(504, "application/json", `{"error":{}}`), false, 900},
		{"a 200 without usage keeps it", reply(200, "application/json", `{"choices":[]}`), false, 900},
		{"a compressed body keeps it", func(w http.ResponseWriter, _ *http.Request) error {
			w.Header().Set("Content-Encoding", "gzip")
			return reply(200, "application/json", usageJSON)(w, nil)
		}, false, 900},
		{"a client gone mid-stream keeps it", reply(200, "text/event-stream", "data: {\"choices\":[{}]}\n\n"), true, 900},
		{"an upstream error mid-response keeps it", func(w http.ResponseWriter, r *http.Request) error {
			_ = reply(200, "text/event-stream", "data: {\"choices\":[{}]}\n\n")(w, r)
			return caddyhttp.Error(http.StatusBadGateway, io.ErrUnexpectedEOF)
		}, false, 900},
	}
	h := &Handler{PolicyFile: policyFile(t, settlePolicy)}
	provision(t, h)
	for i, c := range cases {
		user := fmt.Sprintf("u%d", i)
		r := settleRequest(user, "")
		if c.cancel {
			ctx, cancel := context.WithCancel(r.Context())
			r = r.WithContext(ctx)
			cancel()
		}
		_ = h.ServeHTTP(httptest.NewRecorder(), r, caddyhttp.HandlerFunc(c.next))
		if got := remainingAfterProbe(t, h, user); got != c.left {
			t.Errorf("%s: %d tokens left, want %d", c.name, got, c.left)
		}
	}
	if n := testutil.ToFloat64(inFlight); n != 0 {
		t.Fatalf("requests in flight after all ended: %v", n)
	}
}

func TestAPanicFurtherOnStillEndsTheLease(t *testing.T) {
	h := &Handler{PolicyFile: policyFile(t, settlePolicy)}
	provision(t, h)
	for range 3 { // more than the cap of 2: each panic must give its slot back
		func() {
			defer func() {
				if recover() == nil {
					t.Fatal("the panic must go on to Caddy's recovery")
				}
			}()
			_ = h.ServeHTTP(httptest.NewRecorder(), settleRequest("p", ""), caddyhttp.HandlerFunc(
				func(http.ResponseWriter, *http.Request) error { panic("boom") }))
		}()
	}
	if got := remainingAfterProbe(t, h, "p"); got != 700 {
		t.Fatalf("a panic keeps the reservation: %d left, want 700", got)
	}
}

func TestAStreamWithoutUsageGetsItAddedAndTheClientDoesNotSeeIt(t *testing.T) {
	h := &Handler{PolicyFile: policyFile(t, settlePolicy)}
	provision(t, h)
	var upstream []byte
	var upLen int64
	next := func(w http.ResponseWriter, r *http.Request) error {
		upstream, _ = io.ReadAll(r.Body)
		upLen = r.ContentLength
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"+
			"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":6,\"total_tokens\":10}}\n\n"+
			"data: [DONE]\n\n")
		return nil
	}
	rec := httptest.NewRecorder()
	if err := h.ServeHTTP(rec, settleRequest("s", `,"stream":true`), caddyhttp.HandlerFunc(next)); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(upstream, &got); err != nil {
		t.Fatalf("upstream body %q: %v", upstream, err)
	}
	if so, _ := got["stream_options"].(map[string]any); so["include_usage"] != true || got["stream"] != true {
		t.Fatalf("upstream body: %s", upstream)
	}
	if upLen != int64(len(upstream)) {
		t.Fatalf("Content-Length %d for a body of %d", upLen, len(upstream))
	}
	if strings.Contains(rec.Body.String(), "usage") || !strings.Contains(rec.Body.String(), "[DONE]") {
		t.Fatalf("client got %q", rec.Body.String())
	}
	if left := remainingAfterProbe(t, h, "s"); left != 990 {
		t.Fatalf("%d left, want 990", left)
	}
	// A chunked body (wrapped against trailers) gets it added too.
	chunked := settleRequest("s4", `,"stream":true`)
	chunked.ContentLength = -1
	chunked.Header.Del("Content-Length")
	if err := h.ServeHTTP(httptest.NewRecorder(), chunked, caddyhttp.HandlerFunc(next)); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(upstream), `"stream":true,"stream_options":{"include_usage":true}}`) || upLen != -1 {
		t.Fatalf("chunked upstream body %s (length %d)", upstream, upLen)
	}
	// A client that asked for usage gets it, and nothing is added.
	rec = httptest.NewRecorder()
	_ = h.ServeHTTP(rec, settleRequest("s2", `,"stream":true,"stream_options":{"include_usage":true}`), caddyhttp.HandlerFunc(next))
	if !strings.Contains(rec.Body.String(), `"usage"`) || strings.Count(string(upstream), "stream_options") != 1 {
		t.Fatalf("client asked for usage: got %q, upstream %s", rec.Body.String(), upstream)
	}
	// stream_usage off: nothing added, nothing removed.
	off := &Handler{PolicyFile: policyFile(t, settlePolicy), StreamUsage: "off"}
	provision(t, off)
	_ = off.ServeHTTP(httptest.NewRecorder(), settleRequest("s3", `,"stream":true`), caddyhttp.HandlerFunc(next))
	if strings.Contains(string(upstream), "stream_options") {
		t.Fatalf("stream_usage off must leave the body alone: %s", upstream)
	}
}

func TestTheConcurrencyCapIs429AndFreesWithTheResponse(t *testing.T) {
	h := &Handler{PolicyFile: policyFile(t, settlePolicy)}
	provision(t, h)
	release := make(chan struct{})
	entered := make(chan struct{}, 2)
	done := make(chan struct{}, 2)
	for range 2 {
		go func() {
			_ = h.ServeHTTP(httptest.NewRecorder(), settleRequest("c", ""), caddyhttp.HandlerFunc(
				func(w http.ResponseWriter, _ *http.Request) error {
					entered <- struct{}{}
					<-release
					w.WriteHeader(200)
					return nil
				}))
			done <- struct{}{}
		}()
	}
	<-entered
	<-entered
	rec := httptest.NewRecorder()
	_ = h.ServeHTTP(rec, settleRequest("c", ""), caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		t.Error("a third request must not pass")
		return nil
	}))
	var body map[string]map[string]any
	_ = json.Unmarshal(rec.Body.Bytes(), &body)
	if rec.Code != 429 || body["error"]["code"] != "concurrency_limit" || rec.Header().Get("Retry-After") != "1" ||
		rec.Header().Get("RateLimit") != `"streams";r=0;t=1` || rec.Header().Get("RateLimit-Policy") != `"streams";q=2` {
		t.Fatalf("third: %d %v %v", rec.Code, rec.Header(), body)
	}
	close(release)
	<-done
	<-done
	if n := testutil.ToFloat64(inFlight); n != 0 {
		t.Fatalf("in flight: %v", n)
	}
	rec = httptest.NewRecorder()
	_ = h.ServeHTTP(rec, settleRequest("c", ""), caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		w.WriteHeader(200)
		return nil
	}))
	if rec.Code != 200 {
		t.Fatalf("after the two ended: %d", rec.Code)
	}
}
