package ztpolicy

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The whole handler in-process, no network, two goroutines: what zt_policy adds to a
// request in Caddy (less the log line, which goes to a no-op logger here).
func benchServe(b *testing.B, policy string, body string, jwks string) {
	h := &Handler{PolicyFile: policy, JWKSFile: jwks}
	provision(b, h)
	// Decision log lines are part of the cost, but not of the benchmark's output.
	h.logger = zap.NewNop()
	der := cert(b, "alice")
	// Like reverse_proxy, the next handler reads the body to its end and closes it.
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		_, err := io.Copy(io.Discard, r.Body)
		_ = r.Body.Close()
		return err
	})
	serveParallel(b, h, der, body, next)
}

// serveParallel sends chat requests with body from alice's device through h, from
// every goroutine of RunParallel; each must get a 200.
func serveParallel(b *testing.B, h *Handler, der *x509.Certificate, body string, next caddyhttp.Handler) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r := httptest.NewRequest("POST", "https://ai.example.internal/v1/chat/completions", strings.NewReader(body))
			r.Header.Set("Content-Type", "application/json")
			r.Header.Set("User-Agent", "OpenAI/Python 1.99.0")
			r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{der}}
			w := httptest.NewRecorder()
			if err := h.ServeHTTP(w, r, next); err != nil || w.Code != 200 {
				b.Errorf("%v %d %s", err, w.Code, w.Body)
				return
			}
		}
	})
}

// raisedExamplePolicy is the example policy with its limits raised so far that every
// iteration of a benchmark is allowed and still checks both limits.
func raisedExamplePolicy() string {
	policy := string(must(readFile(examplePolicy)))
	for _, r := range [][2]string{{`rate = "120/m"`, `rate = "1000000/s"`}, {"burst = 20\n", "burst = 100000000\n"},
		{"max = 4\n", "max = 1000000\n"},
		{`rate = "500000/h"`, `rate = "1000000000/s"`}, {"burst = 131072", "burst = 100000000"},
		// The same expression, but a 1 MiB prompt must not run the bucket dry.
		{`cost = 'llm.max_output_tokens + llm.estimated_prompt_tokens'`, `cost = 'llm.max_output_tokens + llm.estimated_prompt_tokens / 1000000'`}} {
		if !strings.Contains(policy, r[0]) {
			panic("the example policy no longer has " + r[0])
		}
		policy = strings.ReplaceAll(policy, r[0], r[1])
	}
	return policy
}

// oneRulePolicy allows everything with one rule: the module's floor.
const oneRulePolicy = "[settings]\nrequire_identity = false\n[[rule]]\nname = \"all\"\neffect = \"allow\"\nwhen = 'true'\n"

func BenchmarkServeHTTPExamplePolicy(b *testing.B) {
	p := policyFile(b, raisedExamplePolicy())
	benchServe(b, p, string(benchBody), "../examples/policy/idp/jwks.json")
}

// chatBody is a chat request of about size bytes: a system prompt, then user and
// assistant turns of prose (some non-ASCII, some escapes), as long prompts are.
func chatBody(size int) string {
	prose := "Zero trust means every hop is verified: the edge checks the device certificate, " +
		"the token's signature and audience, and the request itself — “quotes”, naïve café, " +
		`tabs\tand \"escapes\" included` + " — before vLLM sees a byte. "
	msgs := []string{`{"role":"system","content":"You are a careful assistant."}`}
	for n, turn := 200, 0; n < size; turn++ {
		role := [2]string{"user", "assistant"}[turn%2]
		content := strings.Repeat(prose, min(size-n, 8192)/len(prose)+1)[:min(size-n, 8192)]
		content = strings.ToValidUTF8(content, "")
		m := `{"role":"` + role + `","content":"` + strings.TrimSuffix(content, "\\") + `"}`
		n += len(m) + 1
		msgs = append(msgs, m)
	}
	return `{"model":"llama-3.1-8b-instruct","max_tokens":256,"stream":true,"temperature":0.2,"messages":[` +
		strings.Join(msgs, ",") + `]}`
}

// The handler with realistic body sizes (the policy's max_body raised to 2MiB).
func BenchmarkServeHTTPBody(b *testing.B) {
	policy := strings.Replace(raisedExamplePolicy(), `max_body = "256KiB"`, `max_body = "2MiB"`, 1)
	p := policyFile(b, policy)
	for _, size := range []struct {
		name string
		n    int
	}{{"1KiB", 1 << 10}, {"64KiB", 64 << 10}, {"1MiB", 1 << 20}} {
		body := chatBody(size.n)
		b.Run(size.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			benchServe(b, p, body, "../examples/policy/idp/jwks.json")
		})
	}
}

func BenchmarkServeHTTPTrivialPolicy(b *testing.B) {
	p := policyFile(b, oneRulePolicy)
	benchServe(b, p, string(benchBody), "")
}

// What settling a token budget costs a response, plain and streamed: the example
// policy as shipped (its budget settles) against the same without `settle`. The next
// handler answers as vLLM does; log lines go through a real JSON encoder to nowhere,
// so the settle line's cost counts.
func BenchmarkServeHTTPSettle(b *testing.B) {
	plain := `{"id":"c","object":"chat.completion","created":0,"model":"llama-3.1-8b-instruct",` +
		`"choices":[{"index":0,"message":{"role":"assistant","content":"Verify every hop."},"finish_reason":"stop"}],` +
		`"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}`
	var stream strings.Builder
	for _, w := range []string{"Verify", " every", " hop", ",", " every", " time", ",", " always."} {
		stream.WriteString(`data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"llama-3.1-8b-instruct",` +
			`"choices":[{"index":0,"delta":{"content":"` + w + `"},"finish_reason":null}]}` + "\n\n")
	}
	stream.WriteString(`data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"llama-3.1-8b-instruct",` +
		`"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":8,"total_tokens":17}}` + "\n\ndata: [DONE]\n\n")
	settled := raisedExamplePolicy()
	if !strings.Contains(settled, "settle = \"usage\"\n") {
		b.Fatal("the example policy's budget no longer settles")
	}
	policies := map[string]string{"no-settle": strings.Replace(settled, "settle = \"usage\"\n", "", 1), "settle": settled}
	for _, kind := range []string{"plain", "streamed-asked", "streamed-added"} {
		for _, name := range []string{"no-settle", "settle"} {
			b.Run(kind+"/"+name, func(b *testing.B) {
				h := &Handler{PolicyFile: policyFile(b, policies[name]), JWKSFile: "../examples/policy/idp/jwks.json"}
				provision(b, h)
				h.logger = zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
					zapcore.AddSync(io.Discard), benchLogLevel))
				der := cert(b, "alice")
				body, ct, reply := string(benchBody), "application/json", plain
				switch kind {
				case "streamed-asked": // the client asks for the usage chunk
					body = strings.Replace(body, `{`, `{"stream":true,"stream_options":{"include_usage":true},`, 1)
					ct, reply = "text/event-stream", stream.String()
				case "streamed-added": // it does not: added, and removed from the response
					body = strings.Replace(body, `{`, `{"stream":true,`, 1)
					ct, reply = "text/event-stream", stream.String()
				}
				next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
					_, _ = io.Copy(io.Discard, r.Body)
					_ = r.Body.Close()
					w.Header().Set("Content-Type", ct)
					_, err := io.WriteString(w, reply)
					return err
				})
				serveParallel(b, h, der, body, next)
			})
		}
	}
}

var benchLogLevel = zapcore.InfoLevel
