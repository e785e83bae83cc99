package ztpolicy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Where a header crosses two readers — this module and reverse_proxy's hop-by-hop rule,
// Go's trailer handling — a client must not be able to remove or add the identity the
// decision named. The inputs are generated: spellings, cases, list syntax.

// protected are the headers the module strips from clients and sets itself.
var protected = []string{"X-Zt-Identity", "X-Zt-Rule", "X-Auth-Request-User"}

// spell writes name the ways a field list may: any case, optional whitespace, empty
// list elements and other tokens around it.
func spell(rng *rand.Rand, name string) string {
	var b strings.Builder
	for _, c := range name {
		if rng.IntN(2) == 0 {
			b.WriteString(strings.ToUpper(string(c)))
		} else {
			b.WriteString(strings.ToLower(string(c)))
		}
	}
	ows := []string{"", " ", "\t", "  "}
	decoys := []string{"keep-alive", "close", "te", "x-other", ""}
	parts := []string{ows[rng.IntN(4)] + b.String() + ows[rng.IntN(4)]}
	for i := rng.IntN(3); i > 0; i-- {
		d := decoys[rng.IntN(len(decoys))]
		if rng.IntN(2) == 0 {
			parts = append([]string{d}, parts...)
		} else {
			parts = append(parts, d)
		}
	}
	return strings.Join(parts, ",")
}

func TestHeadersTheModuleSetsCannotBeNamedHopByHopOrAsTrailers(t *testing.T) {
	h := &Handler{PolicyFile: examplePolicy, StripHeaders: []string{"X-Auth-Request-User"}}
	provision(t, h)
	rng := rand.New(rand.NewPCG(14, 1))
	for i := 0; i < 300; i++ {
		name := protected[rng.IntN(len(protected))]
		field := [...]string{"Connection", "Trailer"}[rng.IntN(2)]
		value := spell(rng, name)
		r := chat(t, "alice", `{"model":"llama-3.1-8b-instruct","max_tokens":8}`)
		r.Header.Add(field, value)
		c := serve(t, h, r)
		if c.next || c.rec.Code != http.StatusBadRequest || c.errBody["error"]["code"] != "bad_request" {
			t.Fatalf("%s: %q: got %d (upstream reached: %v) %s", field, value, c.rec.Code, c.next, c.rec.Body)
		}
	}
	// Tokens that name nothing the module owns pass, and the fields they name are
	// removed before the decision, as reverse_proxy will remove them.
	r := chat(t, "alice", `{"model":"llama-3.1-8b-instruct","max_tokens":8}`)
	r.Header.Set("Connection", "keep-alive, X-Hop")
	r.Header.Set("X-Hop", "1")
	c := serve(t, h, r)
	if !c.next || c.upHdr.Get("X-Hop") != "" || c.upHdr.Get("X-Zt-Identity") != "alice@example.com" {
		t.Fatalf("got %d, upstream headers %v", c.rec.Code, c.upHdr)
	}
}

// A Content-Type named in Connection reaches vLLM absent, and FastAPI parses a body
// without one as JSON: the decision must judge that JSON, not a text/plain body.
func TestContentTypeNamedInConnectionIsJudgedAsTheUpstreamGetsIt(t *testing.T) {
	h := &Handler{PolicyFile: examplePolicy}
	provision(t, h)
	body := `{"model":"gpt-4o","max_tokens":8}`
	plain := chat(t, "alice", body)
	plain.Header.Set("Content-Type", "text/plain")
	if c := serve(t, h, plain); c.errBody["error"]["rule"] != "model-required" {
		t.Fatalf("a text/plain body is not JSON to vLLM: %v", c.errBody)
	}
	hop := chat(t, "alice", body)
	hop.Header.Set("Content-Type", "text/plain")
	hop.Header.Set("Connection", "Content-Type")
	c := serve(t, h, hop)
	if c.next || c.errBody["error"]["rule"] != "model-allowed" {
		t.Fatalf("the body vLLM parses names gpt-4o: got %d %v", c.rec.Code, c.errBody)
	}
}

func TestRepeatedAuthorizationIs400(t *testing.T) {
	h := &Handler{PolicyFile: examplePolicy}
	provision(t, h)
	r := chat(t, "alice", `{"model":"llama-3.1-8b-instruct","max_tokens":8}`)
	r.Header.Add("Authorization", "Bearer a")
	r.Header.Add("Authorization", "Bearer b")
	c := serve(t, h, r)
	if c.next || c.rec.Code != 400 || c.errBody["error"]["code"] != "bad_request" {
		t.Fatalf("got %d %v", c.rec.Code, c.errBody)
	}
}

// An identity that HTTP would refuse or trim is a denied decision, never a 502 or a
// different identity upstream.
func TestIdentityThatIsNotAHeaderValueIsRefused(t *testing.T) {
	h := &Handler{PolicyFile: policyFile(t, `
[settings]
identity = 'request.headers["x-user"]'
[[rule]]
name = "all"
effect = "allow"
when = 'true'
`)}
	provision(t, h)
	for _, id := range []string{"a\r\nX-Zt-Rule: forged", "a\nb", "a\x00", " padded", "padded\t", "del\x7f"} {
		r := chat(t, "", `{}`)
		r.Header["X-User"] = []string{id}
		c := serve(t, h, r)
		if c.next || c.rec.Code != http.StatusUnauthorized {
			t.Errorf("identity %q: got %d (upstream reached: %v)", id, c.rec.Code, c.next)
		}
	}
	r := chat(t, "", `{}`)
	r.Header.Set("X-User", "ok@example.com")
	if c := serve(t, h, r); !c.next || c.upHdr.Get("X-Zt-Identity") != "ok@example.com" {
		t.Fatalf("a plain identity: got %d", c.rec.Code)
	}
}

