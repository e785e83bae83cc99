package ztpolicy

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testIdP serves OIDC discovery and a JWKS whose keys the test swaps, and counts fetches.
type testIdP struct {
	srv        *httptest.Server
	mu         sync.Mutex
	keys       map[string]*rsa.PrivateKey
	issuerName string
	down       atomic.Bool
	hang       atomic.Bool            // the JWKS endpoint answers only after the client gives up
	jwksBody   atomic.Pointer[[]byte] // served instead of the keys when set
	jwksHits   atomic.Int32
}

func newTestIdP(t *testing.T) *testIdP {
	idp := &testIdP{keys: map[string]*rsa.PrivateKey{}}
	idp.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if idp.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			name := idp.issuerName
			if name == "" {
				name = idp.srv.URL
			}
			_ = json.NewEncoder(w).Encode(map[string]string{"issuer": name, "jwks_uri": idp.srv.URL + "/keys"})
		case "/keys":
			idp.jwksHits.Add(1)
			if b := idp.jwksBody.Load(); b != nil {
				_, _ = w.Write(*b)
				return
			}
			if idp.hang.Load() {
				select {
				case <-r.Context().Done():
				case <-time.After(30 * time.Second):
				}
				return
			}
			idp.mu.Lock()
			var keys []map[string]string
			for kid, k := range idp.keys {
				keys = append(keys, map[string]string{"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
					"n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())})
			}
			idp.mu.Unlock()
			_ = json.NewEncoder(w).Encode(map[string]any{"keys": keys})
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(idp.srv.Close)
	return idp
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func (idp *testIdP) addKey(t *testing.T, kid string) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	idp.mu.Lock()
	idp.keys[kid] = k
	idp.mu.Unlock()
}

func (idp *testIdP) removeKey(kid string) {
	idp.mu.Lock()
	delete(idp.keys, kid)
	idp.mu.Unlock()
}

func (idp *testIdP) token(t *testing.T, kid string, claims map[string]any) string {
	idp.mu.Lock()
	k := idp.keys[kid]
	idp.mu.Unlock()
	if k == nil {
		t.Fatalf("no key %s", kid)
	}
	base := map[string]any{"iss": idp.srv.URL, "aud": "local-ai", "sub": "svc-batch",
		"exp": time.Now().Add(5 * time.Minute).Unix(), "groups": []string{"ml-users"}}
	for key, v := range claims {
		base[key] = v
	}
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": kid})
	p, _ := json.Marshal(base)
	signing := b64(h) + "." + b64(p)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + b64(sig)
}

const tokenPolicy = `
[settings]
require_identity = true
[[rule]]
name = "ml"
effect = "allow"
when = 'has(claims.groups) && "ml-users" in claims.groups'
`

func oidcHandler(t *testing.T, idp *testIdP) *Handler {
	h := &Handler{PolicyFile: policyFile(t, tokenPolicy), Issuer: idp.srv.URL, Audience: []string{"local-ai"},
		JWKSRefresh: 0, JWKSMinInterval: caddyDuration(50 * time.Millisecond)}
	provision(t, h)
	return h
}

func withToken(t *testing.T, token string) *http.Request {
	r := chat(t, "", `{}`)
	r.Header.Set("Authorization", "Bearer "+token)
	return r
}

func TestIssuerIsAllAUserSets(t *testing.T) {
	idp := newTestIdP(t)
	idp.addKey(t, "k1")
	h := oidcHandler(t, idp)
	c := serve(t, h, withToken(t, idp.token(t, "k1", nil)))
	if c.rec.Code != 200 || c.upHdr.Get("X-Zt-Identity") != "svc-batch" {
		t.Fatalf("got %d %s", c.rec.Code, c.rec.Body)
	}
	// Another audience is refused.
	c = serve(t, h, withToken(t, idp.token(t, "k1", map[string]any{"aud": "other"})))
	if c.rec.Code != 401 {
		t.Fatalf("wrong audience: %d", c.rec.Code)
	}
}

func TestRotatedKeyIsFetchedAtOnceAndRemovedKeyFailsAfterRefresh(t *testing.T) {
	idp := newTestIdP(t)
	idp.addKey(t, "k1")
	h := oidcHandler(t, idp)
	old := idp.token(t, "k1", nil)
	if c := serve(t, h, withToken(t, old)); c.rec.Code != 200 {
		t.Fatalf("setup: %d", c.rec.Code)
	}
	// The IdP starts signing with k2: the first token naming it makes the module refetch.
	idp.addKey(t, "k2")
	time.Sleep(60 * time.Millisecond) // past jwks_min_interval, which rate-limits refetches
	if c := serve(t, h, withToken(t, idp.token(t, "k2", nil))); c.rec.Code != 200 {
		t.Fatalf("token signed with the new key: %d %s", c.rec.Code, c.rec.Body)
	}
	// k1 is withdrawn; after the next refresh its tokens fail.
	idp.removeKey("k1")
	h.jwks.load(t.Context())
	if c := serve(t, h, withToken(t, old)); c.rec.Code != 401 {
		t.Fatalf("token signed with a removed key: %d", c.rec.Code)
	}
}

func TestUnknownKeyRefetchesAreRateLimited(t *testing.T) {
	idp := newTestIdP(t)
	idp.addKey(t, "k1")
	h := &Handler{PolicyFile: policyFile(t, tokenPolicy), Issuer: idp.srv.URL, Audience: []string{"local-ai"},
		JWKSMinInterval: caddyDuration(time.Hour)}
	provision(t, h)
	before := idp.jwksHits.Load()
	idp.addKey(t, "forged")
	forged := idp.token(t, "forged", nil)
	idp.removeKey("forged")
	for i := 0; i < 20; i++ {
		if c := serve(t, h, withToken(t, forged)); c.rec.Code != 401 {
			t.Fatalf("forged key: %d", c.rec.Code)
		}
	}
	if hits := idp.jwksHits.Load() - before; hits != 0 {
		t.Fatalf("%d JWKS fetches for unknown key ids within the minimum interval", hits)
	}
}

func TestIdPDownKeepsTheLastGoodKeys(t *testing.T) {
	idp := newTestIdP(t)
	idp.addKey(t, "k1")
	h := oidcHandler(t, idp)
	idp.down.Store(true)
	h.jwks.load(t.Context())
	if c := serve(t, h, withToken(t, idp.token(t, "k1", nil))); c.rec.Code != 200 {
		t.Fatalf("IdP down: %d", c.rec.Code)
	}
}

func TestDiscoveryNamingAnotherIssuerLoadsNoKeys(t *testing.T) {
	idp := newTestIdP(t)
	idp.addKey(t, "k1")
	idp.issuerName = "https://evil.example"
	h := oidcHandler(t, idp)
	c := serve(t, h, withToken(t, idp.token(t, "k1", nil)))
	// No keys were loaded; the client hears the class of problem, not the key table.
	if c.rec.Code != 401 || !strings.Contains(c.rec.Body.String(), "signed by a key this server does not know") {
		t.Fatalf("got %d %s", c.rec.Code, c.rec.Body)
	}
}

func TestPlainHTTPIssuerIsOnlyForLoopback(t *testing.T) {
	if _, err := newJWKSSource("http://idp.example.com", "", nil, nil, time.Minute, time.Second); err == nil {
		t.Fatal("accepted a plain-http issuer on the network")
	}
	if _, err := newJWKSSource("http://127.0.0.1:9/", "", nil, nil, time.Minute, time.Second); err != nil {
		t.Fatal(err)
	}
}

// Many requests naming an unknown key at once make one JWKS fetch, which they share,
// and none waits longer than unknownKeyWait for it, even when the IdP hangs.
func TestUnknownKeyRefetchesAreCoalescedAndBounded(t *testing.T) {
	idp := newTestIdP(t)
	idp.addKey(t, "k1")
	h := oidcHandler(t, idp)
	idp.addKey(t, "k2")
	fresh := idp.token(t, "k2", nil)
	time.Sleep(60 * time.Millisecond) // past JWKSMinInterval (50ms) since provisioning's fetch
	before := idp.jwksHits.Load()
	var wg sync.WaitGroup
	codes := make([]int, 32)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = serve(t, h, withToken(t, fresh)).rec.Code
		}()
	}
	wg.Wait()
	if hits := idp.jwksHits.Load() - before; hits != 1 {
		t.Fatalf("%d JWKS fetches for 32 concurrent requests naming one new key", hits)
	}
	for i, c := range codes {
		if c != 200 {
			t.Fatalf("request %d: %d (the shared fetch loaded k2)", i, c)
		}
	}

	// The IdP hangs: requests are decided (401 for the unknown key) after the bound.
	idp.hang.Store(true)
	defer idp.hang.Store(false)
	idp.addKey(t, "k3")
	hung := idp.token(t, "k3", nil)
	time.Sleep(60 * time.Millisecond) // past JWKSMinInterval (50ms)
	start := time.Now()
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = serve(t, h, withToken(t, hung)).rec.Code
		}()
	}
	wg.Wait()
	if waited := time.Since(start); waited > unknownKeyWait+time.Second {
		t.Fatalf("requests waited %v on a hung IdP (bound %v)", waited, unknownKeyWait)
	}
	for i, c := range codes {
		if c != 401 {
			t.Fatalf("request %d: %d", i, c)
		}
	}
}

