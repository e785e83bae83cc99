package ztpolicy

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// The whole handler in-process, no network, two goroutines: what zt_policy adds to a
// request in Caddy (less the log line, which goes to a no-op logger here).
func benchServe(b *testing.B, policy string, body string, jwks string) {
	h := &Handler{PolicyFile: policy, JWKSFile: jwks}
	provision(b, h)
	// Decision log lines are part of the cost, but not of the benchmark's output.
	h.logger = zap.NewNop()
	der := cert(b, "alice")
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error { return nil })
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
	raised := strings.NewReplacer(`rate = "120/m"`, `rate = "1000000/s"`, "burst = 20", "burst = 100000000",
		`rate = "100000/h"`, `rate = "1000000/s"`, "burst = 16384", "burst = 100000000")
	return raised.Replace(string(must(readFile(examplePolicy))))
}

// oneRulePolicy allows everything with one rule: the module's floor.
const oneRulePolicy = "[settings]\nrequire_identity = false\n[[rule]]\nname = \"all\"\neffect = \"allow\"\nwhen = 'true'\n"

func BenchmarkServeHTTPExamplePolicy(b *testing.B) {
	p := policyFile(b, raisedExamplePolicy())
	benchServe(b, p, string(benchBody), "../examples/policy/idp/jwks.json")
}

func BenchmarkServeHTTPTrivialPolicy(b *testing.B) {
	p := policyFile(b, oneRulePolicy)
	benchServe(b, p, string(benchBody), "")
}