// Trailers a client sends undeclared are added to the request by Go's server when the
// body ends; reverse_proxy forwards what it finds then. Through a real server, with a
// policy that does not read the body and one that does (the module reads it first).
func TestTrailersNamedLikeIdentityHeadersNeverGoUpstream(t *testing.T) {
	open := "[settings]\nrequire_identity = false\n[[rule]]\nname = \"all\"\neffect = \"allow\"\nwhen = "
	for _, when := range []string{`'true'`, `'has(body.model)'`} {
		policy := policyFile(t, open+when)
		h := &Handler{PolicyFile: policy, StripHeaders: []string{"X-Auth-Request-User"}}
		provision(t, h)
		got := make(chan http.Header, 1)
		next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			_, _ = io.Copy(io.Discard, r.Body)
			got <- r.Trailer.Clone()
			return nil
		})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := h.ServeHTTP(w, r, next); err != nil {
				t.Error(err)
			}
		}))
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		body := `{"model":"llama-3.1-8b-instruct","max_tokens":8}`
		fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
			"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\nX-Zt-Identity: admin\r\nX-Auth-Request-User: admin\r\nX-Fine: 1\r\n\r\n",
			len(body), body)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		_ = conn.Close()
		srv.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("when %s: %d", when, resp.StatusCode)
		}
		tr := <-got
		if tr.Get("X-Fine") != "1" {
			t.Fatalf("the test sent no trailers that arrived: %v", tr)
		}
		for _, name := range protected {
			if v := tr.Values(name); len(v) != 0 {
				t.Errorf("trailer %s reached upstream: %v", name, v)
			}
		}
	}
}

// A protocol upgrade opens a tunnel that no later decision sees: it passes only where
// an allow rule names request.upgrade. The module reads "is this an upgrade" as
// reverse_proxy does (an Upgrade header, and "upgrade" among the Connection tokens),
// over generated spellings; the Upgrade header reaches the proxy when allowed.
func TestUpgradesNeedARuleThatNamesThem(t *testing.T) {
	plain := &Handler{PolicyFile: examplePolicy}
	provision(t, plain)
	ws := &Handler{Policy: `
[settings]
require_identity = false
[[rule]]
name = "chat"
effect = "allow"
when = 'request.path.startsWith("/v1/")'
[[rule]]
name = "websocket"
effect = "allow"
when = 'request.upgrade == "websocket" && request.path == "/v1/realtime"'
`}
	provision(t, ws)
	rng := rand.New(rand.NewPCG(16, 5))
	for i := 0; i < 300; i++ {
		proto := [...]string{"websocket", "WebSocket", "h2c", "WEBSOCKET"}[rng.IntN(4)]
		path := [...]string{"/v1/realtime", "/v1/chat/completions"}[rng.IntN(2)]
		connection := spell(rng, "Upgrade")
		upgrade := func() *http.Request {
			r := chat(t, "alice", `{"model":"llama-3.1-8b-instruct","max_tokens":8}`)
			r.URL.Path = path
			r.Header.Set("Connection", connection)
			r.Header.Set("Upgrade", proto)
			return r
		}
		// The example policy allows this chat request, but not as an upgrade.
		c := serve(t, plain, upgrade())
		if c.next || c.rec.Code != http.StatusForbidden ||
			(path == "/v1/chat/completions" && !strings.Contains(c.rec.Body.String(), "("+strings.ToLower(proto)+") needs an allow rule that names request.upgrade")) {
			t.Fatalf("example policy, %s %q %q: got %d (upstream reached: %v) %s", path, connection, proto, c.rec.Code, c.next, c.rec.Body)
		}
		r := upgrade()
		c = serve(t, ws, r)
		allowed := strings.EqualFold(proto, "websocket") && path == "/v1/realtime"
		if c.next != allowed || (allowed && !strings.EqualFold(c.upHdr.Get("Upgrade"), proto)) {
			t.Fatalf("websocket policy, %s %q %q: got %d (upstream reached: %v, Upgrade %q)", path, r.Header.Get("Connection"), proto, c.rec.Code, c.next, c.upHdr.Get("Upgrade"))
		}
	}
	// An Upgrade header without the Connection token is no upgrade (reverse_proxy drops
	// it as hop-by-hop): an ordinary request, decided as one.
	r := chat(t, "alice", `{"model":"llama-3.1-8b-instruct","max_tokens":8}`)
	r.Header.Set("Upgrade", "websocket")
	if c := serve(t, plain, r); !c.next {
		t.Fatalf("got %d %s", c.rec.Code, c.rec.Body)
	}
}

// The causes a refused unreadable body is logged and counted under, for net/http's own
// errors (their texts, as net/http and its HTTP/2 server write them).
func TestUnreadableBodiesAreNamedByCause(t *testing.T) {
	for msg, want := range map[string]string{
		"invalid byte in chunk length":                                       "bad_chunking",
		"malformed chunked encoding":                                         "bad_chunking",
		"http chunk length too large":                                        "bad_chunking",
		"chunked encoding contains too much non-data":                        "bad_chunking",
		"http2: request body larger than specified content length":           "length_mismatch",
		"sender tried to send more than declared Content-Length of 20 bytes": "length_mismatch",
		"something else": "other",
	} {
		if got := unreadableCause(errors.New(msg)); got != want {
			t.Errorf("%q: %s, want %s", msg, got, want)
		}
	}
	if got := unreadableCause(fmt.Errorf("read: %w", io.ErrUnexpectedEOF)); got != "truncated" {
		t.Errorf("unexpected EOF: %s", got)
	}
	if got := unreadableCause(&net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}); got != "too_slow" {
		t.Errorf("deadline: %s", got)
	}
}