// An IdP that is down when Caddy starts: tokens are refused (no keys yet) until a
// retry, every jwks_min_interval, loads the keys.
func TestIdPDownAtStartRecoversByItself(t *testing.T) {
	idp := newTestIdP(t)
	idp.addKey(t, "k1")
	idp.down.Store(true)
	h := oidcHandler(t, idp)
	token := idp.token(t, "k1", nil)
	if c := serve(t, h, withToken(t, token)); c.rec.Code != 401 {
		t.Fatalf("no keys yet: %d", c.rec.Code)
	}
	idp.down.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for serve(t, h, withToken(t, token)).rec.Code != 200 {
		if time.Now().After(deadline) {
			t.Fatal("the keys were never loaded after the IdP came back")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A JWKS that is garbage, has no usable key, or is larger than 1 MiB is refused and
// the last good keys stay in force.
func TestGarbageOrHugeJWKSKeepsTheLastGoodKeys(t *testing.T) {
	idp := newTestIdP(t)
	idp.addKey(t, "k1")
	h := oidcHandler(t, idp)
	token := idp.token(t, "k1", nil)
	huge := []byte(`{"keys":[{"kty":"RSA","kid":"pad","n":"` + strings.Repeat("A", 2<<20) + `","e":"AQAB"}]}`)
	for name, body := range map[string][]byte{
		"garbage":       []byte("<html>oops</html>"),
		"no keys":       []byte(`{"keys":[]}`),
		"small RSA":     []byte(`{"keys":[{"kty":"RSA","kid":"weak","n":"gAE","e":"AQAB"}]}`),
		"over 1 MiB":    huge,
		"not an object": []byte(`[1,2,3]`),
	} {
		idp.jwksBody.Store(&body)
		before := idp.jwksHits.Load()
		h.jwks.load(t.Context())
		if idp.jwksHits.Load() == before {
			t.Fatalf("%s: not fetched", name)
		}
		if c := serve(t, h, withToken(t, token)); c.rec.Code != 200 {
			t.Fatalf("%s: the last good keys were dropped: %d", name, c.rec.Code)
		}
	}
}
