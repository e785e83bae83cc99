package ztpolicy

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync"

	"github.com/zt-policy/zt-policy/go-module/internal/engine"
)

// usageWriter passes a response through as it is written and reads the OpenAI usage
// object on the way: the top-level "usage" of a JSON body, or of a streamed (SSE)
// response's chunks, the last one that has it. Nothing is buffered and nothing is
// delayed, whatever the chunk boundaries — except in strip mode (the module added
// include_usage to a request whose client did not ask for it), where the bytes of one
// event at a time are held until its end, so the usage-only chunk (choices empty) can
// be left out of what the client receives.
type usageWriter struct {
	w      http.ResponseWriter
	status int
	// wrote: bytes reached the client (or the status was sent).
	wrote bool
	strip bool

	mode int // modeNone, modeJSON, modeSSE
	body topLevel
	sse  sseReader
	// usage is the last usage a stream's chunk gave (found says whether one did).
	usage engine.Usage
	found bool
	// stripped counts usage-only chunks removed (for the settle line).
	stripped int
	// out gathers what one write passes on in strip mode.
	out []byte
}

const (
	modeNone = iota
	modeJSON
	modeSSE
)

// usageCounts is the usage object as OpenAI and vLLM write it, as encoding/json reads
// it (parseUsage's fallback, and the tests' oracle).
type usageCounts struct {
	PromptTokens     *uint64 `json:"prompt_tokens"`
	CompletionTokens *uint64 `json:"completion_tokens"`
	TotalTokens      *uint64 `json:"total_tokens"`
}

// parseUsage reads a usage object: its three counts, each UsageAbsent when not given;
// false when it gives none or is not one encoding/json reads into usageCounts. The
// common shape (integers, anything else skipped) is read here without allocating;
// anything unusual goes to encoding/json, whose reading is the rule.
func parseUsage(raw []byte) (engine.Usage, bool) {
	if !json.Valid(raw) {
		return engine.NoUsage, false // (encoding/json would refuse it too)
	}
	u, ok, sure := quickUsage(raw)
	if sure {
		return u, ok
	}
	var c usageCounts
	if json.Unmarshal(raw, &c) != nil || (c.PromptTokens == nil && c.CompletionTokens == nil && c.TotalTokens == nil) {
		return engine.NoUsage, false
	}
	v := func(p *uint64) uint64 {
		if p == nil {
			return engine.UsageAbsent
		}
		return *p
	}
	return engine.Usage{Prompt: v(c.PromptTokens), Completion: v(c.CompletionTokens), Total: v(c.TotalTokens)}, true
}

