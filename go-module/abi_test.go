package ztpolicy

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/zt-policy/zt-policy/go-module/internal/engine"
)

// The module refuses, at Provision, an engine library that speaks another ABI.
func TestABIVersionIsChecked(t *testing.T) {
	if err := engine.CheckABI(); err != nil {
		t.Fatalf("the library built with this module: %v", err)
	}
	err := engine.ABIMismatch(1, 2)
	if err == nil || !strings.Contains(err.Error(), "speaks ABI 1, this module was built for 2") {
		t.Fatalf("a mismatch: %v", err)
	}
}

// Go's reason names are the header's ztp_reason enum, by number: ZTP_REASON_<NAME> = i
// for reasons[i], and no reason the header has is missing here.
// The same for the settle rules (ztp_settle_rule).
func TestReasonNamesAreTheHeaders(t *testing.T) {
	header, err := os.ReadFile("../rust/ffi/include/zt_policy.h")
	if err != nil {
		t.Fatal(err)
	}
	for prefix, names := range map[string][]string{"ZTP_REASON_": engine.Reasons[:], "ZTP_SETTLE_": engine.SettleRules[:]} {
		found := regexp.MustCompile(prefix+`([A-Z_]+) = (\d+)`).FindAllStringSubmatch(string(header), -1)
		if len(found) != len(names) {
			t.Fatalf("the header has %d %s names, Go %d", len(found), prefix, len(names))
		}
		for _, m := range found {
			i, _ := strconv.Atoi(m[2])
			if i >= len(names) || names[i] != strings.ToLower(m[1]) {
				t.Errorf("%s%s = %d, Go says %q", prefix, m[1], i, names[min(i, len(names)-1)])
			}
		}
	}
}
