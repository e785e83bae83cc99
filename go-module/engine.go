package ztpolicy

// The only file that talks to the Rust engine. Every call is one cgo crossing; the
// request goes over as one flat buffer plus the certificate and the body (measured
// faster than a C struct of pinned Go pointers, which the module no longer has).

/*
#cgo CFLAGS: -I${SRCDIR}/../rust/ffi/include
#cgo !ztp_dynamic LDFLAGS: ${SRCDIR}/../target/release/libzt_policy_ffi.a -ldl -lm -lpthread
#cgo ztp_dynamic LDFLAGS: -L${SRCDIR}/../target/release -lzt_policy_ffi -Wl,-rpath,${SRCDIR}/../target/release
#include <stdlib.h>
#include "zt_policy.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"
)

// engine is one reference to a compiled policy in the Rust library. A handler's
// reference is released when the handler can no longer be reached (a runtime cleanup),
// not when Caddy cleans the configuration up: on a reload Caddy's http app returns
// from Stop once the old servers have begun shutting down, before their in-flight
// requests finish, and those requests must still be decided by their engine. free
// releases a reference at once (provisioning errors, the reload pool); the lock keeps
// that from racing a decision, which then fails closed instead of touching freed
// memory.
type engine struct {
	mu      sync.RWMutex
	ptr     *C.ztp_engine
	cleanup runtime.Cleanup
}

// wrap owns one engine reference, released by free or, at the latest, when the
// wrapper is garbage.
func wrap(p *C.ztp_engine) *engine {
	e := &engine{ptr: p}
	e.cleanup = runtime.AddCleanup(e, func(p *C.ztp_engine) {
		C.ztp_engine_free(p)
		releasedUnreachable.Add(1)
	}, p)
	return e
}

// releasedUnreachable counts references released because their wrapper became
// garbage (for tests).
var releasedUnreachable atomic.Int64

var errReleased = fmt.Errorf("%w: the engine was released", errEngine)

// errEngine marks failures of the engine itself (as opposed to a decision).
var errEngine = errors.New("zt_policy engine failure")

func resultError(r C.ztp_result) error {
	switch r {
	case C.ZTP_OK:
		return nil
	case C.ZTP_BUFFER_TOO_SMALL:
		return errBufferTooSmall
	default:
		// The library describes every result it returns.
		return fmt.Errorf("%w: %s", errEngine, C.GoString(C.ztp_result_message(C.uint32_t(r))))
	}
}

var errBufferTooSmall = errors.New("decision buffer too small")

func bytesPtr(b []byte) *C.uint8_t {
	if len(b) == 0 {
		return nil
	}
	return (*C.uint8_t)(unsafe.Pointer(&b[0]))
}

// takeBuffer copies a library-owned buffer into Go memory and frees it.
func takeBuffer(b *C.ztp_buffer) string {
	if b == nil {
		return ""
	}
	defer C.ztp_buffer_free(b)
	var n C.size_t
	p := C.ztp_buffer_data(b, &n)
	if p == nil {
		return ""
	}
	return C.GoStringN((*C.char)(unsafe.Pointer(p)), C.int(n))
}

// builder is an engine being set up (ztp_engine_builder): the policy, then the token
// issuer and the buckets of the previous engine; build turns it into an immutable
// engine. A builder is used by one goroutine, then built or freed.
type builder struct {
	ptr *C.ztp_engine_builder
}

// newBuilder compiles a policy; name labels it in error messages (its file path).
func newBuilder(policy []byte, name string) (*builder, error) {
	nameBytes := []byte(name)
	var out *C.ztp_engine_builder
	var msg *C.ztp_buffer
	r := C.ztp_engine_builder_new(bytesPtr(policy), C.size_t(len(policy)), bytesPtr(nameBytes), C.size_t(len(nameBytes)), &out, &msg)
	text := takeBuffer(msg)
	runtime.KeepAlive(policy)
	runtime.KeepAlive(nameBytes)
	switch r {
	case C.ZTP_OK:
		return &builder{ptr: out}, nil
	case C.ZTP_INVALID_POLICY:
		return nil, errors.New(text)
	default:
		return nil, resultError(r)
	}
}

// setToken sets the issuer and audiences of bearer tokens.
func (b *builder) setToken(issuer string, audiences []string) error {
	iss := []byte(issuer)
	aud := []byte(strings.Join(audiences, "\n"))
	r := C.ztp_engine_builder_set_token(b.ptr, bytesPtr(iss), C.size_t(len(iss)), bytesPtr(aud), C.size_t(len(aud)))
	runtime.KeepAlive(iss)
	runtime.KeepAlive(aud)
	return resultError(r)
}

// inherit takes over the buckets of prev's unchanged limits.
func (b *builder) inherit(prev *engine) (int, error) {
	prev.mu.RLock()
	defer prev.mu.RUnlock()
	if prev.ptr == nil {
		return 0, errReleased
	}
	var kept C.size_t
	if err := resultError(C.ztp_engine_builder_inherit(b.ptr, prev.ptr, &kept)); err != nil {
		return 0, err
	}
	return int(kept), nil
}

// build makes the engine; the builder is gone afterwards.
func (b *builder) build() (*engine, error) {
	var out *C.ztp_engine
	r := C.ztp_engine_builder_build(b.ptr, &out)
	b.ptr = nil
	if err := resultError(r); err != nil {
		return nil, err
	}
	return wrap(out), nil
}

// free releases a builder that was not built. Safe after build.
func (b *builder) free() {
	if b != nil && b.ptr != nil {
		C.ztp_engine_builder_free(b.ptr)
		b.ptr = nil
	}
}

// newEngine compiles a policy into an engine with nothing else set up.
func newEngine(policy []byte, name string) (*engine, error) {
	b, err := newBuilder(policy, name)
	if err != nil {
		return nil, err
	}
	return b.build()
}

// clone returns another reference to the same engine.
func (e *engine) clone() *engine {
	return wrap(C.ztp_engine_clone(e.ptr))
}

// free releases this reference. Safe to call twice.
func (e *engine) free() {
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ptr != nil {
		e.cleanup.Stop()
		C.ztp_engine_free(e.ptr)
		e.ptr = nil
	}
}

// setJWKS replaces the keys bearer tokens are verified against.
func (e *engine) setJWKS(jwks []byte) (string, error) {
	var msg *C.ztp_buffer
	r := C.ztp_engine_set_jwks(e.ptr, bytesPtr(jwks), C.size_t(len(jwks)), &msg)
	runtime.KeepAlive(jwks)
	text := takeBuffer(msg)
	switch r {
	case C.ZTP_OK:
		return text, nil
	case C.ZTP_INVALID_JWKS:
		return "", errors.New(text)
	default:
		return "", resultError(r)
	}
}

// describe returns the engine's JSON self-description.
func (e *engine) describe() (string, error) {
	var out *C.ztp_buffer
	if err := resultError(C.ztp_engine_describe(e.ptr, &out)); err != nil {
		return "", err
	}
	return takeBuffer(out), nil
}

// decide runs one decision. req is the flat encoding (appendRequestFields, then
// appendRequestHeaders); cert is nil when no certificate was presented. The encoded
// decision is written into out.
func (e *engine) decide(req, cert, body, out []byte) (int, error) {
	var certPtr *C.uint8_t
	if cert != nil {
		certPtr = bytesPtr(cert)
		if certPtr == nil {
			// An empty certificate is still "presented": pass a valid pointer.
			certPtr = (*C.uint8_t)(unsafe.Pointer(&emptyByte))
		}
	}
	var n C.size_t
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.ptr == nil {
		return 0, errReleased
	}
	r := C.ztp_engine_decide(e.ptr,
		bytesPtr(req), C.size_t(len(req)),
		certPtr, C.size_t(len(cert)),
		bytesPtr(body), C.size_t(len(body)),
		bytesPtr(out), C.size_t(len(out)), &n)
	runtime.KeepAlive(req)
	runtime.KeepAlive(cert)
	runtime.KeepAlive(body)
	runtime.KeepAlive(out)
	if err := resultError(r); err != nil {
		return 0, err
	}
	return int(n), nil
}

var emptyByte byte

// checkABI refuses a library that speaks another ABI than the header this module was
// compiled with (a shared library from another build, with the ztp_dynamic tag).
func checkABI() error {
	return abiMismatch(uint32(C.ztp_abi_version()), uint32(C.ZTP_ABI_VERSION))
}

func abiMismatch(lib, want uint32) error {
	if lib != want {
		return fmt.Errorf("the linked zt_policy engine speaks ABI %d, this module was built for %d: "+
			"build Caddy and the engine together (xcaddy/build.sh)", lib, want)
	}
	return nil
}

// librarySourceHash is the hash of the Rust sources the linked library was built from.
func librarySourceHash() string {
	return C.GoString(C.ztp_source_hash())
}

// selftestPanic makes the library panic inside its boundary; it must come back as an
// error, never as a crash of Caddy.
func selftestPanic() error {
	return resultError(C.ztp_selftest_panic())
}
