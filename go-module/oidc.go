package ztpolicy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/zt-policy/zt-policy/go-module/internal/engine"
)

// jwksSource keeps the engine's JWKS current from an OIDC issuer: discovery, then the
// JWKS, refetched on a schedule and at once (rate limited) when a token names a key
// the engine lacks. A failed fetch keeps the last good keys.
type jwksSource struct {
	issuer      string
	client      *http.Client
	eng         *engine.Engine
	logger      *zap.Logger
	interval    time.Duration
	minInterval time.Duration

	mu          sync.Mutex // serializes fetches
	jwksURI     string
	lastAttempt time.Time
	lastGood    time.Time
}

const maxIdPResponse = 1 << 20

func newJWKSSource(issuer, caFile string, eng *engine.Engine, logger *zap.Logger, interval, minInterval time.Duration) (*jwksSource, error) {
	u, err := url.Parse(issuer)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("zt_policy: issuer %q is not an http(s) URL", issuer)
	}
	if u.Scheme == "http" && !isLoopback(u.Hostname()) {
		return nil, fmt.Errorf("zt_policy: issuer %q: keys fetched over plain http could be forged on the way; use https", issuer)
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("zt_policy: idp_ca_file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("zt_policy: idp_ca_file %s holds no PEM certificate", caFile)
		}
		tlsConfig.RootCAs = pool
	}
	return &jwksSource{
		issuer: strings.TrimSuffix(issuer, "/"),
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: tlsConfig, Proxy: http.ProxyFromEnvironment,
			DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		}},
		eng: eng, logger: logger, interval: interval, minInterval: minInterval,
	}, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s *jwksSource) get(ctx context.Context, u string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIdPResponse))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	if raw, ok := into.(*[]byte); ok {
		*raw = body
		return nil
	}
	return json.Unmarshal(body, into)
}

// fetch runs discovery (once) and loads the JWKS into the engine. Callers hold s.mu.
func (s *jwksSource) fetch(ctx context.Context) error {
	s.lastAttempt = time.Now()
	if s.jwksURI == "" {
		var doc struct {
			Issuer  string `json:"issuer"`
			JWKSURI string `json:"jwks_uri"`
		}
		if err := s.get(ctx, s.issuer+"/.well-known/openid-configuration", &doc); err != nil {
			return fmt.Errorf("OIDC discovery: %w", err)
		}
		// OpenID Connect Discovery 1.0, section 4.3: the document must name this issuer.
		if strings.TrimSuffix(doc.Issuer, "/") != s.issuer {
			return fmt.Errorf("OIDC discovery: the document names issuer %q, not %q", doc.Issuer, s.issuer)
		}
		if doc.JWKSURI == "" {
			return errors.New("OIDC discovery: the document has no jwks_uri")
		}
		s.jwksURI = doc.JWKSURI
	}
	var jwks []byte
	if err := s.get(ctx, s.jwksURI, &jwks); err != nil {
		return fmt.Errorf("JWKS: %w", err)
	}
	msg, err := s.eng.SetJWKS(jwks)
	if err != nil {
		return fmt.Errorf("JWKS from %s refused: %w", s.jwksURI, err)
	}
	s.lastGood = time.Now()
	logJWKS(s.logger, msg, zap.String("issuer", s.issuer), zap.String("jwks_uri", s.jwksURI))
	return nil
}

// load fetches the keys now; a failure is logged and the engine keeps what it has
// (no keys at all at startup: every token is refused until a fetch succeeds).
func (s *jwksSource) load(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fetch(ctx); err != nil {
		s.logger.Error("JWKS refresh failed; keeping the last good keys", zap.String("issuer", s.issuer),
			zap.Time("last_good", s.lastGood), zap.Error(err))
	}
}

// run refreshes on a schedule until ctx ends (the configuration stops). Until a first
// fetch succeeds it retries every minInterval.
func (s *jwksSource) run(ctx context.Context) {
	for {
		s.mu.Lock()
		wait := s.interval
		if s.lastGood.IsZero() {
			wait = s.minInterval
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
			s.load(ctx)
		}
	}
}

// refreshForUnknownKey refetches the JWKS because a token named a key the engine
// lacks, unless a fetch happened less than minInterval ago (a stream of forged key
// ids must not make us hammer the IdP). Reports whether new keys were loaded.
func (s *jwksSource) refreshForUnknownKey(ctx context.Context) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.lastAttempt) < s.minInterval {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.fetch(ctx); err != nil {
		s.logger.Warn("JWKS refetch for an unknown key id failed", zap.String("issuer", s.issuer), zap.Error(err))
		return false
	}
	return true
}
