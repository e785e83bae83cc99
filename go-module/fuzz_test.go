package ztpolicy

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// FuzzServeHTTP drives the handler with the real engine and the example policy on
// random methods, paths, headers, tokens, bodies and client certificates. Whatever
// comes in, the handler answers (no panic, no hang), a refusal is an OpenAI-shaped
// error with a 4xx/5xx status, and a request that reaches the upstream carries the
// identity the engine decided, never one the client sent. Seeds are below and in
// testdata/fuzz/FuzzServeHTTP; `go test -fuzz=FuzzServeHTTP` (scripts/fuzz.sh) explores.
func FuzzServeHTTP(f *testing.F) {
	h := &Handler{PolicyFile: examplePolicy, StripHeaders: []string{"X-Auth-Request-User"}}
	provision(f, h)
	certs := []*x509.Certificate{nil, cert(f, "alice"), cert(f, "carol"), cert(f, "mallory")}
	carol, err := os.ReadFile("../examples/policy/idp/carol.jwt")
	if err != nil {
		f.Fatal(err)
	}
	chatBody := []byte(`{"model":"llama-3.1-8b-instruct","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}`)
	f.Add("POST", "/v1/chat/completions", "Content-Type: application/json\nAccept: */*", "", chatBody, uint8(1))
	f.Add("POST", "/v1/chat/completions", "Content-Type: application/json", strings.TrimSpace(string(carol)), chatBody, uint8(2))
	f.Add("GET", "/v1/models", "Connection: Upgrade\nUpgrade: websocket", "", []byte{}, uint8(1))
	f.Add("POST", "/v1/completions", "Content-Type: text/plain\nConnection: content-type", "", []byte(`{"model":"gpt-4o","prompt":"x"}`), uint8(3))
	f.Add("POST", "/v1/chat/completions", "Content-Type: application/json\nTrailer: X-Zt-Identity", "x.y.z", []byte(`{"model":"m","model":"n"}`), uint8(1))
	f.Add("GET", "/metrics", "Authorization: Bearer a\nX-Auth-Request-User: admin", "b", []byte{}, uint8(0))

	f.Fuzz(func(t *testing.T, method, path, headers, token string, body []byte, who uint8) {
		if !isToken(method) {
			return // Go's server refuses such a request line before any handler
		}
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		u := &url.URL{Scheme: "https", Host: "ai.example.internal", Path: path}
		r := &http.Request{
			Method: method, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{}, Host: u.Host, RequestURI: u.RequestURI(), RemoteAddr: "192.0.2.1:4242",
			Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body)),
		}
		for _, line := range strings.Split(headers, "\n") {
			name, value, ok := strings.Cut(line, ":")
			value = strings.TrimSpace(value)
			if ok && isToken(name) && validFieldValue(value) {
				r.Header.Add(name, value)
			}
		}
		if token != "" && validFieldValue(token) {
			r.Header.Add("Authorization", "Bearer "+token)
		}
		r.Header.Set("X-Zt-Identity", "fuzz-spoof")
		r.Header.Set("X-Auth-Request-User", "fuzz-spoof")
		if c := certs[int(who)%len(certs)]; c != nil {
			r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}}
		}

		rec := httptest.NewRecorder()
		var reached bool
		var up http.Header
		next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			reached, up = true, r.Header.Clone()
			_, _ = io.Copy(io.Discard, r.Body)
			w.WriteHeader(200)
			return nil
		})
		if err := h.ServeHTTP(rec, r, next); err != nil {
			if he, ok := err.(caddyhttp.HandlerError); !ok || he.StatusCode < 400 {
				t.Fatalf("ServeHTTP returned %v", err)
			}
			return
		}
		if reached {
			id := up.Get("X-Zt-Identity")
			if id == "" || id == "fuzz-spoof" || up.Get("X-Auth-Request-User") != "" {
				t.Fatalf("upstream got identity %q, X-Auth-Request-User %q", id, up.Get("X-Auth-Request-User"))
			}
			return
		}
		if rec.Code < 400 || rec.Code > 599 {
			t.Fatalf("refused with status %d", rec.Code)
		}
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
			t.Fatalf("refusal %d is not an OpenAI error: %q", rec.Code, rec.Body.String())
		}
	})
}

// isToken reports whether s is an HTTP token (RFC 9110 5.6.2), as methods and field
// names must be.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// validFieldValue reports whether Go's server would accept v as a field value.
func validFieldValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}
