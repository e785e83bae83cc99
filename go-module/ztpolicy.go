// Package ztpolicy is the Caddy module of zt_policy: it decides, for every request to a
// self-hosted inference API, whether it may pass to reverse_proxy. The decision is made
// by the Rust engine (rust/ffi) from the verified client certificate, the verified
// bearer token and the request; this package does the I/O: reading the policy and the
// body, logging, placeholders, and writing the deny response.
package ztpolicy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"math/bits"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/zt-policy/zt-policy/go-module/internal/engine"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler decides whether a request may pass, by a zt_policy policy (a TOML file of CEL
// rules and per-identity limits; see the project README). A denied request gets the
// policy's status (401, 403, 413, 429…) with an OpenAI-style JSON error body; an allowed
// one goes on with the caller's identity in a request header that clients cannot set.
type Handler struct {
	// Path of the policy file (TOML). Relative paths are resolved against Caddy's
	// working directory. Either this or `policy` is required.
	PolicyFile string `json:"policy_file,omitempty"`

	// The policy itself (TOML text), instead of a file.
	Policy string `json:"policy,omitempty"`

	// A JWKS file that bearer tokens are verified against. Overrides the policy's
	// `[token] jwks_file`, which is resolved against the policy file's folder.
	JWKSFile string `json:"jwks_file,omitempty"`

	// Request header that carries the caller's identity to the upstream.
	// Default: `X-Zt-Identity`. A client-supplied copy is always removed first.
	IdentityHeader string `json:"identity_header,omitempty"`

	// Request header that carries the name of the allowing rule to the upstream.
	// Default: `X-Zt-Rule`. A client-supplied copy is always removed first.
	RuleHeader string `json:"rule_header,omitempty"`

	// More request headers to remove from every request before anything reads it:
	// identity headers that only a trusted hop may set (e.g. `X-Auth-Request-User`).
	StripHeaders []string `json:"strip_headers,omitempty"`

	// OIDC issuer of the bearer tokens. The module fetches its discovery document and
	// JWKS, refreshes the keys every `jwks_refresh` and at once when a token names an
	// unknown key id, and keeps the last good keys while the IdP is down. Overrides
	// the policy's `[token] issuer`.
	Issuer string `json:"issuer,omitempty"`

	// Accepted token audiences (`aud`), one or more. Overrides the policy's
	// `[token] audience`. The same name as in the Caddyfile and the policy.
	Audience []string `json:"audience,omitempty"`

	// How often the JWKS is refetched from the issuer. Default: 10m.
	JWKSRefresh caddy.Duration `json:"jwks_refresh,omitempty"`

	// The least time between two fetches prompted by unknown key ids. Default: 10s.
	JWKSMinInterval caddy.Duration `json:"jwks_min_interval,omitempty"`

	// A PEM file of the CA(s) that sign the issuer's TLS certificate, for private IdPs.
	IdPCAFile string `json:"idp_ca_file,omitempty"`

	// What to do with a streamed request a limit settles from usage but whose client
	// did not ask for usage: `add` (default) adds
	// `"stream_options":{"include_usage":true}` and removes the usage-only chunk from
	// the response; `off` leaves it alone (the reservation is then kept in full).
	StreamUsage string `json:"stream_usage,omitempty"`

	// The store of the policy's cluster-scoped limits and caps (`scope = "cluster"`),
	// shared by every replica. Required when the policy has any.
	LimitsStore *LimitsStore `json:"limits_store,omitempty"`

	eng      *engine.Engine
	jwks     *jwksSource
	info     engineInfo
	poolKey  string
	logger   *zap.Logger
	strip    []string
	decideFn func(req, cert, body, out []byte) (int, error)
	// identityHeader() and ruleHeader() in canonical form, to set without a lookup.
	identityKey, ruleKey string
}

