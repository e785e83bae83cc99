package ztpolicy

import (
	"net/http"
	"os"
	"testing"

	"github.com/zt-policy/zt-policy/go-module/internal/engine"
)

// benchRequest is the request the engine benchmarks decide: its fields, and its
// headers as net/http hands them to the handler.
type benchRequest struct {
	fields  engine.RequestFields
	headers http.Header
}

func newBenchRequest() *benchRequest {
	return &benchRequest{
		fields: engine.RequestFields{Method: "POST", Scheme: "https", Host: "ai.example.internal",
			Path: "/v1/chat/completions", RemoteIP: "10.0.0.7", BodySize: 100},
		headers: http.Header{"Content-Type": {"application/json"}, "User-Agent": {"OpenAI/Python 1.99.0"},
			"Accept": {"application/json"}, "Accept-Encoding": {"gzip"}},
	}
}

// appendTo appends the flat encoding of ztp_engine_decide, as the handler does.
func (r *benchRequest) appendTo(buf []byte) []byte {
	return engine.AppendRequestHeaders(engine.AppendRequestFields(buf, &r.fields), r.headers, r.fields.Host)
}

var benchBody = []byte(`{"model":"llama-3.1-8b-instruct","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}`)

func benchEngine(b *testing.B) *engine.Engine {
	p, err := os.ReadFile(examplePolicy)
	if err != nil {
		b.Fatal(err)
	}
	e, err := engine.New(p, "policy.toml")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(e.Free)
	return e
}

// One decision of the example policy across cgo: encoding the request and the call.
func BenchmarkDecideFlat(b *testing.B) {
	e := benchEngine(b)
	r, der, out := newBenchRequest(), cert(b, "bob").Raw, make([]byte, 4096)
	buf := make([]byte, 0, 2048)
	b.ReportAllocs()
	for b.Loop() {
		buf = r.appendTo(buf[:0])
		if _, err := e.Decide(buf, der, benchBody, out); err != nil {
			b.Fatal(err)
		}
	}
}

// The cgo crossing alone: a call that returns at once.
func BenchmarkCgoCrossing(b *testing.B) {
	e := benchEngine(b)
	out := make([]byte, 16)
	for b.Loop() {
		_, _ = e.Decide(nil, nil, nil, out)
	}
}

// endLease ends the lease an encoded decision holds (its reservations kept), as the
// handler does when the response is done: a benchmark that decides again and again
// must not pile leases up.
func endLease(b *testing.B, e *engine.Engine, decision []byte) {
	d, err := engine.DecodeDecision(decision)
	if err != nil {
		b.Fatal(err)
	}
	if d.HasLease {
		if _, err := e.Settle(d.Lease, engine.EndKeep, engine.NoUsage); err != nil {
			b.Fatal(err)
		}
	}
}

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
