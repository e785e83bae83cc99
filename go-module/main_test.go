package ztpolicy

import (
	"testing"

	"github.com/zt-policy/zt-policy/go-module/internal/enginetest"
)

// TestMain runs the tests against the engine built from the sources on disk.
func TestMain(m *testing.M) { enginetest.Main(m, "..") }
