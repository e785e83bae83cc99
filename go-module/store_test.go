package ztpolicy

import (
	"context"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

const clusterPolicy = allowAllByHeader + `[[limit]]
name = "shared-requests"
rate = "10/s"
scope = "cluster"
`

func TestCaddyfileLimitsStore(t *testing.T) {
	var h Handler
	d := caddyfile.NewTestDispenser(`zt_policy /etc/caddy/policy.toml {
		limits_store rediss://zt:{env.VALKEY_PASSWORD}@valkey:6380/0 {
			ca_file /etc/caddy/valkey-ca.pem
			timeout 20ms
			on_failure deny
		}
	}`)
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	s := h.LimitsStore
	if s == nil || s.URL != "rediss://zt:{env.VALKEY_PASSWORD}@valkey:6380/0" || s.CAFile != "/etc/caddy/valkey-ca.pem" ||
		time.Duration(s.Timeout) != 20*time.Millisecond || s.OnFailure != "deny" {
		t.Fatalf("%+v", s)
	}
	var plain Handler
	if err := plain.UnmarshalCaddyfile(caddyfile.NewTestDispenser("zt_policy p {\n limits_store redis://127.0.0.1:6379\n}")); err != nil {
		t.Fatal(err)
	}
	if plain.LimitsStore.timeout() != 50*time.Millisecond || plain.LimitsStore.onFailure() != "local" {
		t.Errorf("defaults: %+v", plain.LimitsStore)
	}
	for bad, says := range map[string]string{
		"zt_policy p {\n limits_store\n}":                                       "needs a URL",
		"zt_policy p {\n limits_store a b\n}":                                   "wrong argument count",
		"zt_policy p {\n limits_store r {\n timeout 0s\n }\n}":                  "between 1ms and 10s",
		"zt_policy p {\n limits_store r {\n timeout 11s\n }\n}":                 "between 1ms and 10s",
		"zt_policy p {\n limits_store r {\n on_failure open\n }\n}":             "not local, deny or allow",
		"zt_policy p {\n limits_store r {\n pool 3\n }\n}":                      "unrecognized limits_store option",
		"zt_policy p {\n limits_store r\n limits_store s\n}":                    "given twice",
		"zt_policy p {\n limits_store r {\n ca_file\n }\n}":                     "wrong argument count",
		"zt_policy p {\n limits_store r {\n on_failure local deny\n }\n}":       "wrong argument count",
		"zt_policy p {\n limits_store redis://h {\n timeout soon\n }\n}":        "not a duration",
		"zt_policy p {\n limits_store redis://h {\n timeout 5ms 6ms\n }\n}":     "wrong argument count",
		"zt_policy p {\n limits_store redis://h {\n on_failure\n }\n}":          "wrong argument count",
		"zt_policy p {\n limits_store redis://h {\n ca_file a.pem b.pem\n }\n}": "wrong argument count",
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad))
		if err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("%q: %v (want %q)", bad, err, says)
		}
	}
	// The same checks for JSON configuration.
	for _, s := range []*LimitsStore{{URL: "redis://h", OnFailure: "open"}, {URL: "redis://h", Timeout: caddy.Duration(time.Minute)}} {
		if err := (&Handler{LimitsStore: s}).Validate(); err == nil || !strings.Contains(err.Error(), "limits_store") {
			t.Errorf("JSON %+v: %v", s, err)
		}
	}
}

func provisionError(h *Handler) error {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	err := h.Provision(ctx)
	if err == nil {
		_ = h.Cleanup()
	}
	return err
}

func TestProvisionChecksTheLimitsStore(t *testing.T) {
	p := policyFile(t, clusterPolicy)
	err := provisionError(&Handler{PolicyFile: p})
	if err == nil || !strings.Contains(err.Error(), `shared-requests scope = "cluster", but no limits_store is configured`) {
		t.Errorf("cluster scope without a store: %v", err)
	}
	for url, says := range map[string]string{
		"http://h:6379":                 "the scheme \"http\"",
		"redis://u:hunter2@:6379":       "no host",
		"rediss://h:6380/#insecure":     "options after ? or #",
		"redis://u:hunter2@h:6379/zero": "limits store",
	} {
		err := provisionError(&Handler{PolicyFile: p, LimitsStore: &LimitsStore{URL: url}})
		if err == nil || !strings.Contains(err.Error(), says) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: %v", url, err)
		}
	}
	err = provisionError(&Handler{PolicyFile: p, LimitsStore: &LimitsStore{URL: "redis://h", CAFile: "/etc/hostname"}})
	if err == nil || !strings.Contains(err.Error(), "is for rediss://") {
		t.Errorf("ca_file without TLS: %v", err)
	}
	t.Setenv("ZTP_TEST_STORE", "redis://127.0.0.1:1/0")
	if err := provisionError(&Handler{PolicyFile: p, LimitsStore: &LimitsStore{URL: "{env.ZTP_TEST_STORE}"}}); err != nil {
		t.Errorf("a placeholder URL: %v", err)
	}
}

// A store that is not there: deny mode answers 503 store_unavailable with Retry-After,
// logs the change once and counts each decision; allow mode passes.
func TestAStoreThatIsDownGetsTheConfiguredMode(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "redis://127.0.0.1:" + strings.Split(l.Addr().String(), ":")[1] + "/0"
	_ = l.Close() // nothing listens there now
	core, logs := observer.New(zap.InfoLevel)
	h := &Handler{PolicyFile: policyFile(t, clusterPolicy), LimitsStore: &LimitsStore{URL: url, OnFailure: "deny"}}
	provision(t, h)
	h.logger = zap.New(core)
	before := testutil.ToFloat64(storeCounters.get("denied", "", ""))
	for i := 0; i < 3; i++ {
		r := httptest.NewRequest("GET", "https://ai.example.internal/v1/models", nil)
		r.Header.Set("X-User", "alice")
		c := serve(t, h, r)
		if c.rec.Code != 503 || c.next || c.errBody["error"]["code"] != "store_unavailable" || c.rec.Header().Get("Retry-After") != "1" {
			t.Fatalf("%d %v %v", c.rec.Code, c.errBody, c.rec.Header())
		}
	}
	if got := testutil.ToFloat64(storeCounters.get("denied", "", "")) - before; got != 3 {
		t.Errorf("denied decisions counted: %v", got)
	}
	down := logs.FilterMessageSnippet("limits store unavailable").All()
	if len(down) != 1 || down[0].ContextMap()["on_failure"] != "deny" || !strings.Contains(down[0].ContextMap()["error"].(string), url) {
		t.Errorf("one log line for the change: %+v", down)
	}
	if lines := logs.FilterField(zap.String("limits_store", "denied")).Len(); lines != 3 {
		t.Errorf("decision lines naming the store outcome: %d", lines)
	}

	open := &Handler{PolicyFile: policyFile(t, clusterPolicy), LimitsStore: &LimitsStore{URL: url, OnFailure: "allow"}}
	provision(t, open)
	r := httptest.NewRequest("GET", "https://ai.example.internal/v1/models", nil)
	r.Header.Set("X-User", "alice")
	if c := serve(t, open, r); c.rec.Code != 200 || !c.next {
		t.Fatalf("allow mode: %d %v", c.rec.Code, c.errBody)
	}
}
