package ztpolicy

import (
	"errors"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/zt-policy/zt-policy/go-module/internal/engine"
)

// decisions counts decisions by outcome, reason and deciding rule — never by identity,
// whose number is unbounded. Created once, registered on each configuration's registry.
var decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy",
	Subsystem: "zt_policy",
	Name:      "decisions_total",
	Help:      "zt_policy decisions by outcome (allowed, denied, audit_denied, error), reason and rule.",
}, []string{"outcome", "reason", "rule"})

// decisionSeconds is the time zt_policy holds a request before passing it on or
// answering it: reading the body the policy needs, and deciding. It is what the module
// adds to a request's latency. Buckets from 5 µs: a cached decision takes microseconds,
// a new token's signature check tens of them.
var decisionSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
	Namespace: "caddy",
	Subsystem: "zt_policy",
	Name:      "decision_duration_seconds",
	Help:      "Time zt_policy holds a request before passing it on or answering: reading the body it needs and deciding.",
	Buckets:   []float64{5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3, 1},
})

// unreadable counts requests whose body could not be read, by cause (truncated,
// bad_chunking, length_mismatch, too_slow, other): the client hung up mid-body, sent
// broken chunked framing, or an HTTP/2 body that disagrees with its content-length.
var unreadable = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy",
	Subsystem: "zt_policy",
	Name:      "unreadable_requests_total",
	Help:      "Requests refused because their body could not be read, by cause.",
}, []string{"cause"})

// tokensReserved and tokensSettled count, per limit that settles from usage, the
// tokens reserved at admission and what requests were finally charged (by the rule
// that settled them: usage, refunded, kept, kept_usage_incomplete). Never by identity.
var tokensReserved = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy",
	Subsystem: "zt_policy",
	Name:      "tokens_reserved_total",
	Help:      "Tokens reserved at admission by limits that settle from usage, per limit.",
}, []string{"limit"})

var tokensSettled = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy",
	Subsystem: "zt_policy",
	Name:      "tokens_settled_total",
	Help:      "Tokens finally charged by limits that settle from usage, per limit and settle rule.",
}, []string{"limit", "rule"})

// inFlight is the requests zt_policy has passed on that hold a lease (a reservation
// or an in-flight slot) and whose response has not ended.
var inFlight = prometheus.NewGauge(prometheus.GaugeOpts{
	Namespace: "caddy",
	Subsystem: "zt_policy",
	Name:      "requests_in_flight",
	Help:      "Requests passed on that hold reservations or in-flight slots, not yet ended.",
})

func registerMetrics(ctx caddy.Context) error {
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{decisions, decisionSeconds, unreadable, tokensReserved, tokensSettled, inFlight, storeDecisions, storeUp} {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}

func countDecision(d *engine.Decision) {
	outcome := "allowed"
	switch {
	case d.Audit && d.Deny:
		outcome = "audit_denied"
	case !d.Allowed:
		outcome = "denied"
	}
	decisionCounters.get(outcome, d.Reason, d.Rule).Inc()
}

// counterCache keeps the counter of each label set of a CounterVec: WithLabelValues
// hashes the labels on every call. Label values come from policies (rule and limit
// names) and fixed sets, so the sets are bounded.
type counterCache struct {
	vec    *prometheus.CounterVec
	labels int // how many of a key's three values are the vector's labels
	mu     sync.RWMutex
	m      map[[3]string]prometheus.Counter
}

func newCounterCache(vec *prometheus.CounterVec, labels int) *counterCache {
	return &counterCache{vec: vec, labels: labels, m: map[[3]string]prometheus.Counter{}}
}

// get returns the counter of the label values (a, b, c; the unused ones empty).
func (cc *counterCache) get(a, b, c string) prometheus.Counter {
	key := [3]string{a, b, c}
	cc.mu.RLock()
	ctr, ok := cc.m[key]
	cc.mu.RUnlock()
	if !ok {
		ctr = cc.vec.WithLabelValues(append([]string(nil), key[:cc.labels]...)...)
		cc.mu.Lock()
		cc.m[key] = ctr
		cc.mu.Unlock()
	}
	return ctr
}

var (
	decisionCounters = newCounterCache(decisions, 3)
	reservedCounters = newCounterCache(tokensReserved, 1)
	settledCounters  = newCounterCache(tokensSettled, 2)
)