// LimitsStore is a Redis-protocol server (Redis 7, Valkey, a managed one) that holds
// the buckets and in-flight slots of cluster-scoped limits for every replica.
type LimitsStore struct {
	// `redis://[user:password@]host:6379/0`, `rediss://…` (TLS, always verified),
	// `valkey://`, `valkeys://` or `unix:///path`. Placeholders such as
	// `{env.ZTP_LIMITS_STORE}` are replaced at provisioning, so a password need not be
	// in the config.
	URL string `json:"url"`

	// PEM file of the CA(s) that sign a TLS store's certificate (default: the system's).
	CAFile string `json:"ca_file,omitempty"`

	// The longest a request waits for the store (connecting and the reply).
	// Default: 50ms; at most 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// What a request gets when the store does not answer within the timeout: `local`
	// (default: this replica's own buckets judge it), `deny` (503, fail closed) or
	// `allow` (not limited). While the store is down only one request a second tries
	// it; the others go straight to this.
	OnFailure string `json:"on_failure,omitempty"`
}

func (s *LimitsStore) timeout() time.Duration {
	if s.Timeout <= 0 {
		return 50 * time.Millisecond
	}
	return time.Duration(s.Timeout)
}

func (s *LimitsStore) onFailure() string {
	if s.OnFailure == "" {
		return "local"
	}
	return s.OnFailure
}

// The response's rate limit headers, canonical (http.Header.Set's spelling).
var (
	rateLimitKey       = http.CanonicalHeaderKey("RateLimit")
	rateLimitPolicyKey = http.CanonicalHeaderKey("RateLimit-Policy")
)

