package ztpolicy

// The wire format's constants come from the header (zt_policy.h), where rust/ffi
// defines them once.

// #include "zt_policy.h"
import "C"

import (
	"encoding/binary"
	"errors"
	"net/http"
	"strings"
	"sync"
)

// requestFields is what the engine reads of a request before its headers (which
// appendRequestHeaders encodes straight from http.Header), the certificate and the body.
type requestFields struct {
	method, scheme, host, path, query, remoteIP string
	bodySize                                    uint64
}

// appendRequestFields appends everything before the headers.
func appendRequestFields(buf []byte, f *requestFields) []byte {
	buf = append(buf, C.ZTP_REQUEST_VERSION)
	buf = binary.LittleEndian.AppendUint64(buf, f.bodySize)
	for _, s := range [...]string{f.method, f.scheme, f.host, f.path, f.query, f.remoteIP} {
		buf = appendString(buf, s)
	}
	return buf
}

// appendRequestHeaders appends the headers of an http.Request (plus Host, which Go
// keeps apart) without building a list of them first.
func appendRequestHeaders(buf []byte, h http.Header, host string) []byte {
	at := len(buf)
	buf = binary.LittleEndian.AppendUint32(buf, 0)
	n := uint32(0)
	for name, values := range h {
		for _, v := range values {
			buf = appendString(appendString(buf, name), v)
			n++
		}
	}
	if host != "" {
		buf = appendString(appendString(buf, "Host"), host)
		n++
	}
	binary.LittleEndian.PutUint32(buf[at:], n)
	return buf
}

func appendString(buf []byte, s string) []byte {
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(s)))
	return append(buf, s...)
}

// decision is a decoded ztp decision.
type decision struct {
	Allowed         bool
	Audit           bool
	Deny            bool
	HasLimit        bool
	Status          int
	Reason          string
	Remaining       uint32
	RetryAfter      uint64
	HasRetryAfter   bool
	JWKSMiss        bool
	Message         string
	Rule            string
	Identity        string
	Limit           string
	RateLimit       string
	RateLimitPolicy string
	Matched         []string
	Errors          []string
}

// reasons by ztp_reason number (TestReasonNamesAreTheHeaders checks them against the
// header's enum).
var reasons = [...]string{
	"allowed", "no_identity", "invalid_certificate", "invalid_token", "body_too_large",
	"denied_by_rule", "no_allow_rule", "rate_limited", "cost_exceeds_burst",
	"limit_table_full", "limit_error", "engine_error", "bad_request", "malformed_body",
}

var errDecision = errors.New("malformed decision from the engine")

func decodeDecision(b []byte) (decision, error) {
	var d decision
	if len(b) < C.ZTP_DECISION_AT_STRINGS || b[0] != C.ZTP_DECISION_VERSION {
		return d, errDecision
	}
	flags := b[C.ZTP_DECISION_AT_FLAGS]
	d.Allowed = flags&C.ZTP_DECISION_ALLOWED != 0
	d.Audit = flags&C.ZTP_DECISION_AUDIT != 0
	d.Deny = flags&C.ZTP_DECISION_DENY != 0
	d.HasLimit = flags&C.ZTP_DECISION_HAS_LIMIT != 0
	d.HasRetryAfter = flags&C.ZTP_DECISION_HAS_RETRY_AFTER != 0
	d.JWKSMiss = flags&C.ZTP_DECISION_JWKS_MISS != 0
	d.Status = int(binary.LittleEndian.Uint16(b[C.ZTP_DECISION_AT_STATUS:]))
	if int(b[C.ZTP_DECISION_AT_REASON]) >= len(reasons) {
		return d, errDecision
	}
	d.Reason = reasons[b[C.ZTP_DECISION_AT_REASON]]
	d.Remaining = binary.LittleEndian.Uint32(b[C.ZTP_DECISION_AT_REMAINING:])
	d.RetryAfter = binary.LittleEndian.Uint64(b[C.ZTP_DECISION_AT_RETRY_AFTER:])
	rest := b[C.ZTP_DECISION_AT_STRINGS:]
	var fields [C.ZTP_DECISION_STRINGS]string
	for i := range fields {
		if len(rest) < 4 {
			return d, errDecision
		}
		n := binary.LittleEndian.Uint32(rest)
		rest = rest[4:]
		if uint64(n) > uint64(len(rest)) {
			return d, errDecision
		}
		if i == 4 {
			fields[i] = string(rest[:n]) // RateLimit: its remaining count changes
		} else {
			fields[i] = strs.intern(rest[:n])
		}
		rest = rest[n:]
	}
	if len(rest) != 0 {
		return d, errDecision
	}
	d.Message, d.Rule, d.Identity, d.Limit = fields[0], fields[1], fields[2], fields[3]
	d.RateLimit, d.RateLimitPolicy = fields[4], fields[5]
	if fields[6] != "" {
		d.Matched = strs.split(fields[6])
	}
	if fields[7] != "" {
		d.Errors = strings.Split(fields[7], "\n")
	}
	return d, nil
}

// strs interns the names decisions repeat — the rules and limits of the policies
// loaded (Provision calls learn) — so decoding a decision allocates next to nothing.
// It holds only names known from policies, never what a request brings (identities,
// messages), and it is bounded.
var strs = interner{strings: map[string]string{}, lists: map[string][]string{}}

const internMax = 8192

type interner struct {
	mu      sync.RWMutex
	strings map[string]string
	lists   map[string][]string
}

// learn adds names from a policy, up to internMax in all.
func (in *interner) learn(names ...string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, s := range names {
		if len(in.strings) >= internMax {
			return
		}
		in.strings[s] = s
	}
}

// intern returns the learned string equal to b, or a new one.
func (in *interner) intern(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	in.mu.RLock()
	s, ok := in.strings[string(b)] // no allocation: the compiler looks up with b's bytes
	in.mu.RUnlock()
	if ok {
		return s
	}
	return string(b)
}

// split returns the lines of s; callers must not modify the slice. Lists made only of
// learned names are kept (bounded), others are split anew.
func (in *interner) split(s string) []string {
	in.mu.RLock()
	l, ok := in.lists[s]
	in.mu.RUnlock()
	if ok {
		return l
	}
	l = strings.Split(s, "\n")
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, name := range l {
		if _, known := in.strings[name]; !known {
			return l
		}
	}
	if len(in.lists) < internMax {
		in.lists[s] = l
	}
	return l
}
