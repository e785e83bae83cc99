package ztpolicy

import (
	"strings"
	"testing"
)

// The module refuses, at Provision, an engine library that speaks another ABI.
func TestABIVersionIsChecked(t *testing.T) {
	if err := checkABI(); err != nil {
		t.Fatalf("the library built with this module: %v", err)
	}
	err := abiMismatch(1, 2)
	if err == nil || !strings.Contains(err.Error(), "speaks ABI 1, this module was built for 2") {
		t.Fatalf("a mismatch: %v", err)
	}
}
