package engine

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

// RequestFields is what the engine reads of a request before its headers (which
// AppendRequestHeaders encodes straight from http.Header), the certificate and the body.
type RequestFields struct {
	Method, Scheme, Host, Path, Query, RemoteIP string
	BodySize                                    uint64
}

// AppendRequestFields appends everything before the headers.
func AppendRequestFields(buf []byte, f *RequestFields) []byte {
	buf = append(buf, C.ZTP_REQUEST_VERSION)
	buf = binary.LittleEndian.AppendUint64(buf, f.BodySize)
	for _, s := range [...]string{f.Method, f.Scheme, f.Host, f.Path, f.Query, f.RemoteIP} {
		buf = appendString(buf, s)
	}
	return buf
}

// AppendRequestHeaders appends the headers of an http.Request (plus Host, which Go
// keeps apart) without building a list of them first.
func AppendRequestHeaders(buf []byte, h http.Header, host string) []byte {
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

// Decision is a decoded ztp decision.
type Decision struct {
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
	// Detail is for the log only: what the client's message must not say.
	Detail string
	// Lease is what the allowed request holds (reservations, in-flight slots) until
	// Settle ends it; 0 when HasLease is false.
	Lease    uint64
	HasLease bool
	// AddStreamUsage: add "stream_options":{"include_usage":true} to the streamed
	// request and remove the usage-only chunk from what the client receives.
	AddStreamUsage bool
	// Reserved is what the settled limits reserved: "limit=tokens" lines.
	Reserved string
	// Store: how cluster-scoped limits were judged ("" none met, "shared", or when the
	// store did not answer "local", "denied", "allowed").
	Store string
	// StoreEvent: the limits store changed state with this decision ("available", or
	// "unavailable: why"); logged once.
	StoreEvent string
}

// StoreOutcomes by ztp_store_outcome number.
var StoreOutcomes = [...]string{"", "shared", "local", "denied", "allowed"}

// Reasons by ztp_reason number (TestReasonNamesAreTheHeaders checks them against the
// header's enum).
var Reasons = [...]string{
	"allowed", "no_identity", "invalid_certificate", "invalid_token", "body_too_large",
	"denied_by_rule", "no_allow_rule", "rate_limited", "cost_exceeds_burst",
	"limit_table_full", "limit_error", "engine_error", "bad_request", "malformed_body",
	"concurrency_limit", "store_unavailable",
}

var ErrDecision = errors.New("malformed decision from the engine")

func DecodeDecision(b []byte) (Decision, error) {
	var d Decision
	if len(b) < C.ZTP_DECISION_AT_STRINGS || b[0] != C.ZTP_DECISION_VERSION {
		return d, ErrDecision
	}
	flags := b[C.ZTP_DECISION_AT_FLAGS]
	d.Allowed = flags&C.ZTP_DECISION_ALLOWED != 0
	d.Audit = flags&C.ZTP_DECISION_AUDIT != 0
	d.Deny = flags&C.ZTP_DECISION_DENY != 0
	d.HasLimit = flags&C.ZTP_DECISION_HAS_LIMIT != 0
	d.HasRetryAfter = flags&C.ZTP_DECISION_HAS_RETRY_AFTER != 0
	d.JWKSMiss = flags&C.ZTP_DECISION_JWKS_MISS != 0
	d.HasLease = flags&C.ZTP_DECISION_HAS_LEASE != 0
	d.AddStreamUsage = flags&C.ZTP_DECISION_ADD_STREAM_USAGE != 0
	d.Status = int(binary.LittleEndian.Uint16(b[C.ZTP_DECISION_AT_STATUS:]))
	if int(b[C.ZTP_DECISION_AT_REASON]) >= len(Reasons) {
		return d, ErrDecision
	}
	d.Reason = Reasons[b[C.ZTP_DECISION_AT_REASON]]
	d.Remaining = binary.LittleEndian.Uint32(b[C.ZTP_DECISION_AT_REMAINING:])
	d.RetryAfter = binary.LittleEndian.Uint64(b[C.ZTP_DECISION_AT_RETRY_AFTER:])
	d.Lease = binary.LittleEndian.Uint64(b[C.ZTP_DECISION_AT_LEASE:])
	if int(b[C.ZTP_DECISION_AT_STORE]) >= len(StoreOutcomes) {
		return d, ErrDecision
	}
	d.Store = StoreOutcomes[b[C.ZTP_DECISION_AT_STORE]]
	rest := b[C.ZTP_DECISION_AT_STRINGS:]
	var fields [C.ZTP_DECISION_STRINGS]string
	for i := range fields {
		if len(rest) < 4 {
			return d, ErrDecision
		}
		n := binary.LittleEndian.Uint32(rest)
		rest = rest[4:]
		if uint64(n) > uint64(len(rest)) {
			return d, ErrDecision
		}
		if i == 4 || i >= 8 {
			// RateLimit (its count changes), the detail, the reservations, the store event
			fields[i] = string(rest[:n])
		} else {
			fields[i] = Names.Intern(rest[:n])
		}
		rest = rest[n:]
	}
	if len(rest) != 0 {
		return d, ErrDecision
	}
	d.Message, d.Rule, d.Identity, d.Limit = fields[0], fields[1], fields[2], fields[3]
	d.RateLimit, d.RateLimitPolicy = fields[4], fields[5]
	if fields[6] != "" {
		d.Matched = Names.Split(fields[6])
	}
	d.Detail, d.Reserved, d.StoreEvent = fields[8], fields[9], fields[10]
	if fields[7] != "" {
		d.Errors = strings.Split(fields[7], "\n")
	}
	return d, nil
}

// Names interns the names decisions repeat — the rules and limits of the policies
// loaded (Provision calls Learn) — so decoding a decision allocates next to nothing.
// It holds only names known from policies, never what a request brings (identities,
// messages), and it is bounded.
var Names = Interner{strings: map[string]string{}, lists: map[string][]string{}}

const InternMax = 8192

type Interner struct {
	mu      sync.RWMutex
	strings map[string]string
	lists   map[string][]string
}

// Learn adds names from a policy, up to InternMax in all.
func (in *Interner) Learn(names ...string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, s := range names {
		if len(in.strings) >= InternMax {
			return
		}
		in.strings[s] = s
	}
}

// Intern returns the learned string equal to b, or a new one.
func (in *Interner) Intern(b []byte) string {
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

// Split returns the lines of s; callers must not modify the slice. Lists made only of
// learned names are kept (bounded), others are split anew.
func (in *Interner) Split(s string) []string {
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
	if len(in.lists) < InternMax {
		in.lists[s] = l
	}
	return l
}

// Ending is how a response ended, for Settle (ztp_ending).
type Ending uint8

const (
	// EndUsage: the response reported usage.
	EndUsage Ending = C.ZTP_ENDING_USAGE
	// EndRefund: the upstream refused before generating; reservations come back.
	EndRefund Ending = C.ZTP_ENDING_REFUND
	// EndKeep: no usage for any other reason; reservations stay spent.
	EndKeep Ending = C.ZTP_ENDING_KEEP
)

// UsageAbsent marks a usage count the response did not give.
const UsageAbsent = uint64(C.ZTP_USAGE_ABSENT)

// Usage is a response's OpenAI usage counts; UsageAbsent where not given.
type Usage struct {
	Prompt, Completion, Total uint64
}

// NoUsage is a Usage that gives no count.
var NoUsage = Usage{UsageAbsent, UsageAbsent, UsageAbsent}

// Settled is one limit's settlement.
type Settled struct {
	Limit    string
	Rule     string
	Reserved uint64
	Used     uint64 // UsageAbsent when the response did not give it
	Charged  uint64
	Unbilled uint64
}

// SettleRules by ztp_settle_rule number.
var SettleRules = [...]string{"usage", "refunded", "kept", "kept_usage_incomplete", "kept_store_unavailable"}

// DecodeSettlement decodes what ztp_engine_settle wrote.
func DecodeSettlement(b []byte) ([]Settled, error) {
	if len(b) < 4 {
		return nil, ErrDecision
	}
	n := binary.LittleEndian.Uint32(b)
	b = b[4:]
	var out []Settled
	for range n {
		if len(b) < 4 {
			return nil, ErrDecision
		}
		l := binary.LittleEndian.Uint32(b)
		b = b[4:]
		if uint64(l)+33 > uint64(len(b)) || int(b[l]) >= len(SettleRules) {
			return nil, ErrDecision
		}
		s := Settled{Limit: Names.Intern(b[:l]), Rule: SettleRules[b[l]]}
		b = b[l+1:]
		s.Reserved = binary.LittleEndian.Uint64(b)
		s.Used = binary.LittleEndian.Uint64(b[8:])
		s.Charged = binary.LittleEndian.Uint64(b[16:])
		s.Unbilled = binary.LittleEndian.Uint64(b[24:])
		b = b[32:]
		out = append(out, s)
	}
	if len(b) != 0 {
		return nil, ErrDecision
	}
	return out, nil
}
