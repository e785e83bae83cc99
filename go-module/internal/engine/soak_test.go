package engine

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// TestSoakDecisionsThroughTheFFI runs 64 goroutines deciding at once through one engine
// (allows, denials, limits, malformed bodies, bad encodings), while a second engine is
// cloned and released over and over, and checks the process's RSS stays flat. Under
// the race detector it is also the data-race test of the cgo layer. ZTP_SOAK_DECISIONS
// sets the decisions per goroutine: 2,000 in `make test`, 100,000 in `make soak`.
func TestSoakDecisionsThroughTheFFI(t *testing.T) {
	perGoroutine := 2000
	if v := os.Getenv("ZTP_SOAK_DECISIONS"); v != "" {
		perGoroutine, _ = strconv.Atoi(v)
	}
	// Identities from a header, so the 64 goroutines spread over 64,000 of them and the
	// limit table grows, refills and is swept while they decide.
	policy := []byte(`
[settings]
require_identity = false
identity = 'request.headers["x-user"]'
[[rule]]
name = "chat"
effect = "allow"
when = 'request.path == "/v1/chat/completions" && has(llm.model) && "ml-users" in cert.subject.ou'
[[rule]]
name = "no-gpt"
effect = "deny"
when = 'llm.model == "gpt-4o"'
[[limit]]
name = "per-user"
rate = "10/s"
burst = 5
cost = 'has(llm.max_output_tokens) && llm.max_output_tokens < 5 ? llm.max_output_tokens : 1'
`)
	e, err := New(policy, "soak.toml")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Free()
	pemBytes, err := os.ReadFile("../../../examples/policy/certs/alice.pem")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemBytes)
	if _, err := x509.ParseCertificate(block.Bytes); err != nil {
		t.Fatal(err)
	}
	cert := block.Bytes
	bodies := []string{
		`{"model":"llama-3.1-8b-instruct","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"gpt-4o","max_tokens":16}`,
		`{"model":"llama-3.1-8b-instruct","model":"x"}`,
		`{"model":"llama-3.1-8b-instruct","max_tokens":99999}`,
	}
	decide := func(g, i int, out []byte) (Decision, error) {
		body := []byte(bodies[i%len(bodies)])
		h := http.Header{"Content-Type": {"application/json"}, "X-User": {fmt.Sprintf("u%d-%d", g, i%1000)}}
		f := RequestFields{Method: "POST", Scheme: "https", Host: "ai.example.internal",
			Path: "/v1/chat/completions", RemoteIP: fmt.Sprintf("10.0.%d.%d", g, i%200), BodySize: uint64(len(body))}
		req := AppendRequestHeaders(AppendRequestFields(nil, &f), h, f.Host)
		if i%97 == 0 {
			req = req[:len(req)/2] // a broken encoding: ZTP_INVALID_INPUT, never a pass
		}
		n, err := e.Decide(req, cert, body, out)
		if err != nil {
			return Decision{}, err
		}
		return DecodeDecision(out[:n])
	}

	rss := func() int {
		b, _ := os.ReadFile("/proc/self/status")
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "VmRSS:") {
				kib, _ := strconv.Atoi(strings.Fields(line)[1])
				return kib
			}
		}
		return 0
	}
	run := func(n int) (allowed, denied, refused int) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for g := 0; g < 64; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out := make([]byte, 8192)
				a, d, r := 0, 0, 0
				for i := 0; i < n; i++ {
					if g == 0 && i%50 == 0 {
						c := e.Clone() // references come and go while others decide
						c.Free()
					}
					dec, err := decide(g, i, out)
					switch {
					case err != nil:
						r++
					case dec.Allowed:
						a++
					default:
						d++
					}
				}
				mu.Lock()
				allowed, denied, refused = allowed+a, denied+d, refused+r
				mu.Unlock()
			}()
		}
		wg.Wait()
		return
	}
	run(max(perGoroutine/10, 100)) // warm up: caches, pools, the limit table
	runtime.GC()
	start := rss()
	allowed, denied, refused := run(perGoroutine)
	runtime.GC()
	end := rss()
	t.Logf("64 goroutines × %d decisions: %d allowed, %d denied, %d refused encodings; RSS %d KiB at the start, %d KiB at the end",
		perGoroutine, allowed, denied, refused, start, end)
	if allowed == 0 || denied == 0 || refused == 0 {
		t.Fatalf("every kind of outcome should occur: %d allowed, %d denied, %d refused", allowed, denied, refused)
	}
	if grew := end - start; grew > 64<<10 {
		t.Fatalf("RSS grew %d KiB over %d decisions", grew, 64*perGoroutine)
	}
}
