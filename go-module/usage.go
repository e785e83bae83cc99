package ztpolicy

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"

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

	mode  int // modeNone, modeJSON, modeSSE
	body  topLevel
	sse   sseReader
	usage *usageCounts
	// usageChunks counts stripped usage-only chunks (tests and logs).
	stripped int
}

const (
	modeNone = iota
	modeJSON
	modeSSE
)

// usageCounts is the usage object as OpenAI and vLLM write it.
type usageCounts struct {
	PromptTokens     *uint64 `json:"prompt_tokens"`
	CompletionTokens *uint64 `json:"completion_tokens"`
	TotalTokens      *uint64 `json:"total_tokens"`
}

func (u *usageCounts) engineUsage() engine.Usage {
	v := func(p *uint64) uint64 {
		if p == nil {
			return engine.UsageAbsent
		}
		return *p
	}
	return engine.Usage{Prompt: v(u.PromptTokens), Completion: v(u.CompletionTokens), Total: v(u.TotalTokens)}
}

func newUsageWriter(w http.ResponseWriter, strip bool) *usageWriter {
	return &usageWriter{w: w, strip: strip}
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
	ct := strings.ToLower(h.Get("Content-Type"))
	switch {
	case h.Get("Content-Encoding") != "" && h.Get("Content-Encoding") != "identity":
		u.mode = modeNone // compressed: not read (no usage, the reservation is kept)
	case strings.HasPrefix(ct, "text/event-stream"):
		u.mode = modeSSE
	case strings.Contains(ct, "json"):
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
		u.sse.feed(p, u.event)
	}
	return u.w.Write(p)
}

// event is called at the end of each SSE event with what it found.
func (u *usageWriter) event(t *topLevel) bool {
	if raw := t.value("usage"); raw != nil {
		var c usageCounts
		if json.Unmarshal(raw, &c) == nil && (c.PromptTokens != nil || c.CompletionTokens != nil || c.TotalTokens != nil) {
			u.usage = &c
			return t.emptyChoices()
		}
	}
	return false
}

// writeStripping passes every event on at its end, except a usage-only chunk.
func (u *usageWriter) writeStripping(p []byte) (int, error) {
	var err error
	u.sse.feedHolding(p, u.event, func(event []byte, usageOnly bool) {
		if usageOnly {
			u.stripped++
			return
		}
		if err == nil {
			_, err = u.w.Write(event)
		}
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
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
func (u *usageWriter) finish() *usageCounts {
	if u.mode == modeSSE && u.strip {
		if rest := u.sse.held; len(rest) > 0 {
			_, _ = u.w.Write(rest)
			u.sse.held = nil
		}
	}
	if u.mode == modeJSON {
		if raw := u.body.value("usage"); raw != nil {
			var c usageCounts
			if json.Unmarshal(raw, &c) == nil && (c.PromptTokens != nil || c.CompletionTokens != nil || c.TotalTokens != nil) {
				return &c
			}
		}
	}
	return u.usage
}

// sseReader splits a text/event-stream into events (a blank line ends one) and feeds
// the payload of each `data:` line to a fresh top-level reader per event.
type sseReader struct {
	line     []byte // the start of the current line, up to len("data:")
	inData   bool   // the current line is a data line, past its prefix
	lineLen  int
	dataSeen bool // the current event has data
	doc      topLevel
	// held is the current event's bytes (strip mode only).
	held []byte
	// passing: the current event grew past maxHeldEvent and is passed on as it comes.
	passing bool
	// lastUsageOnly: the event that just ended was a usage-only chunk.
	lastUsageOnly bool
}

// maxHeldEvent bounds what strip mode holds: a longer event is passed on as it comes
// (and so is never taken for a usage-only chunk).
const maxHeldEvent = 64 << 10

// feed reads p; at each event's end calls done.
func (s *sseReader) feed(p []byte, done func(*topLevel) bool) {
	for _, c := range p {
		s.byte(c, done)
	}
}

// feedHolding is feed that also gives each event's bytes to out at its end.
func (s *sseReader) feedHolding(p []byte, done func(*topLevel) bool, out func([]byte, bool)) {
	start := 0
	for i, c := range p {
		if !s.passing {
			s.held = append(s.held, c)
		}
		if s.byte(c, done) {
			// The event ended with this byte.
			if s.passing {
				out(p[start:i+1], false)
				s.passing = false
			} else {
				out(s.held, s.lastUsageOnly)
				s.held = s.held[:0]
			}
			start = i + 1
			continue
		}
		if !s.passing && len(s.held) > maxHeldEvent {
			out(s.held, false)
			s.held = s.held[:0]
			s.passing = true
			start = i + 1
		}
	}
	if s.passing && start < len(p) {
		out(p[start:], false)
	}
}

// byte reads one byte; true at the end of an event.
func (s *sseReader) byte(c byte, done func(*topLevel) bool) bool {
	switch c {
	case '\r':
		return false // CRLF line ends: the CR is not part of anything we read
	case '\n':
		blank := s.lineLen == 0
		if s.inData {
			s.doc.feed([]byte{'\n'})
		}
		s.line, s.inData, s.lineLen = s.line[:0], false, 0
		if blank {
			ended := s.dataSeen
			if ended {
				s.lastUsageOnly = done(&s.doc)
			} else {
				s.lastUsageOnly = false
			}
			s.doc = topLevel{}
			s.dataSeen = false
			return true
		}
		return false
	}
	s.lineLen++
	if s.inData {
		s.doc.feedByte(c)
		return false
	}
	if len(s.line) < 5 {
		s.line = append(s.line, c)
		if len(s.line) == 5 && string(s.line) == "data:" {
			s.inData, s.dataSeen = true, true
		}
	}
	return false
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
}

const maxCapture = 4096

func (t *topLevel) feed(p []byte) {
	for _, c := range p {
		t.feedByte(c)
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
		if !t.keyLong && (k == "usage" || k == "choices") {
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
