package ztpolicy

import (
	"bytes"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/zt-policy/zt-policy/go-module/internal/engine"
)

// serveLeased passes on a request that holds a lease (reservations of limits that
// settle from usage, in-flight slots) and ends the lease when the response is done,
// however it ends: written, client gone, upstream failed, or a panic further on.
func (h *Handler) serveLeased(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, d *engine.Decision) (err error) {
	inFlight.Inc()
	var uw *usageWriter
	if d.Reserved != "" {
		countReserved(d.Reserved)
		strip := d.AddStreamUsage && h.StreamUsage != "off" && addStreamUsage(r)
		uw = newUsageWriter(w, strip)
		w = uw
	}
	defer func() {
		p := recover()
		inFlight.Dec()
		h.endLease(r, d, uw, err, p)
		if uw != nil {
			uw.release()
		}
		if p != nil {
			panic(p)
		}
	}()
	return next.ServeHTTP(w, r)
}

// includeUsage is what addStreamUsage inserts before the body's closing brace.
const includeUsage = `,"stream_options":{"include_usage":true}`

// addStreamUsage makes vLLM end the stream with a usage chunk: the engine said the
// body is a JSON object that streams and has no stream_options, so inserting the
// member before its last `}` changes nothing else vLLM reads. False if the body is not
// the buffered one the engine judged.
func addStreamUsage(r *http.Request) bool {
	body := r.Body
	if g, ok := body.(*trailerGuard); ok {
		body = g.ReadCloser // a chunked or HTTP/2 body
	}
	rb, ok := body.(*replayBody)
	if !ok {
		return false
	}
	rb.mu.Lock()
	defer rb.mu.Unlock()
	end := bytes.LastIndexByte(rb.read, '}')
	if end < 0 || len(bytes.TrimSpace(rb.read[end+1:])) != 0 || len(rb.insert) != 0 {
		return false
	}
	rb.read, rb.insert, rb.tail = rb.read[:end], []byte(includeUsage), rb.read[end:]
	if r.ContentLength > 0 {
		r.ContentLength += int64(len(includeUsage))
		if r.Header.Get("Content-Length") != "" {
			r.Header.Set("Content-Length", strconv.FormatInt(r.ContentLength, 10))
		}
	}
	return true
}

// How a response ended decides the settlement (see the README's table):
//   - it reported usage: settle to the usage;
//   - the upstream refused before generating — no connection (502/503 from the
//     proxy), or an error status without usage other than a timeout: refund all;
//   - anything else (client gone, stream cut, no usage chunk, a timeout, a panic):
//     the reservation stays spent.
func ending(r *http.Request, uw *usageWriter, err error, panicked bool) (engine.Ending, engine.Usage, string) {
	if panicked {
		return engine.EndKeep, engine.NoUsage, "handler_panic"
	}
	if uw != nil {
		if u, ok := uw.finish(); ok {
			return engine.EndUsage, u, "usage"
		}
	}
	if r.Context().Err() != nil {
		return engine.EndKeep, engine.NoUsage, "client_gone"
	}
	wrote := uw != nil && uw.wrote
	if err != nil && !wrote {
		code := http.StatusBadGateway
		var he caddyhttp.HandlerError
		if errors.As(err, &he) && he.StatusCode != 0 {
			code = he.StatusCode
		}
		if code == http.StatusBadGateway || code == http.StatusServiceUnavailable {
			return engine.EndRefund, engine.NoUsage, "upstream_unreachable"
		}
		return engine.EndKeep, engine.NoUsage, "upstream_error_" + strconv.Itoa(code)
	}
	status := 0
	if uw != nil {
		status = uw.status
	}
	switch {
	case status == http.StatusGatewayTimeout:
		return engine.EndKeep, engine.NoUsage, "upstream_timeout"
	case status >= 400:
		return engine.EndRefund, engine.NoUsage, "upstream_refused"
	case err != nil:
		return engine.EndKeep, engine.NoUsage, "upstream_failed_mid_response"
	case uw != nil && uw.mode == modeNone:
		return engine.EndKeep, engine.NoUsage, "response_not_readable"
	}
	return engine.EndKeep, engine.NoUsage, "no_usage"
}

// endLease settles the lease, logs the settlement and counts it.
func (h *Handler) endLease(r *http.Request, d *engine.Decision, uw *usageWriter, err error, p any) {
	end, usage, cause := ending(r, uw, err, p != nil)
	settled, serr := h.eng.Settle(d.Lease, end, usage)
	if serr != nil {
		h.logger.Error("settling a lease failed", zap.Error(serr), zap.Uint64("lease", d.Lease),
			zap.String("identity", d.Identity))
		return
	}
	level := zapcore.InfoLevel
	if len(settled) == 0 {
		level = zapcore.DebugLevel // slots only: nothing to report but their release
	}
	ce := h.logger.Check(level, "settled")
	for _, s := range settled {
		settledCounters.get(s.Limit, s.Rule, "").Add(float64(s.Charged))
	}
	if ce == nil {
		return
	}
	fields := make([]zap.Field, 0, 12)
	fields = append(fields, zap.String("identity", d.Identity), zap.String("cause", cause),
		zap.String("uri", r.RequestURI))
	if uw != nil {
		fields = append(fields, zap.Int("status", uw.status))
		if uw.stripped > 0 {
			fields = append(fields, zap.Int("usage_chunks_removed", uw.stripped))
		}
	}
	if len(settled) == 1 {
		// The common case, flat: one limit settles.
		fields = settledFields(fields, &settled[0], true)
	} else {
		for i := range settled {
			fields = append(fields, zap.Dict(settled[i].Limit, settledFields(nil, &settled[i], false)...))
		}
	}
	ce.Write(fields...)
}

// settledFields are one limit's settlement: its name (when flat), the rule, what was
// reserved, used (when the response gave it), charged, settled (charged − reserved)
// and what an empty bucket could not take.
func settledFields(f []zap.Field, s *engine.Settled, named bool) []zap.Field {
	if named {
		f = append(f, zap.String("limit", s.Limit))
	}
	f = append(f, zap.String("rule", s.Rule), zap.Uint64("reserved", s.Reserved),
		zap.Uint64("charged", s.Charged), zap.Int64("settled", int64(s.Charged)-int64(s.Reserved)))
	if s.Used != engine.UsageAbsent {
		f = append(f, zap.Uint64("used", s.Used))
	}
	if s.Unbilled > 0 {
		f = append(f, zap.Uint64("unbilled", s.Unbilled))
	}
	return f
}

// countReserved adds a decision's reservations ("limit=tokens" lines) to the metric.
func countReserved(reserved string) {
	for line := range strings.SplitSeq(reserved, "\n") {
		name, n, ok := strings.Cut(line, "=")
		if v, err := strconv.ParseUint(n, 10, 64); ok && err == nil {
			reservedCounters.get(name, "", "").Add(float64(v))
		}
	}
}
