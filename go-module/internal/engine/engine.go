// Package engine is the Rust engine as Go sees it: the cgo calls of its C ABI
// (rust/ffi) and the codec of its wire format. It knows nothing of Caddy; the Caddy
// module (the parent package) uses it, as FrankenPHP's Caddy module uses its library.
package engine

// The only file that talks to the Rust engine. Every call is one cgo crossing; the
// request goes over as one flat buffer plus the certificate and the body (measured
// faster than a C struct of pinned Go pointers, which the module no longer has).

/*
#cgo CFLAGS: -I${SRCDIR}/../../../rust/ffi/include
#cgo !ztp_dynamic LDFLAGS: ${SRCDIR}/../../../target/release/libzt_policy_ffi.a -ldl -lm -lpthread
#cgo ztp_dynamic LDFLAGS: -L${SRCDIR}/../../../target/release -lzt_policy_ffi -Wl,-rpath,${SRCDIR}/../../../target/release
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
	"time"
	"unsafe"
)

// Engine is one reference to a compiled policy in the Rust library. A handler's
// reference is released when the handler can no longer be reached (a runtime cleanup),
// not when Caddy cleans the configuration up: on a reload Caddy's http app returns
// from Stop once the old servers have begun shutting down, before their in-flight
// requests finish, and those requests must still be decided by their engine. Free
// releases a reference at once (provisioning errors, the reload pool); the lock keeps
// that from racing a decision, which then fails closed instead of touching freed
// memory.
type Engine struct {
	mu      sync.RWMutex
	ptr     *C.ztp_engine
	cleanup runtime.Cleanup
}

// wrap owns one engine reference, released by free or, at the latest, when the
// wrapper is garbage.
func wrap(p *C.ztp_engine) *Engine {
	e := &Engine{ptr: p}
	e.cleanup = runtime.AddCleanup(e, func(p *C.ztp_engine) {
		C.ztp_engine_free(p)
		ReleasedUnreachable.Add(1)
	}, p)
	return e
}

// ReleasedUnreachable counts references released because their wrapper became
// garbage (for tests).
var ReleasedUnreachable atomic.Int64

var ErrReleased = fmt.Errorf("%w: the engine was released", ErrEngine)

// ErrEngine marks failures of the engine itself (as opposed to a decision).
var ErrEngine = errors.New("zt_policy engine failure")

func resultError(r C.ztp_result) error {
	switch r {
	case C.ZTP_OK:
		return nil
	case C.ZTP_BUFFER_TOO_SMALL:
		return ErrBufferTooSmall
	default:
		// The library describes every result it returns.
		return fmt.Errorf("%w: %s", ErrEngine, C.GoString(C.ztp_result_message(C.uint32_t(r))))
	}
}

var ErrBufferTooSmall = errors.New("decision buffer too small")

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

// Builder is an engine being set up (ztp_engine_builder): the policy, then the token
// issuer and the buckets of the previous engine; build turns it into an immutable
// engine. A builder is used by one goroutine, then built or freed.
type Builder struct {
	ptr *C.ztp_engine_builder
}

// NewBuilder compiles a policy; name labels it in error messages (its file path).
func NewBuilder(policy []byte, name string) (*Builder, error) {
	nameBytes := []byte(name)
	var out *C.ztp_engine_builder
	var msg *C.ztp_buffer
	r := C.ztp_engine_builder_new(bytesPtr(policy), C.size_t(len(policy)), bytesPtr(nameBytes), C.size_t(len(nameBytes)), &out, &msg)
	text := takeBuffer(msg)
	runtime.KeepAlive(policy)
	runtime.KeepAlive(nameBytes)
	switch r {
	case C.ZTP_OK:
		return &Builder{ptr: out}, nil
	case C.ZTP_INVALID_POLICY:
		return nil, errors.New(text)
	default:
		return nil, resultError(r)
	}
}

// SetToken sets the issuer and audiences of bearer tokens.
func (b *Builder) SetToken(issuer string, audiences []string) error {
	iss := []byte(issuer)
	aud := []byte(strings.Join(audiences, "\n"))
	r := C.ztp_engine_builder_set_token(b.ptr, bytesPtr(iss), C.size_t(len(iss)), bytesPtr(aud), C.size_t(len(aud)))
	runtime.KeepAlive(iss)
	runtime.KeepAlive(aud)
	return resultError(r)
}

// OnFailure values: what requests get when the limits store does not answer.
var OnFailure = map[string]uint8{
	"local": C.ZTP_ON_FAILURE_LOCAL,
	"deny":  C.ZTP_ON_FAILURE_DENY,
	"allow": C.ZTP_ON_FAILURE_ALLOW,
}

// SetStore hands cluster-scoped limits to the limits store at url (pooled per process
// by its configuration: a reload keeps the pool). caFile may be empty.
func (b *Builder) SetStore(url, caFile string, timeout time.Duration, onFailure string) error {
	mode, ok := OnFailure[onFailure]
	if !ok {
		return fmt.Errorf("on_failure %q is not local, deny or allow", onFailure)
	}
	u, ca := []byte(url), []byte(caFile)
	var msg *C.ztp_buffer
	r := C.ztp_engine_builder_set_store(b.ptr, bytesPtr(u), C.size_t(len(u)), bytesPtr(ca), C.size_t(len(ca)),
		C.uint32_t(timeout.Milliseconds()), C.uint8_t(mode), &msg)
	text := takeBuffer(msg)
	runtime.KeepAlive(u)
	runtime.KeepAlive(ca)
	if r == C.ZTP_INVALID_CONFIG {
		return errors.New(text)
	}
	return resultError(r)
}

// Inherit takes over the buckets of prev's unchanged limits.
func (b *Builder) Inherit(prev *Engine) (int, error) {
	prev.mu.RLock()
	defer prev.mu.RUnlock()
	if prev.ptr == nil {
		return 0, ErrReleased
	}
	var kept C.size_t
	if err := resultError(C.ztp_engine_builder_inherit(b.ptr, prev.ptr, &kept)); err != nil {
		return 0, err
	}
	return int(kept), nil
}

// Build makes the engine; the builder is gone afterwards.
func (b *Builder) Build() (*Engine, error) {
	var out *C.ztp_engine
	r := C.ztp_engine_builder_build(b.ptr, &out)
	b.ptr = nil
	if err := resultError(r); err != nil {
		return nil, err
	}
	return wrap(out), nil
}

// Free releases a builder that was not built. Safe after build.
func (b *Builder) Free() {
	if b != nil && b.ptr != nil {
		C.ztp_engine_builder_free(b.ptr)
		b.ptr = nil
	}
}

// New compiles a policy into an engine with nothing else set up.
func New(policy []byte, name string) (*Engine, error) {
	b, err := NewBuilder(policy, name)
	if err != nil {
		return nil, err
	}
	return b.Build()
}

// Clone returns another reference to the same engine.
func (e *Engine) Clone() *Engine {
	return wrap(C.ztp_engine_clone(e.ptr))
}

// Free releases this reference. Safe to call twice.
func (e *Engine) Free() {
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

// SetJWKS replaces the keys bearer tokens are verified against.
func (e *Engine) SetJWKS(jwks []byte) (string, error) {
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

// Describe returns the engine's JSON self-description.
func (e *Engine) Describe() (string, error) {
	var out *C.ztp_buffer
	if err := resultError(C.ztp_engine_describe(e.ptr, &out)); err != nil {
		return "", err
	}
	return takeBuffer(out), nil
}

// Decide runs one decision. req is the flat encoding (appendRequestFields, then
// appendRequestHeaders); cert is nil when no certificate was presented. The encoded
// decision is written into out.
func (e *Engine) Decide(req, cert, body, out []byte) (int, error) {
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
		return 0, ErrReleased
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

// settleBuffers holds the buffers settlements are encoded into: room for 16 limits
// with names of 64 bytes.
var settleBuffers = sync.Pool{New: func() any { b := make([]byte, 4+16*(4+64+33)); return &b }}

// ErrUnknownLease: the lease was never given by this engine, or has ended already.
var ErrUnknownLease = fmt.Errorf("%w: the lease is not open", ErrEngine)

// Settle ends a lease (Decision.Lease): settles its limits by how the response ended
// and gives back its in-flight slots. Each lease ends once.
func (e *Engine) Settle(lease uint64, ending Ending, u Usage) ([]Settled, error) {
	bp := settleBuffers.Get().(*[]byte)
	defer settleBuffers.Put(bp)
	out := *bp
	var n C.size_t
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.ptr == nil {
		return nil, ErrReleased
	}
	r := C.ztp_engine_settle(e.ptr, C.uint64_t(lease), C.uint8_t(ending),
		C.uint64_t(u.Prompt), C.uint64_t(u.Completion), C.uint64_t(u.Total),
		bytesPtr(out), C.size_t(len(out)), &n)
	if r == C.ZTP_UNKNOWN_LEASE {
		return nil, ErrUnknownLease
	}
	if err := resultError(r); err != nil {
		return nil, err
	}
	return DecodeSettlement(out[:n])
}

// CheckABI refuses a library that speaks another ABI than the header this module was
// compiled with (a shared library from another build, with the ztp_dynamic tag).
func CheckABI() error {
	return ABIMismatch(uint32(C.ztp_abi_version()), uint32(C.ZTP_ABI_VERSION))
}

func ABIMismatch(lib, want uint32) error {
	if lib != want {
		return fmt.Errorf("the linked zt_policy engine speaks ABI %d, this module was built for %d: "+
			"build Caddy and the engine together (xcaddy/build.sh)", lib, want)
	}
	return nil
}

// SourceHash is the hash of the Rust sources the linked library was built from.
func SourceHash() string {
	return C.GoString(C.ztp_source_hash())
}

// SelftestPanic makes the library panic inside its boundary; it must come back as an
// error, never as a crash of Caddy.
func SelftestPanic() error {
	return resultError(C.ztp_selftest_panic())
}
