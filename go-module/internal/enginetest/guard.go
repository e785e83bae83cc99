// Package enginetest keeps the Go tests on the engine of the sources on disk: a test
// binary links whatever Rust library target/release holds, and go's build cache does
// not track files named in #cgo LDFLAGS. Test packages call Main from TestMain.
package enginetest

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/zt-policy/zt-policy/go-module/internal/engine"
)

// LinkedSource is set (-ldflags -X) when Main reruns the tests after rebuilding the
// Rust library: a new value changes the link, which go's build cache would otherwise
// reuse with the old library.
var LinkedSource string

// Main runs the tests against the engine of the sources on disk: when the linked
// library was built from other sources (rust/ffi/build.rs bakes their hash into it), it
// rebuilds the library and runs the tests again, linked anew. root is the repository's
// root, relative to the test's package folder.
func Main(m *testing.M, root string) {
	flag.Parse()
	want, err := rustSourceHash(root)
	if err != nil {
		fmt.Fprintf(os.Stderr, "zt_policy tests: hashing the Rust sources: %v\n", err)
		os.Exit(1)
	}
	if got := engine.SourceHash(); got != want {
		if LinkedSource != "" {
			fmt.Fprintf(os.Stderr, "zt_policy tests: the library is still stale after a rebuild (%s, sources %s)\n", got, want)
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "zt_policy tests: the Rust library was built from other sources: rebuilding it, then running the tests again")
		os.Exit(rebuildAndRerun(root, want))
	}
	os.Exit(m.Run())
}

// rustSourceHash hashes the engine's sources as rust/ffi/build.rs does.
func rustSourceHash(root string) (string, error) {
	files := []string{"Cargo.lock", "Cargo.toml", "rust/core/Cargo.toml", "rust/ffi/Cargo.toml"}
	for _, dir := range []string{"rust/core/src", "rust/ffi/src"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, err := filepath.Rel(root, p)
			files = append(files, filepath.ToSlash(rel))
			return err
		})
		if err != nil {
			return "", err
		}
	}
	slices.Sort(files)
	h := sha256.New()
	for _, rel := range files {
		content, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			return "", err
		}
		h.Write([]byte(rel))
		h.Write([]byte{0})
		h.Write(binary.LittleEndian.AppendUint64(nil, uint64(len(content))))
		h.Write(content)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// rebuildAndRerun builds the library with cargo, then runs `go test` on this package
// again with the same test flags and a link that cannot come from the cache.
func rebuildAndRerun(root, hash string) int {
	build := exec.Command("cargo", "build", "--release", "--quiet", "-p", "zt-policy-ffi")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "zt_policy tests: cargo build: %v\n", err)
		return 1
	}
	args := []string{"test", "-count=1", "-ldflags=-X github.com/zt-policy/zt-policy/go-module/internal/enginetest.LinkedSource=" + hash}
	flag.Visit(func(f *flag.Flag) {
		if name, ok := strings.CutPrefix(f.Name, "test."); ok && !slices.Contains([]string{"count", "paniconexit0", "testlogfile", "gocoverdir", "timeout"}, name) {
			args = append(args, "-"+name+"="+f.Value.String())
		}
	})
	rerun := exec.Command("go", append(args, ".")...)
	rerun.Stdout, rerun.Stderr = os.Stdout, os.Stderr
	if err := rerun.Run(); err != nil {
		if exit, ok := err.(*exec.ExitError); ok {
			return exit.ExitCode()
		}
		return 1
	}
	return 0
}
