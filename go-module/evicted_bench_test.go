package ztpolicy

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zt-policy/zt-policy/go-module/internal/engine"
)

// In Caddy under load a decision does not find the engine in the CPU caches: TLS,
// HTTP parsing and proxying run between two decisions and evict it. These benchmarks
// measure one decision (encoding and the cgo call, as the handler makes them) after
// writing over a buffer the size of twice the L2 cache, then twice the L3 cache, so
// what the in-process benchmarks above leave out — the memory a decision touches —
// shows up in the number. Only the decision is timed; ns/op is per decision.
func BenchmarkDecideEvicted(b *testing.B) {
	// The request setup B of bench/run.py sends, on the path it takes: alice's device
	// certificate, carol's token, a chat completion, under the raised limits.
	example, err := engine.New([]byte(raisedExamplePolicy()), "policy.toml")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(example.Free)
	if _, err := example.SetJWKS(must(readFile("../examples/policy/idp/jwks.json"))); err != nil {
		b.Fatal(err)
	}
	trivial, err := engine.New([]byte(oneRulePolicy), "one-rule.toml")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(trivial.Free)
	r, der := newBenchRequest(), cert(b, "alice").Raw
	r.headers.Set("Authorization", "Bearer "+strings.TrimSpace(string(must(readFile("../examples/policy/idp/carol.jwt")))))
	for _, level := range []struct {
		name  string
		bytes int
	}{{"hot", 0}, {"L2-evicted", 2 * cacheSize(2, 512<<10)}, {"L3-evicted", 2 * cacheSize(3, 32<<20)}} {
		for _, c := range []struct {
			name string
			eng  *engine.Engine
		}{{"example", example}, {"one-rule", trivial}} {
			b.Run(level.name+"/"+c.name, func(b *testing.B) {
				junk := make([]byte, level.bytes)
				buf, out := make([]byte, 0, 2048), make([]byte, 4096)
				var held time.Duration
				for b.Loop() {
					for i := 0; i < len(junk); i += 64 {
						junk[i]++
					}
					start := time.Now()
					buf = r.appendTo(buf[:0])
					n, err := c.eng.Decide(buf, der, benchBody, out)
					if err != nil {
						b.Fatal(err)
					}
					held += time.Since(start)
					endLease(b, c.eng, out[:n]) // as the handler does when the response is done
				}
				b.StopTimer()
				n, err := c.eng.Decide(r.appendTo(buf[:0]), der, benchBody, out)
				if err != nil {
					b.Fatal(err)
				}
				if d, err := engine.DecodeDecision(out[:n]); err != nil || !d.Allowed {
					b.Fatalf("the benchmark request must be allowed: %+v %v", d, err)
				}
				endLease(b, c.eng, out[:n])
				b.ReportMetric(float64(held.Nanoseconds())/float64(b.N), "ns/op")
			})
		}
	}
}

// cacheSize reads the size of CPU 0's unified cache of a level from sysfs.
func cacheSize(level int, fallback int) int {
	for i := 0; i < 8; i++ {
		dir := "/sys/devices/system/cpu/cpu0/cache/index" + strconv.Itoa(i) + "/"
		l, err1 := os.ReadFile(dir + "level")
		s, err2 := os.ReadFile(dir + "size")
		if err1 != nil || err2 != nil {
			break
		}
		if strings.TrimSpace(string(l)) != strconv.Itoa(level) {
			continue
		}
		size := strings.TrimSpace(string(s))
		mult := 1
		switch {
		case strings.HasSuffix(size, "K"):
			mult, size = 1<<10, strings.TrimSuffix(size, "K")
		case strings.HasSuffix(size, "M"):
			mult, size = 1<<20, strings.TrimSuffix(size, "M")
		}
		if n, err := strconv.Atoi(size); err == nil && n > 0 {
			return n * mult
		}
	}
	return fallback
}
