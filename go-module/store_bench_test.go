package ztpolicy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zt-policy/zt-policy/go-module/internal/engine"
)

// Where the limits store's client lives (issue 18): in the engine call (Rust, what the
// module does: one cgo call that blocks its thread for the round trip), or in Go (the
// engine decides, Go runs the same script on a goroutine that waits in the netpoller,
// and a second cgo call tells the engine the outcome). Both run the admission of one
// cluster-scoped limit on Debian's redis-server on loopback; each reports wall time and
// the process's CPU per request, serially and from 64 goroutines, and the OS threads
// the process made.
//
//	go test -run '^$' -bench StoreClient -benchtime 3s
func BenchmarkStoreClient(b *testing.B) {
	port := startRedis(b)
	url := fmt.Sprintf("redis://127.0.0.1:%d/0", port)
	policy := func(scope string) []byte {
		return []byte(allowAllByHeader + `[[limit]]
name = "requests"
rate = "1000000000/s"
burst = 1000000000
scope = "` + scope + `"
`)
	}
	build := func(scope string) *engine.Engine {
		bl, err := engine.NewBuilder(policy(scope), "p.toml")
		if err != nil {
			b.Fatal(err)
		}
		if scope == "cluster" {
			if err := bl.SetStore(url, "", 50*time.Millisecond, "deny"); err != nil {
				b.Fatal(err)
			}
		}
		e, err := bl.Build()
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(e.Free)
		return e
	}
	inEngine, local := build("cluster"), build("local")
	r := newBenchRequest()
	r.headers.Set("X-User", "bench")
	// The script's arguments for the same admission, as the engine builds them.
	script, err := os.ReadFile("../store/limits.lua")
	if err != nil {
		b.Fatal(err)
	}
	sha := goRedis(b, port).call(b, "SCRIPT", "LOAD", string(script))
	evalsha := []string{"EVALSHA", sha, "1", "ztp:{bench}:l:requests:go", "0", "admit", "-", "l", "1", "1000000000", "1"}

	decide := func(e *engine.Engine, buf, out []byte) {
		buf = r.appendTo(buf[:0])
		n, err := e.Decide(buf, nil, nil, out)
		if err != nil {
			b.Fatal(err)
		}
		if d, err := engine.DecodeDecision(out[:n]); err != nil || !d.Allowed || (e == inEngine && d.Store != "shared") {
			b.Fatalf("%v %+v", err, d)
		}
	}
	ways := map[string]func(c *respConn, buf, out []byte){
		"rust-in-engine-call": func(_ *respConn, buf, out []byte) { decide(inEngine, buf, out) },
		"go-then-engine": func(c *respConn, buf, out []byte) {
			decide(local, buf, out)
			if reply := c.call(b, evalsha...); !strings.HasPrefix(reply, "1 ") {
				b.Fatalf("script: %q", reply)
			}
			_, _ = local.Decide(nil, nil, nil, out[:16]) // the second crossing: the outcome
		},
	}
	for _, name := range []string{"rust-in-engine-call", "go-then-engine"} {
		way := ways[name]
		b.Run(name+"/serial", func(b *testing.B) {
			c := goRedis(b, port)
			buf, out := make([]byte, 0, 2048), make([]byte, 4096)
			measure(b, func() {
				for b.Loop() {
					way(c, buf, out)
				}
			})
		})
		b.Run(name+"/64-goroutines", func(b *testing.B) {
			b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
			measure(b, func() {
				b.RunParallel(func(pb *testing.PB) {
					c := goRedis(b, port)
					buf, out := make([]byte, 0, 2048), make([]byte, 4096)
					for pb.Next() {
						way(c, buf, out)
					}
				})
			})
		})
	}
}

// measure runs f and reports the process's CPU per operation and the threads made.
func measure(b *testing.B, f func()) {
	threads := pprof.Lookup("threadcreate").Count()
	var before, after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	f()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N)/1000, "cpu-µs/op")
	b.ReportMetric(float64(pprof.Lookup("threadcreate").Count()-threads), "threads-made")
}

// respConn is the least of a Redis client, for the Go side of the comparison.
type respConn struct {
	c net.Conn
	r *bufio.Reader
	w []byte
}

func goRedis(b *testing.B, port int) *respConn {
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	return &respConn{c: c, r: bufio.NewReader(c)}
}

// call sends a command and returns its reply: a string, or integers joined by spaces.
func (rc *respConn) call(b *testing.B, args ...string) string {
	w := append(rc.w[:0], '*')
	w = strconv.AppendInt(w, int64(len(args)), 10)
	w = append(w, "\r\n"...)
	for _, a := range args {
		w = append(w, '$')
		w = strconv.AppendInt(w, int64(len(a)), 10)
		w = append(w, "\r\n"...)
		w = append(w, a...)
		w = append(w, "\r\n"...)
	}
	rc.w = w
	if _, err := rc.c.Write(w); err != nil {
		b.Fatal(err)
	}
	return rc.reply(b)
}

func (rc *respConn) reply(b *testing.B) string {
	line, err := rc.r.ReadString('\n')
	if err != nil {
		b.Fatal(err)
	}
	line = strings.TrimSuffix(line, "\r\n")
	switch line[0] {
	case '+', ':':
		return line[1:]
	case '$':
		n, _ := strconv.Atoi(line[1:])
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(rc.r, buf); err != nil {
			b.Fatal(err)
		}
		return string(buf[:n])
	case '*':
		n, _ := strconv.Atoi(line[1:])
		parts := make([]string, n)
		for i := range parts {
			parts[i] = rc.reply(b)
		}
		return strings.Join(parts, " ")
	default:
		b.Fatalf("redis: %s", line)
		return ""
	}
}

// startRedis starts Debian's redis-server on a free loopback port for the benchmark.
func startRedis(b *testing.B) int {
	server, err := exec.LookPath("redis-server")
	if err != nil {
		b.Fatal("redis-server is missing: scripts/install-deps.sh installs it")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	dir := b.TempDir()
	cmd := exec.Command(server, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir)
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			_ = c.Close()
			return port
		}
		if time.Now().After(deadline) {
			b.Fatal("redis-server did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
