package ztpolicy

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/zt-policy/zt-policy/go-module/internal/engine"
)

// storeDecisions counts decisions that met cluster-scoped limits, by how they were
// judged: shared (by the limits store), or — the store not answering — local (this
// replica's buckets), denied (503) or allowed (unlimited).
var storeDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy",
	Subsystem: "zt_policy",
	Name:      "limits_store_decisions_total",
	Help:      "Decisions that met cluster-scoped limits, by how they were judged: shared, or (the store not answering) local, denied, allowed.",
}, []string{"outcome"})

// storeUp is 1 while the limits store answers, 0 from the first request it failed
// until one succeeds again.
var storeUp = prometheus.NewGauge(prometheus.GaugeOpts{
	Namespace: "caddy",
	Subsystem: "zt_policy",
	Name:      "limits_store_up",
	Help:      "1 while the limits store answers, 0 while it does not (set by the requests that meet cluster-scoped limits).",
})

var storeCounters = newCounterCache(storeDecisions, 1)

// noteStore counts how a decision's cluster-scoped limits were judged, and logs a change
// of the store's state once (the engine reports each change with one decision).
func (h *Handler) noteStore(d *engine.Decision) {
	storeCounters.get(d.Store, "", "").Inc()
	switch {
	case d.StoreEvent == "available":
		storeUp.Set(1)
		h.logger.Info("limits store available again: cluster-scoped limits are shared again")
	case strings.HasPrefix(d.StoreEvent, "unavailable: "):
		storeUp.Set(0)
		h.logger.Warn("limits store unavailable: cluster-scoped limits fall back",
			zap.String("on_failure", h.LimitsStore.onFailure()),
			zap.String("error", strings.TrimPrefix(d.StoreEvent, "unavailable: ")),
			zap.Duration("timeout", h.LimitsStore.timeout()))
	case d.Store == "shared":
		storeUp.Set(1)
	}
}