// quickUsage reads valid JSON {"key": value, ...} where the three counts are plain
// integers and other values are skipped; sure is false at anything else (escapes in
// keys, another number form, null for a count).
func quickUsage(raw []byte) (u engine.Usage, ok, sure bool) {
	u = engine.NoUsage
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return u, false, false
	}
	i = skipSpace(raw, i+1)
	if i < len(raw) && raw[i] == '}' {
		return u, false, skipSpace(raw, i+1) == len(raw)
	}
	for {
		if i >= len(raw) || raw[i] != '"' {
			return u, false, false
		}
		end := bytes.IndexByte(raw[i+1:], '"')
		if end < 0 || bytes.IndexByte(raw[i+1:i+1+end], '\\') >= 0 {
			return u, false, false
		}
		key := raw[i+1 : i+1+end]
		i = skipSpace(raw, i+2+end)
		if i >= len(raw) || raw[i] != ':' {
			return u, false, false
		}
		i = skipSpace(raw, i+1)
		var slot *uint64
		switch string(key) {
		case "prompt_tokens":
			slot = &u.Prompt
		case "completion_tokens":
			slot = &u.Completion
		case "total_tokens":
			slot = &u.Total
		}
		if slot != nil {
			j, n := i, uint64(0)
			for j < len(raw) && raw[j] >= '0' && raw[j] <= '9' {
				if n > (1<<63)/10 || (j > i && n == 0) { // big, or a leading zero
					return u, false, false
				}
				n = n*10 + uint64(raw[j]-'0')
				j++
			}
			if j == i || n == engine.UsageAbsent {
				return u, false, false
			}
			*slot, ok, i = n, true, j
		} else if i = skipValue(raw, i); i < 0 {
			return u, false, false
		}
		i = skipSpace(raw, i)
		if i >= len(raw) {
			return u, false, false
		}
		switch raw[i] {
		case ',':
			i = skipSpace(raw, i+1)
		case '}':
			return u, ok, skipSpace(raw, i+1) == len(raw)
		default:
			return u, false, false
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// skipValue skips one JSON value from b[i]; -1 where it cannot tell where it ends.
func skipValue(b []byte, i int) int {
	depth := 0
	for i < len(b) {
		switch c := b[i]; c {
		case '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
			if i >= len(b) {
				return -1
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i
			}
			depth--
		case ',':
			if depth == 0 {
				return i
			}
		}
		i++
		if depth == 0 && i < len(b) && (b[i-1] == '"' || b[i-1] == '}' || b[i-1] == ']') {
			return i
		}
	}
	if depth == 0 {
		return i
	}
	return -1
}

// usageWriters keeps writers and their buffers from one response to the next.
var usageWriters = sync.Pool{New: func() any { return new(usageWriter) }}

func newUsageWriter(w http.ResponseWriter, strip bool) *usageWriter {
	u := usageWriters.Get().(*usageWriter)
	cur, key, capture := u.sse.cur[:0], u.sse.doc.key[:0], u.sse.doc.capture[:0]
	bkey, bcapture, out := u.body.key[:0], u.body.capture[:0], u.out[:0]
	*u = usageWriter{w: w, strip: strip, out: out}
	u.sse.cur, u.sse.doc.key, u.sse.doc.capture = cur, key, capture
	u.body.key, u.body.capture = bkey, bcapture
	return u
}

// release gives the writer back; nothing may use it afterwards.
func (u *usageWriter) release() {
	u.w = nil
	if cap(u.sse.cur) <= maxHeldEvent && cap(u.out) <= 4*maxHeldEvent {
		usageWriters.Put(u)
	}
}

func (u *usageWriter) Header() http.Header { return u.w.Header() }

func (u *usageWriter) WriteHeader(status int) {
	if status >= 100 && status < 200 {
		u.w.WriteHeader(status)
		return
	}
	if u.status != 0 {
		return
	}
	u.status = status
	h := u.w.Header()
	ct := h.Get("Content-Type")
	switch enc := h.Get("Content-Encoding"); {
	case enc != "" && enc != "identity":
		u.mode = modeNone // compressed: not read (no usage, the reservation is kept)
	case len(ct) >= 17 && strings.EqualFold(ct[:17], "text/event-stream"):
		u.mode = modeSSE
	case strings.Contains(ct, "json") || strings.Contains(strings.ToLower(ct), "json"):
		u.mode = modeJSON
	}
	if u.mode == modeSSE && u.strip {
		// The usage chunk will be cut out, so the length changes.
		h.Del("Content-Length")
	}
	u.wrote = true
	u.w.WriteHeader(status)
}

func (u *usageWriter) Write(p []byte) (int, error) {
	if u.status == 0 {
		u.WriteHeader(http.StatusOK)
	}
	switch u.mode {
	case modeJSON:
		u.body.feed(p)
	case modeSSE:
		if u.strip {
			return u.writeStripping(p)
		}
		u.sse.feed(p, u)
	}
	return u.w.Write(p)
}

// event reads one whole SSE event (nil: it outgrew maxHeldEvent and was not kept):
// the usage of its data, if it has one; true when it is a usage-only chunk.
func (u *usageWriter) event(ev []byte) bool {
	if ev == nil || !bytes.Contains(ev, []byte(`"usage"`)) {
		return false // (most events: content chunks)
	}
	t := &u.sse.doc
	t.reset(true)
	for line := range bytes.Lines(ev) {
		if payload, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			t.feed(payload)
		}
	}
	if raw := t.value("usage"); raw != nil {
		if usage, ok := parseUsage(raw); ok {
			u.usage, u.found = usage, true
			return t.emptyChoices()
		}
	}
	return false
}

// writeStripping passes every event on at its end, except a usage-only chunk; an
// event longer than maxHeldEvent is passed on as it comes.
func (u *usageWriter) writeStripping(p []byte) (int, error) {
	// What passes is gathered and written once, as it came: one write for one write.
	u.out = u.out[:0]
	u.sse.feed(p, u)
	if len(u.out) > 0 {
		if _, err := u.w.Write(u.out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// eventDone is the sseReader's call at the end of each event.
func (u *usageWriter) eventDone(ev []byte) {
	usageOnly := u.event(ev)
	switch {
	case !u.strip:
	case usageOnly:
		u.stripped++
	default:
		u.passOver(ev)
	}
}

// passOver gathers bytes of a stream that go on to the client (strip mode).
func (u *usageWriter) passOver(b []byte) {
	if u.strip {
		u.out = append(u.out, b...)
	}
}

// Flush sends what has been written (a held partial event stays held).
func (u *usageWriter) Flush() {
	_ = http.NewResponseController(u.w).Flush()
}

// FlushError is Flush that reports a failure (http.ResponseController prefers it).
func (u *usageWriter) FlushError() error {
	return http.NewResponseController(u.w).Flush()
}

// Unwrap lets http.ResponseController reach the connection beneath.
func (u *usageWriter) Unwrap() http.ResponseWriter { return u.w }

// finish writes what strip mode still holds (an event cut off by the end of the
// response) and returns the usage found, if any.
func (u *usageWriter) finish() (engine.Usage, bool) {
	if u.mode == modeSSE && u.strip && !u.sse.over && len(u.sse.cur) > 0 {
		_, _ = u.w.Write(u.sse.cur)
		u.sse.cur = u.sse.cur[:0]
	}
	if u.mode == modeJSON {
		if raw := u.body.value("usage"); raw != nil {
			return parseUsage(raw)
		}
	}
	return u.usage, u.found
}

// sseReader splits a text/event-stream into events (a blank line ends one), keeping
// the current event's bytes (up to maxHeldEvent) so each is read once it is whole.
type sseReader struct {
	cur []byte
	// over: the current event outgrew maxHeldEvent; its bytes are not kept (strip
	// mode passes them on through passOver as they come).
	over bool
	// content: the current line so far has a byte other than CR.
	content bool
	doc     topLevel
}

// sseSink is told of each whole event, and of the bytes of an event over the bound.
type sseSink interface {
	eventDone(ev []byte)
	passOver(b []byte)
}

// maxHeldEvent bounds what an event may hold: a longer one is passed on as it comes
// (and so is never taken for a usage-only chunk).
const maxHeldEvent = 64 << 10

// feed reads p and tells the sink of each event that ends in it (nil if it was over
// the bound).
func (s *sseReader) feed(p []byte, sink sseSink) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.add(p, sink)
			s.content = s.content || bytes.ContainsFunc(p, notCR)
			return
		}
		blank := !s.content && !bytes.ContainsFunc(p[:i], notCR)
		s.add(p[:i+1], sink)
		s.content = false
		p = p[i+1:]
		if blank {
			ev := s.cur
			if s.over {
				ev = nil
			}
			sink.eventDone(ev)
			s.cur, s.over = s.cur[:0], false
		}
	}
}

func notCR(r rune) bool { return r != '\r' }

func (s *sseReader) add(seg []byte, sink sseSink) {
	switch {
	case s.over:
	case len(s.cur)+len(seg) > maxHeldEvent:
		s.over = true
		sink.passOver(s.cur)
		s.cur = s.cur[:0]
	default:
		s.cur = append(s.cur, seg...)
		return
	}
	sink.passOver(seg)
}

// topLevel reads one JSON document as it streams past and keeps the raw value of the
// top-level members it is asked for ("usage", "choices"), the last of each (as
// Python's and Go's json keep the last of duplicate keys), each up to maxCapture
// bytes. Anything it cannot follow leaves those values unset.
type topLevel struct {
	depth     int
	inStr     bool
	esc       bool
	expectKey bool
	readKey   bool
	key       []byte
	keyLong   bool
	// pending: a top-level member's value starts at the next non-space byte.
	pending  bool
	capKey   string
	capture  []byte
	capDepth int
	capStr   bool // the captured value is a string or scalar (ends at , or })
	capOver  bool
	usage    []byte
	choices  []byte
	broken   bool
	// wantChoices: also keep "choices" (SSE chunks: is it empty?).
	wantChoices bool
}

// reset makes t read a new document, keeping its buffers.
func (t *topLevel) reset(wantChoices bool) {
	key, capture := t.key[:0], t.capture[:0]
	*t = topLevel{key: key, capture: capture, wantChoices: wantChoices}
}

const maxCapture = 4096

func (t *topLevel) feed(p []byte) {
	for i := 0; i < len(p); {
		if t.inStr && !t.esc && !t.readKey && !t.broken {
			// Inside a string nothing but a quote or a backslash matters: skip to it.
			j := bytes.IndexAny(p[i:], "\"\\")
			if j < 0 {
				t.capAppend(p[i:])
				return
			}
			t.capAppend(p[i : i+j])
			i += j
		}
		t.feedByte(p[i])
		i++
	}
}

func (t *topLevel) capAppend(b []byte) {
	if t.capKey == "" {
		return
	}
	if len(t.capture)+len(b) <= maxCapture {
		t.capture = append(t.capture, b...)
	} else {
		t.capOver = true
	}
}

func (t *topLevel) value(key string) []byte {
	switch key {
	case "usage":
		return t.usage
	case "choices":
		return t.choices
	}
	return nil
}

// emptyChoices: the document's "choices" is an empty array.
func (t *topLevel) emptyChoices() bool {
	return t.choices != nil && string(bytes.Join(bytes.Fields(t.choices), nil)) == "[]"
}

func (t *topLevel) keep(key string, v []byte) {
	switch key {
	case "usage":
		t.usage = v
	case "choices":
		t.choices = v
	}
}

func (t *topLevel) feedByte(c byte) {
	if t.broken {
		return
	}
	if t.capKey != "" {
		if len(t.capture) < maxCapture {
			t.capture = append(t.capture, c)
		} else {
			t.capOver = true
		}
	}
	if t.inStr {
		switch {
		case t.esc:
			t.esc = false
		case c == '\\':
			t.esc = true
		case c == '"':
			t.inStr = false
			if t.readKey {
				t.readKey = false
			}
		default:
			if t.readKey {
				if len(t.key) < 16 {
					t.key = append(t.key, c)
				} else {
					t.keyLong = true
				}
			}
		}
		if !t.inStr && t.capKey != "" && t.capStr && t.depth == 1 {
			t.endCapture(0)
		}
		return
	}
	if t.pending && !isSpace(c) {
		t.pending = false
		k := string(t.key)
		if !t.keyLong && (k == "usage" || (k == "choices" && t.wantChoices)) {
			t.capKey, t.capture, t.capOver = k, append(t.capture[:0], c), false
			t.capDepth = t.depth
			t.capStr = c != '{' && c != '['
		}
	}
	switch c {
	case '"':
		t.inStr = true
		if t.depth == 1 && t.expectKey {
			t.readKey, t.expectKey = true, false
			t.key, t.keyLong = t.key[:0], false
		}
	case '{', '[':
		t.depth++
		if t.depth == 1 {
			if c != '{' {
				t.broken = true
			}
			t.expectKey = true
		}
	case '}', ']':
		if t.capKey != "" && t.capStr && t.depth == 1 {
			t.endCapture(1) // a scalar value ends at the object's end
		}
		t.depth--
		if t.capKey != "" && !t.capStr && t.depth == t.capDepth {
			t.endCapture(0)
		}
		if t.depth < 0 {
			t.broken = true
		}
	case ':':
		if t.depth == 1 {
			t.pending = true
		}
	case ',':
		if t.capKey != "" && t.capStr && t.depth == 1 {
			t.endCapture(1)
		}
		if t.depth == 1 {
			t.expectKey = true
		}
	}
}

// endCapture ends the value being captured, less its last `drop` bytes (the
// terminator of a scalar).
func (t *topLevel) endCapture(drop int) {
	if !t.capOver {
		v := bytes.Clone(t.capture[:len(t.capture)-drop])
		t.keep(t.capKey, bytes.TrimSpace(v))
	}
	t.capKey, t.capture = "", t.capture[:0]
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }
