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

	mu          sync.Mutex // guards the fields below; never held across the network
	jwksURI     string
	lastAttempt time.Time
	lastGood    time.Time
	inflight    *fetchCall // the one fetch in flight, which every caller joins
}

// fetchCall is a fetch in flight: done closes when it ends, err says how.
type fetchCall struct {
	done chan struct{}
	err  error
}

const maxIdPResponse = 1 << 20

// fetchTimeout bounds one fetch (discovery and JWKS); unknownKeyWait bounds how long a
// request whose token names an unknown key waits for the refetch it started or joined:
// past it the request is decided with the keys there are (a 401 for that token), and
// the fetch goes on in the background for the requests after it.
const (
	fetchTimeout   = 10 * time.Second
	unknownKeyWait = 2 * time.Second
)

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

// fetch runs discovery (once) and loads the JWKS into the engine, joining the fetch in
// flight if there is one, so there is never more than one. It returns when the fetch
// ends or ctx does (the fetch itself goes on, bounded by fetchTimeout).
func (s *jwksSource) fetch(ctx context.Context) error {
	return s.fetchUnless(ctx, 0)
}

// errRecent: no fetch was in flight and the last began less than minInterval ago.
var errRecent = errors.New("the JWKS was fetched moments ago")

// fetchUnless is fetch, but starts no new fetch within `recent` of the last one.
func (s *jwksSource) fetchUnless(ctx context.Context, recent time.Duration) error {
	s.mu.Lock()
	c := s.inflight
	if c == nil && recent > 0 && time.Since(s.lastAttempt) < recent {
		s.mu.Unlock()
		return errRecent
	}
	if c == nil {
		c = &fetchCall{done: make(chan struct{})}
		s.inflight = c
		s.lastAttempt = time.Now()
		go func() {
			fctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
			defer cancel()
			err := s.fetchNow(fctx)
			s.mu.Lock()
			s.inflight = nil
			if err == nil {
				s.lastGood = time.Now()
			}
			c.err = err
			s.mu.Unlock()
			close(c.done)
		}()
	}
	s.mu.Unlock()
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fetchNow does one fetch: discovery when the JWKS URI is not known yet, then the JWKS.
func (s *jwksSource) fetchNow(ctx context.Context) error {
	s.mu.Lock()
	jwksURI := s.jwksURI
	s.mu.Unlock()
	if jwksURI == "" {
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
		jwksURI = doc.JWKSURI
		s.mu.Lock()
		s.jwksURI = jwksURI
		s.mu.Unlock()
	}
	var jwks []byte
	if err := s.get(ctx, jwksURI, &jwks); err != nil {
		return fmt.Errorf("JWKS: %w", err)
	}
	msg, err := s.eng.SetJWKS(jwks)
	if err != nil {
		return fmt.Errorf("JWKS from %s refused: %w", jwksURI, err)
	}
	logJWKS(s.logger, msg, zap.String("issuer", s.issuer), zap.String("jwks_uri", jwksURI))
	return nil
}

// load fetches the keys now; a failure is logged and the engine keeps what it has
// (no keys at all at startup: every token is refused until a fetch succeeds).
func (s *jwksSource) load(ctx context.Context) {
	if err := s.fetch(ctx); err != nil {
		s.mu.Lock()
		lastGood := s.lastGood
		s.mu.Unlock()
		s.logger.Error("JWKS refresh failed; keeping the last good keys", zap.String("issuer", s.issuer),
			zap.Time("last_good", lastGood), zap.Error(err))
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
// lacks: it joins the fetch in flight, or starts one unless the last began less than
// minInterval ago (a stream of forged key ids must not make us hammer the IdP). It
// waits at most unknownKeyWait. Reports whether new keys were loaded meanwhile.
func (s *jwksSource) refreshForUnknownKey(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, unknownKeyWait)
	defer cancel()
	err := s.fetchUnless(ctx, max(s.minInterval, time.Nanosecond))
	if errors.Is(err, errRecent) {
		return false
	}
	if err != nil {
		s.logger.Warn("JWKS refetch for an unknown key id failed or is still running", zap.String("issuer", s.issuer), zap.Error(err))
		return false
	}
	return true
}
