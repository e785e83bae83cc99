package ztpolicy

import (
	"encoding/binary"
	"os"
	"testing"
)

// The two ways of handing a request across cgo, measured on the same request: the
// flat buffer (what the handler uses) and a C struct of pinned Go pointers.
func benchFields() *requestFields {
	return &requestFields{
		method: "POST", scheme: "https", host: "ai.example.internal", path: "/v1/chat/completions",
		remoteIP: "10.0.0.7", bodySize: 100,
		headers: [][2]string{{"Content-Type", "application/json"}, {"User-Agent", "OpenAI/Python 1.99.0"},
			{"Accept", "application/json"}, {"Accept-Encoding", "gzip"}, {"Host", "ai.example.internal"}},
	}
}

// appendRequest appends the flat encoding of ztp_engine_decide to buf, headers from
// f.headers (the handler encodes http.Header directly, appendRequestHeaders):
// version, body size, six strings, then the headers; strings are u32-length-prefixed.
func appendRequest(buf []byte, f *requestFields) []byte {
	buf = appendRequestFields(buf, f)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(f.headers)))
	for _, h := range f.headers {
		buf = appendString(buf, h[0])
		buf = appendString(buf, h[1])
	}
	return buf
}

var benchBody = []byte(`{"model":"llama-3.1-8b-instruct","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}`)

func benchEngine(b *testing.B) *engine {
	p, err := os.ReadFile(examplePolicy)
	if err != nil {
		b.Fatal(err)
	}
	e, err := newEngine(p, "policy.toml")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(e.free)
	return e
}

func BenchmarkDecideFlat(b *testing.B) {
	e := benchEngine(b)
	f, der, out := benchFields(), cert(b, "bob").Raw, make([]byte, 4096)
	buf := make([]byte, 0, 2048)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendRequest(buf[:0], f)
		if _, err := e.decide(buf, der, benchBody, out); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecideStruct(b *testing.B) {
	e := benchEngine(b)
	f, der, out := benchFields(), cert(b, "bob").Raw, make([]byte, 4096)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.decideStruct(f, der, benchBody, out); err != nil {
			b.Fatal(err)
		}
	}
}

// The cgo crossing alone: a call that returns at once.
func BenchmarkCgoCrossing(b *testing.B) {
	e := benchEngine(b)
	out := make([]byte, 16)
	for b.Loop() {
		_, _ = e.decide(nil, nil, nil, out)
	}
}

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