// engineInfo is the engine's self-description (ztp_engine_describe).
type engineInfo struct {
	NeedsBody bool     `json:"needs_body"`
	MaxBody   int64    `json:"max_body"`
	Mode      string   `json:"mode"`
	Rules     []string `json:"rules"`
	Limits    []string `json:"limits"`
	// Limits and caps whose scope is "cluster".
	ClusterScoped []string `json:"cluster_scoped"`
	Token         *struct {
		Header    string `json:"header"`
		JWKSFile  string `json:"jwks_file"`
		Issuer    string `json:"issuer"`
		Discovery bool   `json:"discovery"`
	} `json:"token"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.zt_policy",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision compiles the policy, loads its JWKS and takes over the rate-limit buckets
// of the previous configuration's engine for every limit whose definition is unchanged.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := registerMetrics(ctx); err != nil {
		return fmt.Errorf("zt_policy: metrics: %v", err)
	}
	if err := engine.CheckABI(); err != nil {
		return fmt.Errorf("zt_policy: %v", err)
	}
	policy, name, err := h.policyText()
	if err != nil {
		return err
	}
	eng, st, err := h.buildEngine(policy, name)
	if err != nil {
		return err
	}
	provisioned := false
	defer func() {
		if !provisioned {
			// Provisioning failed: this handler will never decide with it.
			eng.Free()
			_, _ = pool.Delete(h.poolKey)
		}
	}()
	desc, err := eng.Describe()
	if err == nil {
		err = json.Unmarshal([]byte(desc), &h.info)
	}
	if err != nil {
		return fmt.Errorf("zt_policy: describing the engine: %v", err)
	}
	if len(h.info.ClusterScoped) > 0 && h.LimitsStore == nil {
		return fmt.Errorf("zt_policy: %s: %s scope = \"cluster\", but no limits_store is configured (see the README, \"Several replicas\")",
			name, strings.Join(h.info.ClusterScoped, ", "))
	}
	if h.LimitsStore != nil && len(h.info.ClusterScoped) == 0 {
		h.logger.Warn("limits_store is configured but no limit of the policy has scope = \"cluster\"; every limit stays local",
			zap.String("policy", name))
	}
	// With an issuer in the Caddyfile the keys come from the IdP, not from a file.
	if h.Issuer == "" {
		if err := h.loadJWKS(eng, name); err != nil {
			return err
		}
	}
	issuer := h.Issuer
	if issuer == "" && h.info.Token != nil && h.info.Token.Discovery && h.JWKSFile == "" && h.info.Token.JWKSFile == "" {
		issuer = h.info.Token.Issuer
	}
	if issuer != "" {
		interval, minInterval := time.Duration(h.JWKSRefresh), time.Duration(h.JWKSMinInterval)
		if interval <= 0 {
			interval = 10 * time.Minute
		}
		if minInterval <= 0 {
			minInterval = 10 * time.Second
		}
		src, err := newJWKSSource(issuer, h.IdPCAFile, eng, h.logger, interval, minInterval)
		if err != nil {
			return err
		}
		fetchCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
		src.load(fetchCtx)
		cancel()
		go src.run(ctx)
		h.jwks = src
	}

	// The next configuration's engine takes over this one's buckets.
	st.mu.Lock()
	previous := st.latest
	st.latest = eng.Clone()
	st.mu.Unlock()
	previous.Free()

	provisioned = true
	h.eng = eng
	h.decideFn = eng.Decide
	h.strip = append([]string{h.identityHeader(), h.ruleHeader()}, h.StripHeaders...)
	for i, name := range h.strip {
		h.strip[i] = http.CanonicalHeaderKey(name)
	}
	// Decisions name rules and limits of this policy: decoding them allocates nothing.
	engine.Names.Learn(append(append([]string(nil), h.info.Rules...), h.info.Limits...)...)
	h.identityKey = http.CanonicalHeaderKey(h.identityHeader())
	h.ruleKey = http.CanonicalHeaderKey(h.ruleHeader())
	h.logger.Info("policy loaded", zap.String("policy", name), zap.Int("rules", len(h.info.Rules)),
		zap.Int("limits", len(h.info.Limits)), zap.String("mode", h.info.Mode))
	return nil
}

// buildEngine compiles the policy with the Caddyfile's token settings into an engine
// that takes over the buckets of the newest engine of the same policy (the reload
// pool, whose entry it takes a reference to), every limit whose definition is
// unchanged: a reload does not reset them.
func (h *Handler) buildEngine(policy []byte, name string) (*engine.Engine, *sharedState, error) {
	b, err := engine.NewBuilder(policy, name)
	if err != nil {
		return nil, nil, fmt.Errorf("zt_policy: %v", err)
	}
	defer b.Free() // a no-op once built
	if h.Issuer != "" {
		if err := b.SetToken(h.Issuer, h.Audience); err != nil {
			return nil, nil, fmt.Errorf("zt_policy: issuer: %v", err)
		}
	}
	if s := h.LimitsStore; s != nil {
		repl := caddy.NewReplacer()
		url, ca := repl.ReplaceAll(s.URL, ""), repl.ReplaceAll(s.CAFile, "")
		if err := b.SetStore(url, ca, s.timeout(), s.onFailure()); err != nil {
			return nil, nil, fmt.Errorf("zt_policy: limits_store: %v", err)
		}
	}
	// The reload pool is keyed by the policy: its file, or an inline policy's text, so
	// two sites with inline policies share buckets only when the policies are equal.
	h.poolKey = "zt_policy:" + name
	if h.PolicyFile == "" {
		sum := sha256.Sum256(policy)
		h.poolKey = "zt_policy:inline:" + hex.EncodeToString(sum[:])
	}
	val, _, err := pool.LoadOrNew(h.poolKey, func() (caddy.Destructor, error) { return &sharedState{}, nil })
	if err != nil {
		return nil, nil, err
	}
	st := val.(*sharedState)
	st.mu.Lock()
	if st.latest != nil {
		if kept, err := b.Inherit(st.latest); err == nil && kept > 0 {
			h.logger.Info("rate-limit buckets kept across the reload", zap.Int("limits", kept))
		}
	}
	st.mu.Unlock()
	eng, err := b.Build()
	if err != nil {
		_, _ = pool.Delete(h.poolKey)
		return nil, nil, fmt.Errorf("zt_policy: %v", err)
	}
	return eng, st, nil
}

func (h *Handler) policyText() ([]byte, string, error) {
	switch {
	case h.PolicyFile != "" && h.Policy != "":
		return nil, "", errors.New("zt_policy: give policy_file or policy, not both")
	case h.PolicyFile != "":
		abs, err := filepath.Abs(h.PolicyFile)
		if err != nil {
			return nil, "", fmt.Errorf("zt_policy: policy_file: %v", err)
		}
		b, err := os.ReadFile(abs)
		if err != nil {
			return nil, "", fmt.Errorf("zt_policy: reading the policy: %v", err)
		}
		return b, abs, nil
	case h.Policy != "":
		return []byte(h.Policy), "inline policy", nil
	default:
		return nil, "", errors.New("zt_policy: a policy_file (or an inline policy) is required")
	}
}

func (h *Handler) loadJWKS(eng *engine.Engine, policyName string) error {
	path := h.JWKSFile
	if path == "" && h.info.Token != nil && h.info.Token.JWKSFile != "" {
		path = h.info.Token.JWKSFile
		if !filepath.IsAbs(path) && h.PolicyFile != "" {
			path = filepath.Join(filepath.Dir(policyName), path)
		}
	}
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("zt_policy: reading the JWKS: %v", err)
	}
	msg, err := eng.SetJWKS(b)
	if err != nil {
		return fmt.Errorf("zt_policy: %s: %v", path, err)
	}
	logJWKS(h.logger, msg, zap.String("file", path))
	return nil
}

// logJWKS logs a loaded key set; keys the engine skipped (an RSA key under 2048 bits,
// an encryption key, an unknown curve: each named by index and kid) make it a warning.
func logJWKS(logger *zap.Logger, result string, fields ...zap.Field) {
	fields = append(fields, zap.String("result", result))
	if strings.Contains(result, "skipped") {
		logger.Warn("JWKS loaded, some keys refused", fields...)
		return
	}
	logger.Info("JWKS loaded", fields...)
}

// Validate checks the configuration after provisioning.
func (h *Handler) Validate() error {
	for _, name := range h.strip {
		if name == "" || strings.ContainsAny(name, " :\t\r\n") {
			return fmt.Errorf("zt_policy: %q is not a header name", name)
		}
	}
	if h.StreamUsage != "" && h.StreamUsage != "add" && h.StreamUsage != "off" {
		return fmt.Errorf("zt_policy: stream_usage %q is not add or off", h.StreamUsage)
	}
	if s := h.LimitsStore; s != nil {
		if _, ok := engine.OnFailure[s.onFailure()]; !ok {
			return fmt.Errorf("zt_policy: limits_store on_failure %q is not local, deny or allow", s.OnFailure)
		}
		if t := s.timeout(); t < time.Millisecond || t > 10*time.Second {
			return fmt.Errorf("zt_policy: limits_store timeout %v is not between 1ms and 10s", t)
		}
	}
	return nil
}

// Cleanup lets go of the reload pool's entry; the buckets stay with the shared state
// until the last configuration using the policy stops. The engine outlives it for as
// long as this configuration's requests do.
func (h *Handler) Cleanup() error {
	// h.eng is not freed here: requests of this configuration may still be in flight
	// (see engine). It is released once the handler is unreachable.
	if h.poolKey != "" {
		_, err := pool.Delete(h.poolKey)
		return err
	}
	return nil
}

func (h *Handler) identityHeader() string {
	if h.IdentityHeader != "" {
		return h.IdentityHeader
	}
	return "X-Zt-Identity"
}

func (h *Handler) ruleHeader() string {
	if h.RuleHeader != "" {
		return h.RuleHeader
	}
	return "X-Zt-Rule"
}

// ServeHTTP decides the request; only an allowed request reaches next.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	start := time.Now()
	forwarded := false
	for _, name := range h.strip {
		delete(r.Header, name) // canonical since Provision: Header.Del, without redoing that
	}
	if name := h.hopByHopConflict(r); name != "" {
		// A Connection token would make reverse_proxy drop the header this module sets
		// after the decision; a trailer would add one after it. Neither is honest.
		h.logger.Warn("request refused: it names an identity header as hop-by-hop or as a trailer",
			zap.String("header", name), zap.String("method", r.Method), zap.String("uri", r.RequestURI),
			zap.String("remote_ip", clientIP(r)))
		decisions.WithLabelValues("denied", "bad_request", "").Inc()
		return h.writeError(w, http.StatusBadRequest, "bad_request",
			fmt.Sprintf("the %s header may not be named in Connection or Trailer", name), nil)
	}
	// What reverse_proxy will do (RFC 9110 7.6.1), done before deciding, so the
	// decision sees the headers the upstream gets: a Content-Type named in Connection
	// would otherwise reach vLLM absent, and vLLM parses a body without one as JSON.
	removeConnectionHeaders(r.Header)
	var cert []byte
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		cert = r.TLS.PeerCertificates[0].Raw
	}
	body, bodySize, err := h.readBody(r)
	if err != nil {
		return h.refuseUnreadable(w, r, err, start)
	}
	if rb, ok := r.Body.(*replayBody); ok {
		// A request that does not go on leaves its body buffer to the next one.
		defer func() {
			if !forwarded {
				rb.release()
			}
		}()
	}
	h.guardTrailers(r)

	fields := engine.RequestFields{
		Method: r.Method, Scheme: scheme(r), Host: r.Host, Path: r.URL.Path,
		Query: r.URL.RawQuery, RemoteIP: clientIP(r), BodySize: bodySize,
	}
	bp := requestBuffers.Get().(*[]byte)
	defer requestBuffers.Put(bp)
	req := engine.AppendRequestHeaders(engine.AppendRequestFields((*bp)[:0], &fields), r.Header, r.Host)
	*bp = req
	d, err := h.decide(req, cert, body)
	if err == nil && d.JWKSMiss && h.jwks != nil && h.jwks.refreshForUnknownKey(r.Context()) {
		// The IdP may have rotated its keys: decide again with the fresh JWKS.
		d, err = h.decide(req, cert, body)
	}
	if err != nil {
		// Fail closed: the engine did not answer, so nothing passes.
		decisionSeconds.Observe(time.Since(start).Seconds())
		decisions.WithLabelValues("error", "engine_error", "").Inc()
		h.logger.Error("decision failed; request refused", zap.Error(err),
			zap.String("method", r.Method), zap.String("uri", r.RequestURI), zap.String("remote_ip", fields.RemoteIP))
		return h.writeError(w, http.StatusInternalServerError, "engine_error", "the policy engine failed", nil)
	}
	h.log(r, &fields, &d)
	countDecision(&d)
	if d.Store != "" {
		h.noteStore(&d)
	}
	h.setVars(r, &d)

	// The header values share one allocation; each slice is capped at its one value.
	vals := make([]string, 4)
	if d.HasLimit {
		vals[0], vals[1] = d.RateLimit, d.RateLimitPolicy
		wh := w.Header()
		wh[rateLimitKey], wh[rateLimitPolicyKey] = vals[0:1:1], vals[1:2:2]
	}
	if !d.Allowed {
		decisionSeconds.Observe(time.Since(start).Seconds())
		if d.Status == http.StatusRequestEntityTooLarge && r.ContentLength > h.info.MaxBody {
			return h.writeTooLarge(w, r, &d)
		}
		return h.writeDeny(w, &d)
	}
	if d.Identity != "" {
		vals[2] = d.Identity
		r.Header[h.identityKey] = vals[2:3:3]
	}
	if d.Rule != "" && !d.Audit {
		vals[3] = d.Rule
		r.Header[h.ruleKey] = vals[3:4:4]
	}
	decisionSeconds.Observe(time.Since(start).Seconds())
	forwarded = true // its buffer goes back when the proxy closes the body
	if d.HasLease {
		return h.serveLeased(w, r, next, &d)
	}
	return next.ServeHTTP(w, r)
}

// refuseUnreadable answers a request whose body could not be read: 400, one decision
// log line naming the cause, and a count by cause. (The client is often gone already.)
func (h *Handler) refuseUnreadable(w http.ResponseWriter, r *http.Request, err error, start time.Time) error {
	cause := unreadableCause(err)
	h.logger.Warn("denied", zap.Int("status", http.StatusBadRequest), zap.String("reason", "unreadable_request"),
		zap.String("cause", cause), zap.Error(err), zap.String("method", r.Method),
		zap.String("uri", r.RequestURI), zap.String("remote_ip", clientIP(r)))
	unreadable.WithLabelValues(cause).Inc()
	decisions.WithLabelValues("denied", "bad_request", "").Inc()
	decisionSeconds.Observe(time.Since(start).Seconds())
	w.Header().Set("Connection", "close")
	return h.writeError(w, http.StatusBadRequest, "bad_request", "the request body could not be read ("+cause+")", nil)
}

// unreadableCause names why a body read failed, from net/http's errors.
func unreadableCause(err error) string {
	msg := err.Error()
	var ne net.Error
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated"
	case strings.Contains(msg, "chunk"):
		return "bad_chunking"
	case strings.Contains(msg, "content length") || strings.Contains(msg, "Content-Length"):
		return "length_mismatch"
	case errors.As(err, &ne) && ne.Timeout():
		return "too_slow"
	default:
		return "other"
	}
}

// decisionBuffers holds the buffers decisions are encoded into by the engine.
var decisionBuffers = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

// decide calls the engine with a pooled output buffer, growing it when a decision does
// not fit. The decoded decision copies what it keeps, so the buffer goes back at once.
func (h *Handler) decide(req, cert, body []byte) (engine.Decision, error) {
	bp := decisionBuffers.Get().(*[]byte)
	defer decisionBuffers.Put(bp)
	out := *bp
	for {
		n, err := h.decideFn(req, cert, body, out)
		if errors.Is(err, engine.ErrBufferTooSmall) && len(out) < 1<<20 {
			out = make([]byte, len(out)*4)
			continue
		}
		if err != nil {
			return engine.Decision{}, err
		}
		return engine.DecodeDecision(out[:n])
	}
}

// readBody reads the body only as far as the decision needs, and never past the
// policy's limit: a declared size over the limit is decided without reading, and an
// undeclared (chunked) body is read up to limit+1 bytes. What was read is put back in
// front of the rest, so the upstream gets the body byte for byte.
func (h *Handler) readBody(r *http.Request) ([]byte, uint64, error) {
	max := h.info.MaxBody
	declared := r.ContentLength
	if r.Body == nil || r.Body == http.NoBody || declared == 0 {
		return nil, 0, nil
	}
	if declared > max {
		return nil, uint64(declared), nil
	}
	if declared > 0 && !h.info.NeedsBody {
		return nil, uint64(declared), nil
	}
	var read []byte
	var pooled *[]byte
	if declared > 0 {
		// net/http's body reader stops at the declared length (a short body is an
		// error), so exactly that many bytes are read, once, into a pooled buffer.
		pooled = getBodyBuffer(int(declared))
		if _, err := io.ReadFull(r.Body, *pooled); err != nil {
			putBodyBuffer(pooled)
			return nil, 0, err
		}
		read = *pooled
	} else {
		buf := bytes.NewBuffer(make([]byte, 0, 4096))
		if _, err := io.Copy(buf, io.LimitReader(r.Body, max+1)); err != nil {
			return nil, 0, err
		}
		read = buf.Bytes()
	}
	r.Body = &replayBody{read: read, rest: r.Body, pooled: pooled}
	return read, uint64(len(read)), nil
}

// bodyBuffers pools the buffers request bodies are read into, by power-of-two size
// class (class c holds buffers of capacity 1<<c): a long prompt costs no allocation,
// no zeroing and no garbage collection work.
var bodyBuffers [31]sync.Pool

const minBodyClass = 12 // 4KiB

// getBodyBuffer returns a buffer of length n from the pool of its size class.
func getBodyBuffer(n int) *[]byte {
	c := max(bits.Len(uint(n-1)), minBodyClass)
	if c >= len(bodyBuffers) {
		b := make([]byte, n)
		return &b
	}
	if p, ok := bodyBuffers[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<c)
	return &b
}

// putBodyBuffer gives a buffer of getBodyBuffer back; nothing may use it afterwards.
func putBodyBuffer(p *[]byte) {
	c := bits.Len(uint(cap(*p) - 1))
	if c < len(bodyBuffers) && cap(*p) == 1<<c {
		bodyBuffers[c].Put(p)
	}
}

// hopByHopConflict returns a header this module strips or sets that the request names
// in Connection or declares in Trailer, or "".
func (h *Handler) hopByHopConflict(r *http.Request) string {
	for _, field := range [...]string{"Connection", "Trailer"} {
		for name := range fieldNames(r.Header, field) {
			if name = http.CanonicalHeaderKey(name); slices.Contains(h.strip, name) {
				return name
			}
		}
	}
	return ""
}

// removeConnectionHeaders removes the fields the Connection header names, as every
// proxy must (and reverse_proxy does) — except Upgrade, which reverse_proxy keeps for
// an upgrade (it sends Connection: Upgrade and the Upgrade it read): the engine reads
// it as request.upgrade, and only a rule that names that field allows the tunnel.
func removeConnectionHeaders(hd http.Header) {
	for name := range fieldNames(hd, "Connection") {
		if !strings.EqualFold(name, "Upgrade") {
			hd.Del(name)
		}
	}
}

// fieldNames yields the field names a list-valued header (Connection, Trailer) gives,
// trimmed as HTTP trims list elements, empty elements skipped.
func fieldNames(hd http.Header, field string) iter.Seq[string] {
	return func(yield func(string) bool) {
		for _, v := range hd[field] {
			for token := range strings.SplitSeq(v, ",") {
				if token = textproto.TrimString(token); token != "" && !yield(token) {
					return
				}
			}
		}
	}
}

// trailerGuard removes, when the body ends, trailer fields named like the headers the
// module strips or sets: Go adds every trailer the client sends to r.Trailer then,
// declared or not, and reverse_proxy forwards what it finds there at that moment.
type trailerGuard struct {
	io.ReadCloser
	req   *http.Request
	names []string
}

func (g *trailerGuard) Read(p []byte) (int, error) {
	n, err := g.ReadCloser.Read(p)
	if err == io.EOF {
		for _, name := range g.names {
			delete(g.req.Trailer, name)
		}
	}
	return n, err
}

// guardTrailers wraps the body of a request that can carry trailers (chunked, or
// HTTP/2 and later).
func (h *Handler) guardTrailers(r *http.Request) {
	if r.Body == nil || r.Body == http.NoBody || (r.ContentLength >= 0 && r.ProtoMajor < 2) {
		return
	}
	for _, name := range h.strip {
		delete(r.Trailer, name)
	}
	r.Body = &trailerGuard{ReadCloser: r.Body, req: r, names: h.strip}
}

// requestBuffers holds the buffers requests are encoded into for the engine.
var requestBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// replayBody gives the bytes the decision read, then the rest of the original body.
// Its buffer goes back to the pool on Close, which the transport may call while
// another goroutine still reads: the lock keeps a Read from copying out of a buffer
// that another request already owns.
//
// `read` may be given in three parts (addStreamUsage inserts a member without copying
// the body): read, then insert, then tail.
type replayBody struct {
	mu     sync.Mutex
	read   []byte
	insert []byte
	tail   []byte
	rest   io.ReadCloser
	pooled *[]byte
}

func (b *replayBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	for _, part := range [3]*[]byte{&b.read, &b.insert, &b.tail} {
		if len(*part) > 0 {
			n := copy(p, *part)
			*part = (*part)[n:]
			b.mu.Unlock()
			return n, nil
		}
	}
	b.mu.Unlock()
	return b.rest.Read(p)
}

func (b *replayBody) Close() error {
	b.release()
	return b.rest.Close()
}

// release gives the buffer back to the pool; what was not read yet is dropped.
func (b *replayBody) release() {
	b.mu.Lock()
	if b.pooled != nil {
		putBodyBuffer(b.pooled)
		b.pooled, b.read, b.insert, b.tail = nil, nil, nil, nil
	}
	b.mu.Unlock()
}

func scheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// log writes the one structured line every decision gets.
func (h *Handler) log(r *http.Request, f *engine.RequestFields, d *engine.Decision) {
	msg, level := "allowed", zapcore.InfoLevel
	switch {
	case d.Audit && d.Deny:
		msg, level = "audit: would deny", zapcore.WarnLevel
	case !d.Allowed:
		msg = "denied"
	}
	ce := h.logger.Check(level, msg)
	if ce == nil {
		return
	}
	fields := []zap.Field{
		zap.Int("status", d.Status), zap.String("reason", d.Reason), zap.String("rule", d.Rule),
		zap.String("identity", d.Identity), zap.Strings("matched", d.Matched),
		zap.String("message", d.Message), zap.String("method", f.Method), zap.String("uri", r.RequestURI),
		zap.String("remote_ip", f.RemoteIP),
	}
	if d.Limit != "" {
		fields = append(fields, zap.String("limit", d.Limit), zap.Uint32("remaining", d.Remaining))
	}
	if len(d.Errors) > 0 {
		fields = append(fields, zap.Strings("rule_errors", d.Errors))
	}
	if d.Detail != "" {
		fields = append(fields, zap.String("detail", d.Detail))
	}
	if d.Reserved != "" {
		fields = append(fields, zap.String("reserved", d.Reserved))
	}
	if d.Store != "" {
		fields = append(fields, zap.String("limits_store", d.Store))
	}
	ce.Write(fields...)
}

// setVars makes the decision available to later handlers and to access logs:
// {http.vars.zt_policy.identity}, .rule, .reason, and user_id in the access log.
func (h *Handler) setVars(r *http.Request, d *engine.Decision) {
	ctx := r.Context()
	// What caddyhttp.SetVar does for a non-nil value, with one context lookup for three.
	if vars, ok := ctx.Value(caddyhttp.VarsCtxKey).(map[string]any); ok {
		vars["zt_policy.identity"] = d.Identity
		vars["zt_policy.rule"] = d.Rule
		vars["zt_policy.reason"] = d.Reason
	}
	if repl, ok := ctx.Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok && d.Identity != "" {
		repl.Set("http.auth.user.id", d.Identity)
	}
	if extra, ok := ctx.Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
		extra.Set(zap.String("zt_policy_rule", d.Rule))
		extra.Set(zap.String("zt_policy_reason", d.Reason))
	}
}

// errorTypes maps statuses to the OpenAI error types SDKs know.
func errorType(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return "authentication_error"
	case status == http.StatusForbidden:
		return "permission_error"
	case status == http.StatusTooManyRequests:
		return "rate_limit_error"
	case status >= 500:
		return "server_error"
	default:
		return "invalid_request_error"
	}
}

func (h *Handler) writeDeny(w http.ResponseWriter, d *engine.Decision) error {
	msg := d.Message
	if d.Rule != "" && !strings.Contains(msg, d.Rule) {
		msg = fmt.Sprintf("%s (rule %q)", msg, d.Rule)
	}
	if d.HasRetryAfter {
		w.Header().Set("Retry-After", strconv.FormatUint(d.RetryAfter, 10))
	} else if d.Reason == "store_unavailable" {
		w.Header().Set("Retry-After", "1") // the store is tried again within a second
	}
	if d.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="zt_policy"`)
	}
	return h.writeError(w, d.Status, d.Reason, msg, d)
}

