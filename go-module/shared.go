package ztpolicy

import (
	"sync"

	"github.com/caddyserver/caddy/v2"

	"github.com/zt-policy/zt-policy/go-module/internal/engine"
)

// pool holds, per policy, the newest engine, so that the next configuration (Caddy
// starts the new one before it stops the old) can take over its rate-limit buckets.
// Its entry, and that engine reference, go when the last configuration using the
// policy is cleaned up.
var pool = caddy.NewUsagePool()

type sharedState struct {
	mu     sync.Mutex
	latest *engine.Engine
}

// Destruct releases the pool's reference to the newest engine.
func (s *sharedState) Destruct() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latest.Free()
	s.latest = nil
	return nil
}
