// test-idp: the OpenID provider of the end-to-end tests, a mockoidc server
// (github.com/oauth2-proxy/mockoidc) with what the tests need beside it:
//   - the client-credentials grant for services (RFC 6749 §4.4), whose tokens are
//     bound to the client certificate presented to the token endpoint (RFC 8705);
//   - key rotation: POST /control/rotate signs with a new key and publishes both,
//     POST /control/retire withdraws every key but the newest;
//   - POST /control/user {"subject","email","groups"} queues the next browser login;
//   - POST /control/jwks {"mode": "down"|"garbage"|"huge"|""} makes the JWKS endpoint
//     answer 503, non-JSON, or 2 MiB of JSON, until set back to "".
//
// It serves HTTPS on 127.0.0.1, asking for (not requiring) a client certificate.
package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"github.com/oauth2-proxy/mockoidc"
)

type service struct {
	Secret string   `json:"secret"`
	Groups []string `json:"groups"`
}

type idp struct {
	m        *mockoidc.MockOIDC
	mu       sync.Mutex
	keys     []*mockoidc.Keypair // published; the last one signs
	services map[string]service
	audience string
	jwksMode string // "" serves the keys; "down", "garbage", "huge" inject a fault
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	cert := flag.String("cert", "", "server certificate (PEM)")
	key := flag.String("key", "", "server key (PEM)")
	clientID := flag.String("client-id", "local-ai", "OIDC client (oauth2-proxy); also the token audience")
	clientSecret := flag.String("client-secret", "", "OIDC client secret")
	servicesJSON := flag.String("services", "{}", `client-credentials clients: {"id": {"secret": "...", "groups": [...]}}`)
	flag.Parse()

	k, err := rsa.GenerateKey(rand.Reader, 2048)
	check(err)
	m, err := mockoidc.NewServer(k)
	check(err)
	m.ClientID, m.ClientSecret = *clientID, *clientSecret
	p := &idp{m: m, keys: []*mockoidc.Keypair{m.Keypair}, audience: *clientID}
	check(json.Unmarshal([]byte(*servicesJSON), &p.services))
	check(m.AddMiddleware(p.middleware))

	pair, err := tls.LoadX509KeyPair(*cert, *key)
	check(err)
	ln, err := net.Listen("tcp", *addr)
	check(err)
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequestClientCert,
		MinVersion: tls.VersionTLS12}
	// mockoidc serves the listener it is given; TLS is ours to add.
	check(m.Start(tls.NewListener(ln, cfg), cfg))
	// The control endpoints are outside mockoidc's routes: wrap its handler.
	m.Server.Handler = p.control(m.Server.Handler)
	fmt.Println(m.Issuer())
	select {}
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func (p *idp) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == mockoidc.JWKSEndpoint:
			p.jwks(w)
		case r.URL.Path == mockoidc.TokenEndpoint && r.Method == http.MethodPost && grantType(r) == "client_credentials":
			p.clientCredentials(w, r)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

func (p *idp) control(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/control/rotate":
			p.rotate(w)
		case "/control/retire":
			p.mu.Lock()
			p.keys = p.keys[len(p.keys)-1:]
			p.mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		case "/control/jwks":
			var m struct{ Mode string }
			if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			p.mu.Lock()
			p.jwksMode = m.Mode
			p.mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		case "/control/user":
			var u struct {
				Subject, Email string
				Groups         []string
			}
			if err := json.NewDecoder(r.Body).Decode(&u); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			p.m.QueueUser(&mockoidc.MockUser{Subject: u.Subject, Email: u.Email, EmailVerified: true,
				PreferredUsername: u.Subject, Groups: u.Groups})
			w.WriteHeader(http.StatusNoContent)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

func grantType(r *http.Request) string {
	if err := r.ParseForm(); err != nil {
		return ""
	}
	return r.PostForm.Get("grant_type")
}

func (p *idp) jwks(w http.ResponseWriter) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.jwksMode {
	case "down":
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
		return
	case "garbage":
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte("<html><body>502 Bad Gateway</body></html>"))
		return
	case "huge":
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"keys":[{"kty":"RSA","kid":"pad","n":"` + strings.Repeat("A", 2<<20) + `","e":"AQAB"}]}`))
		return
	}
	set := jose.JSONWebKeySet{}
	for _, k := range p.keys {
		kid, _ := k.KeyID()
		set.Keys = append(set.Keys, jose.JSONWebKey{Use: "sig", Algorithm: string(jose.RS256), Key: k.PublicKey, KeyID: kid})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(set)
}

func (p *idp) rotate(w http.ResponseWriter) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	kp, _ := mockoidc.NewKeypair(k)
	p.mu.Lock()
	p.keys = append(p.keys, kp)
	p.m.Keypair = kp
	p.mu.Unlock()
	kid, _ := kp.KeyID()
	_ = json.NewEncoder(w).Encode(map[string]string{"kid": kid})
}

// clientCredentials issues a service token (RFC 6749 §4.4). A client certificate
// presented on this TLS connection binds the token to it (RFC 8705 cnf.x5t#S256).
func (p *idp) clientCredentials(w http.ResponseWriter, r *http.Request) {
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	svc, known := p.services[id]
	if !known || svc.Secret == "" || svc.Secret != secret {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_client"})
		return
	}
	now := time.Now()
	claims := jwt.MapClaims{
		"iss": p.m.Issuer(), "sub": id, "aud": p.audience, "iat": now.Unix(), "nbf": now.Unix(),
		"exp": now.Add(10 * time.Minute).Unix(), "groups": svc.Groups, "client_id": id,
	}
	if scope := r.PostForm.Get("scope"); scope != "" {
		claims["scope"] = scope
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		sum := sha256.Sum256(r.TLS.PeerCertificates[0].Raw)
		claims["cnf"] = map[string]string{"x5t#S256": base64.RawURLEncoding.EncodeToString(sum[:])}
	}
	p.mu.Lock()
	signer := p.keys[len(p.keys)-1]
	p.mu.Unlock()
	token, err := signer.SignJWT(claims)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": token, "token_type": "Bearer", "expires_in": 600})
}