// How long, and how much, a 413 for a declared-oversize body lingers reading what the
// client still sends (see writeTooLarge).
const (
	lingerFor   = time.Second
	lingerBytes = 16 << 20
)

// writeTooLarge answers a body declared over the limit at once, without reading it,
// and closes the connection. net/http alone would first read up to 256 KiB of the body
// to keep the connection, holding the reply until the client had sent it. After the
// reply it lingers a moment, dropping what the client is still sending, so a client
// that writes its whole body before reading (most do) gets the 413, not a reset — as
// net/http does for bodies over 256 KiB.
func (h *Handler) writeTooLarge(w http.ResponseWriter, r *http.Request, d *engine.Decision) error {
	w.Header().Set("Connection", "close")
	rc := http.NewResponseController(w)
	_ = rc.EnableFullDuplex() // HTTP/1: the body stays readable after the reply
	err := h.writeDeny(w, d)
	_ = rc.Flush()
	_ = rc.SetReadDeadline(time.Now().Add(lingerFor))
	_, _ = io.CopyN(io.Discard, r.Body, lingerBytes)
	return err
}

// writeError writes the OpenAI error shape: {"error":{"message","type","code"}}.
func (h *Handler) writeError(w http.ResponseWriter, status int, code, message string, d *engine.Decision) error {
	body := map[string]any{"error": map[string]any{
		"message": message,
		"type":    errorType(status),
		"code":    code,
		"param":   nil,
	}}
	if d != nil && d.Rule != "" {
		body["error"].(map[string]any)["rule"] = d.Rule
	}
	b, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, err := w.Write(append(b, '\n'))
	return err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
