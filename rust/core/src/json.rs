//! `json`: a request body read the way vLLM reads it, or refused.
//!
//! vLLM (FastAPI/Starlette) hands the body to Python's `json.loads`, which accepts
//! things a policy engine must not judge differently: the last of two duplicate keys
//! wins, `NaN`/`Infinity`, unpaired surrogate escapes, integers of any size and `1e400`
//! (as `inf`) all pass. Rather than imitate each quirk, this reader accepts exactly the
//! documents on which every reading agrees and refuses the rest ([`Malformed`]):
//! strict RFC 8259 JSON in UTF-8 (a leading UTF-8 byte order mark is skipped, as Python
//! does), an object at the top, no duplicate key at any depth, no unpaired surrogate,
//! integers within i64/u64, finite doubles, nesting within the policy's limit.
//!
//! [`read_object`] checks the whole document in one pass without building anything and
//! returns the top-level fields as raw spans; [`value`] converts a span to CEL values
//! when a rule reads it. Both use the same tokenizer, so a span that passed the check
//! always converts: no field is ever dropped.

use std::borrow::Cow;
use std::collections::HashSet;

use cel::common::types::{CelDouble, CelNull, CelUInt};

use crate::values::{self, BoxVal};

/// Why a body was refused, and at which byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed JSON body at byte {at}: {problem}")]
pub struct Malformed {
    pub at: usize,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    #[error("not UTF-8")]
    NotUtf8,
    #[error("the body is not a JSON object")]
    NotObject,
    #[error("expected {0}")]
    Expected(&'static str),
    #[error("unexpected end of the body")]
    End,
    #[error("data after the JSON object")]
    Trailing,
    #[error("a control character in a string")]
    ControlCharacter,
    #[error("an invalid escape in a string")]
    BadEscape,
    #[error("an unpaired surrogate escape (Python reads it, others refuse it)")]
    LoneSurrogate,
    #[error("NaN and Infinity are not JSON")]
    NotANumber,
    #[error("a number outside the range of i64, u64 and finite doubles")]
    NumberOutOfRange,
    #[error("nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("duplicate key {0:?}")]
    DuplicateKey(String),
}

/// A top-level field: its key and the raw bytes of its value.
#[derive(Debug)]
pub struct Field<'a> {
    pub key: Cow<'a, str>,
    pub raw: &'a [u8],
    /// Bytes of string values inside the value (escapes counted as written).
    pub string_bytes: u64,
    /// Integers inside the value (token ids, when the value is a prompt).
    pub integers: u64,
    /// When the value is an array: its items, and how many are arrays and integers
    /// (how many prompts a `prompt` list or a batch of chats carries).
    pub items: Option<Items>,
}

/// The shape of an array's items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Items {
    pub count: u64,
    pub arrays: u64,
    pub integers: u64,
}

/// Checks a whole body and splits it into its top-level fields (see the module docs).
pub fn read_object(bytes: &[u8], max_depth: usize) -> Result<Vec<Field<'_>>, Malformed> {
    let (bytes, offset) = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => (rest, 3),
        None => (bytes, 0),
    };
    read_utf8_object(bytes, max_depth).map_err(|mut e| {
        e.at += offset;
        e
    })
}

fn read_utf8_object(bytes: &[u8], max_depth: usize) -> Result<Vec<Field<'_>>, Malformed> {
    if let Err(e) = simdutf8::compat::from_utf8(bytes) {
        return Err(Malformed {
            at: e.valid_up_to(),
            problem: Problem::NotUtf8,
        });
    }
    let mut s = Scanner::new(bytes);
    s.ws();
    if s.peek() != Some(b'{') {
        return Err(s.fail(Problem::NotObject));
    }
    s.i += 1;
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut keys = Frame::new(true);
    let mut nested = Nested::default();
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            let key_at = s.i;
            let key = s.key()?;
            keys.insert(key.clone(), key_at)?;
            let start = s.i;
            let mut f = Field {
                key,
                raw: &[],
                string_bytes: 0,
                integers: 0,
                items: None,
            };
            nested.value(&mut s, max_depth.saturating_sub(1), max_depth, &mut f)?;
            f.raw = &bytes[start..s.i];
            fields.push(f);
            s.ws();
            match s.next()? {
                b',' => s.ws(),
                b'}' => break,
                _ => return Err(s.back(Problem::Expected("',' or '}'"))),
            }
        }
    }
    s.ws();
    if s.i != bytes.len() {
        return Err(s.fail(Problem::Trailing));
    }
    Ok(fields)
}

/// The CEL value of a span that [`read_object`] accepted.
pub fn value(raw: &[u8]) -> Result<BoxVal<'static>, Malformed> {
    let mut s = Scanner::new(raw);
    let v = build(&mut s)?;
    s.ws();
    if s.i != raw.len() {
        return Err(s.fail(Problem::Trailing));
    }
    Ok(v)
}

/// A JSON number as the body's reader keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i64),
    UInt(u64),
    Double(f64),
}

/// A string token: its raw bytes between the quotes, and whether it has escapes.
struct Str<'a> {
    raw: &'a [u8],
    escaped: bool,
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Bytes of `w` that end a plain run of string bytes (`"`, `\`, or a control
/// character): the lowest set bit marks the first of them exactly.
#[inline]
fn string_stops(w: u64) -> u64 {
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    zero(quote) | zero(backslash) | (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
}

/// The index of the first byte at or after `i` that ends a plain run of string bytes,
/// or `b.len()`. Prompts are long strings: this loop is where a body's time goes.
#[inline]
fn skip_plain(b: &[u8], mut i: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        i = sse2::skip_plain(b, i);
    }
    while i + 8 <= b.len() {
        let w = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let stops = string_stops(w);
        if stops != 0 {
            return i + (stops.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && !matches!(b[i], b'"' | b'\\' | 0..=0x1F) {
        i += 1;
    }
    i
}

/// 32 bytes a step with SSE2, which every x86-64 processor has.
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };

    /// Like `super::skip_plain`, but may stop early, up to 32 bytes before the end.
    #[inline]
    pub fn skip_plain(b: &[u8], mut i: usize) -> usize {
        // SAFETY: SSE2 is part of x86-64; each load reads 16 bytes that `i + 32 <=
        // b.len()` keeps inside `b`.
        unsafe {
            let quote = _mm_set1_epi8(b'"' as i8);
            let backslash = _mm_set1_epi8(b'\\' as i8);
            let control = _mm_set1_epi8(0x1F);
            let stops = |at: usize| {
                let v = _mm_loadu_si128(b.as_ptr().add(at) as *const __m128i);
                let low = _mm_cmpeq_epi8(_mm_max_epu8(v, control), control); // v <= 0x1F
                let m = _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                    low,
                );
                _mm_movemask_epi8(m) as u32
            };
            while i + 32 <= b.len() {
                let m = stops(i) | (stops(i + 16) << 16);
                if m != 0 {
                    return i + m.trailing_zeros() as usize;
                }
                i += 32;
            }
        }
        i
    }
}

impl<'a> Scanner<'a> {
    fn new(b: &'a [u8]) -> Self {
        Scanner { b, i: 0 }
    }

    fn fail(&self, problem: Problem) -> Malformed {
        let problem = match problem {
            Problem::Expected(_) if self.i >= self.b.len() => Problem::End,
            p => p,
        };
        Malformed {
            at: self.i,
            problem,
        }
    }

    /// A failure at the byte `next` just consumed.
    fn back(&mut self, problem: Problem) -> Malformed {
        self.i -= 1;
        self.fail(problem)
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Result<u8, Malformed> {
        let c = self.peek().ok_or_else(|| self.fail(Problem::End))?;
        self.i += 1;
        Ok(c)
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), Malformed> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.fail(Problem::Expected(what)))
        }
    }

    /// A key and the `:` after it.
    fn key(&mut self) -> Result<Cow<'a, str>, Malformed> {
        if self.peek() != Some(b'"') {
            return Err(self.fail(Problem::Expected("a string key")));
        }
        let s = self.string()?;
        self.ws();
        self.expect(b':', "':'")?;
        self.ws();
        Ok(decode(&s))
    }

    /// A string; `self.i` is at its opening quote.
    fn string(&mut self) -> Result<Str<'a>, Malformed> {
        let start = self.i + 1;
        let mut i = start;
        let mut escaped = false;
        let b = self.b;
        loop {
            i = skip_plain(b, i);
            let Some(&c) = b.get(i) else {
                self.i = i;
                return Err(self.fail(Problem::End));
            };
            match c {
                b'"' => {
                    self.i = i + 1;
                    return Ok(Str {
                        raw: &b[start..i],
                        escaped,
                    });
                }
                b'\\' => {
                    escaped = true;
                    self.i = i;
                    i = self.escape()?;
                }
                0..=0x1F => {
                    self.i = i;
                    return Err(self.fail(Problem::ControlCharacter));
                }
                _ => i += 1,
            }
        }
    }

    /// Checks the escape at `self.i` (a backslash); returns the index after it.
    fn escape(&self) -> Result<usize, Malformed> {
        let i = self.i;
        match self.b.get(i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
            Some(b'u') => {
                let unit = self.hex4(i + 2)?;
                match unit {
                    0xD800..=0xDBFF => {
                        let low = (self.b.get(i + 6) == Some(&b'\\')
                            && self.b.get(i + 7) == Some(&b'u'))
                        .then(|| self.hex4(i + 8))
                        .transpose()?;
                        match low {
                            Some(0xDC00..=0xDFFF) => Ok(i + 12),
                            _ => Err(self.fail(Problem::LoneSurrogate)),
                        }
                    }
                    0xDC00..=0xDFFF => Err(self.fail(Problem::LoneSurrogate)),
                    _ => Ok(i + 6),
                }
            }
            None => Err(self.fail(Problem::End)),
            Some(_) => Err(self.fail(Problem::BadEscape)),
        }
    }

    fn hex4(&self, at: usize) -> Result<u32, Malformed> {
        let digits = self
            .b
            .get(at..at + 4)
            .ok_or_else(|| self.fail(Problem::End))?;
        let mut n = 0u32;
        for &d in digits {
            let v = (d as char)
                .to_digit(16)
                .ok_or_else(|| self.fail(Problem::BadEscape))?;
            n = n * 16 + v;
        }
        Ok(n)
    }

    /// A number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`. Integers stay
    /// integers (as in Python) and must fit i64 or u64; others are doubles, correctly
    /// rounded (as Python's `float`), and must be finite.
    fn number(&mut self) -> Result<Number, Malformed> {
        let start = self.i;
        let b = self.b;
        let digits = |mut i: usize| {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
            if b[i..].starts_with(b"Infinity") {
                self.i = start;
                return Err(self.fail(Problem::NotANumber));
            }
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits(i),
            _ => {
                self.i = i;
                return Err(self.fail(Problem::Expected("a digit")));
            }
        }
        let int_end = i;
        if b.get(i) == Some(&b'.') {
            let end = digits(i + 1);
            if end == i + 1 {
                self.i = end;
                return Err(self.fail(Problem::Expected("a digit after '.'")));
            }
            i = end;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            let end = digits(i);
            if end == i {
                self.i = end;
                return Err(self.fail(Problem::Expected("a digit in the exponent")));
            }
            i = end;
        }
        // ASCII by construction.
        let text = std::str::from_utf8(&b[start..i]).expect("ASCII digits");
        let out_of_range = || Malformed {
            at: start,
            problem: Problem::NumberOutOfRange,
        };
        let n = if i == int_end {
            if let Ok(n) = text.parse::<i64>() {
                Number::Int(n)
            } else {
                Number::UInt(text.parse::<u64>().map_err(|_| out_of_range())?)
            }
        } else {
            let f: f64 = text.parse().map_err(|_| out_of_range())?;
            if !f.is_finite() {
                return Err(out_of_range());
            }
            Number::Double(f)
        };
        self.i = i;
        Ok(n)
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), Malformed> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.fail(Problem::Expected("a JSON value")))
        }
    }

    /// The start of a value that is not a string, number, array or object.
    fn other(&mut self) -> Result<(), Malformed> {
        match self.peek() {
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'N' | b'I')
                if [&b"NaN"[..], b"Infinity"]
                    .iter()
                    .any(|w| self.b[self.i..].starts_with(w)) =>
            {
                Err(self.fail(Problem::NotANumber))
            }
            _ => Err(self.fail(Problem::Expected("a JSON value"))),
        }
    }
}

/// A string's text, borrowed unless it has escapes.
fn decode<'a>(s: &Str<'a>) -> Cow<'a, str> {
    // Checked UTF-8 as part of the document, and escapes checked by `Scanner::escape`.
    let text = std::str::from_utf8(s.raw).expect("checked UTF-8");
    if !s.escaped {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices();
    while let Some((_, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some((at, e)) = chars.next() else { break };
        out.push(match e {
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let unit = |at: usize| u32::from_str_radix(&text[at..at + 4], 16).unwrap_or(0);
                let hi = unit(at + 1);
                let code = if (0xD800..=0xDBFF).contains(&hi) {
                    let lo = unit(at + 7);
                    for _ in 0..10 {
                        chars.next();
                    }
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    for _ in 0..4 {
                        chars.next();
                    }
                    hi
                };
                char::from_u32(code).unwrap_or('\u{FFFD}')
            }
            other => other,
        });
    }
    Cow::Owned(out)
}

/// What an open array or object needs: whether it is an object, and its keys so far:
/// a short list compared in place, a set once it grows, so an object of many keys
/// costs linear time.
struct Frame<'a> {
    object: bool,
    keys: Vec<Cow<'a, str>>,
    set: Option<HashSet<Cow<'a, str>>>,
}

impl<'a> Frame<'a> {
    fn new(object: bool) -> Self {
        Frame {
            object,
            keys: Vec::new(),
            set: None,
        }
    }

    /// Adds the key read at byte `at`; a duplicate is refused.
    fn insert(&mut self, key: Cow<'a, str>, at: usize) -> Result<(), Malformed> {
        let dup = match &mut self.set {
            Some(set) => set.contains(&key),
            None => self.keys.contains(&key),
        };
        if dup {
            return Err(Malformed {
                at,
                problem: Problem::DuplicateKey(key.into_owned()),
            });
        }
        match &mut self.set {
            Some(set) => {
                set.insert(key);
            }
            None if self.keys.len() < LINEAR_KEYS => self.keys.push(key),
            None => {
                let mut set: HashSet<Cow<'a, str>> = self.keys.drain(..).collect();
                set.insert(key);
                self.set = Some(set);
            }
        }
        Ok(())
    }
}

/// The check of nested values, with its frames kept between top-level fields so a
/// body's check allocates them once.
#[derive(Default)]
struct Nested<'a> {
    frames: Vec<Frame<'a>>,
}

/// Objects with more keys than this check duplicates through a hash set.
const LINEAR_KEYS: usize = 16;

impl<'a> Nested<'a> {
    /// Checks one value below a top-level key, `depth_left` containers deep at most.
    fn value(
        &mut self,
        s: &mut Scanner<'a>,
        depth_left: usize,
        max_depth: usize,
        field: &mut Field<'a>,
    ) -> Result<(), Malformed> {
        let mut open = 0usize;
        loop {
            // A value; an item of the field's own array counts toward its shape.
            if open == 1 && !self.frames[0].object {
                let items = field.items.get_or_insert_with(Items::default);
                items.count += 1;
                match s.peek() {
                    Some(b'[') => items.arrays += 1,
                    Some(b'-' | b'0'..=b'9') if is_integer(&s.b[s.i..]) => items.integers += 1,
                    _ => {}
                }
            }
            match s.peek() {
                Some(c @ (b'{' | b'[')) => {
                    if open == depth_left {
                        return Err(s.fail(Problem::TooDeep(max_depth)));
                    }
                    s.i += 1;
                    s.ws();
                    let object = c == b'{';
                    let close = if object { b'}' } else { b']' };
                    if open == 0 && !object {
                        field.items = Some(Items::default());
                    }
                    if s.peek() == Some(close) {
                        s.i += 1;
                    } else {
                        self.open(open, object);
                        open += 1;
                        if object {
                            self.key(s, open - 1)?;
                        }
                        continue;
                    }
                }
                Some(b'"') => field.string_bytes += s.string()?.raw.len() as u64,
                Some(b'-' | b'0'..=b'9') => {
                    if !matches!(s.number()?, Number::Double(_)) {
                        field.integers += 1;
                    }
                }
                _ => s.other()?,
            }
            // What follows it: a separator, or the end of one or more containers.
            loop {
                if open == 0 {
                    return Ok(());
                }
                s.ws();
                let object = self.frames[open - 1].object;
                match (s.next()?, object) {
                    (b',', true) => {
                        s.ws();
                        self.key(s, open - 1)?;
                        break;
                    }
                    (b',', false) => {
                        s.ws();
                        break;
                    }
                    (b'}', true) | (b']', false) => open -= 1,
                    (_, true) => return Err(s.back(Problem::Expected("',' or '}'"))),
                    (_, false) => return Err(s.back(Problem::Expected("',' or ']'"))),
                }
            }
        }
    }

    fn open(&mut self, at: usize, object: bool) {
        if self.frames.len() == at {
            self.frames.push(Frame::new(object));
        }
        let f = &mut self.frames[at];
        f.object = object;
        f.keys.clear();
        f.set = None;
    }

    fn key(&mut self, s: &mut Scanner<'a>, at: usize) -> Result<(), Malformed> {
        let key_at = s.i;
        let key = s.key()?;
        self.frames[at].insert(key, key_at)
    }
}

/// Whether the number at the start of `b` is written as an integer (no `.`, `e`).
fn is_integer(b: &[u8]) -> bool {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    let end = digits
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    !matches!(digits.get(end), Some(b'.' | b'e' | b'E'))
}

/// Converts a checked value (recursively: nesting was bounded by the check).
fn build(s: &mut Scanner<'_>) -> Result<BoxVal<'static>, Malformed> {
    s.ws();
    Ok(match s.peek() {
        Some(b'{') => {
            s.i += 1;
            let mut entries: Vec<(String, BoxVal<'static>)> = Vec::new();
            s.ws();
            if s.peek() == Some(b'}') {
                s.i += 1;
            } else {
                loop {
                    let key = s.key()?.into_owned();
                    entries.push((key, build(s)?));
                    s.ws();
                    match s.next()? {
                        b',' => s.ws(),
                        b'}' => break,
                        _ => return Err(s.back(Problem::Expected("',' or '}'"))),
                    }
                }
            }
            values::map(entries)
        }
        Some(b'[') => {
            s.i += 1;
            let mut items = Vec::new();
            s.ws();
            if s.peek() == Some(b']') {
                s.i += 1;
            } else {
                loop {
                    items.push(build(s)?);
                    s.ws();
                    match s.next()? {
                        b',' => {}
                        b']' => break,
                        _ => return Err(s.back(Problem::Expected("',' or ']'"))),
                    }
                }
            }
            values::list(items)
        }
        Some(b'"') => {
            let t = s.string()?;
            values::string(decode(&t).into_owned())
        }
        Some(b'-' | b'0'..=b'9') => match s.number()? {
            Number::Int(i) => values::int(i),
            Number::UInt(u) => Box::new(CelUInt::from(u)),
            Number::Double(f) => Box::new(CelDouble::from(f)),
        },
        Some(b't') => {
            s.literal(b"true")?;
            values::boolean(true)
        }
        Some(b'f') => {
            s.literal(b"false")?;
            values::boolean(false)
        }
        Some(b'n') => {
            s.literal(b"null")?;
            Box::new(CelNull)
        }
        _ => {
            s.other()?;
            unreachable!("other() accepts only true, false and null")
        }
    })
}

/// The number at the start of a checked span, if it is one (for the `llm` view).
pub fn number(raw: &[u8]) -> Option<Number> {
    let mut s = Scanner::new(raw);
    s.number().ok().filter(|_| s.i == raw.len())
}

/// The string a checked span holds, if it is one.
pub fn string(raw: &[u8]) -> Option<Cow<'_, str>> {
    let mut s = Scanner::new(raw);
    if s.peek() != Some(b'"') {
        return None;
    }
    let t = s.string().ok()?;
    (s.i == raw.len()).then(|| decode(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(body: &str) -> Problem {
        read_object(body.as_bytes(), 8).unwrap_err().problem
    }

    #[test]
    fn fields_come_back_as_spans_with_their_strings_and_integers() {
        let f = read_object(
            br#"{"model":"m","prompt":[[1,2],[3]],"x":{"a":"\u00e9"}}"#,
            8,
        )
        .unwrap();
        let keys: Vec<_> = f.iter().map(|f| f.key.as_ref()).collect();
        assert_eq!(keys, ["model", "prompt", "x"]);
        assert_eq!(f[1].raw, b"[[1,2],[3]]");
        assert_eq!((f[1].integers, f[0].string_bytes), (3, 1));
        assert_eq!(f[2].string_bytes, 6);
    }

    #[test]
    fn refuses_what_readers_disagree_on() {
        assert_eq!(
            problem(r#"{"a":1,"a":2}"#),
            Problem::DuplicateKey("a".into())
        );
        assert_eq!(
            problem(r#"{"a":1,"\u0061":2}"#),
            Problem::DuplicateKey("a".into())
        );
        assert_eq!(
            problem(r#"{"o":{"k":1,"k":1}}"#),
            Problem::DuplicateKey("k".into())
        );
        assert_eq!(problem(r#"{"a":NaN}"#), Problem::NotANumber);
        assert_eq!(problem(r#"{"a":-Infinity}"#), Problem::NotANumber);
        assert_eq!(problem(r#"{"a":1e400}"#), Problem::NumberOutOfRange);
        assert_eq!(
            problem(r#"{"a":18446744073709551616}"#),
            Problem::NumberOutOfRange
        );
        assert_eq!(
            problem(r#"{"a":-9223372036854775809}"#),
            Problem::NumberOutOfRange
        );
        assert_eq!(problem(r#"{"a":"\ud800"}"#), Problem::LoneSurrogate);
        assert_eq!(problem(r#"{"a":"\udc00\ud800"}"#), Problem::LoneSurrogate);
        assert_eq!(problem(r#"[1]"#), Problem::NotObject);
        assert_eq!(problem(r#"{"a":[[[[[[[[1]]]]]]]]}"#), Problem::TooDeep(8));
        assert_eq!(problem("{\"a\":\"\t\"}"), Problem::ControlCharacter);
        assert_eq!(problem(r#"{"a":1} x"#), Problem::Trailing);
        assert_eq!(problem(r#"{"a":01}"#), Problem::Expected("',' or '}'"));
        assert_eq!(problem(r#"{"a":1"#), Problem::End);
        assert_eq!(
            read_object(b"{\"a\":\"\xff\"}", 8).unwrap_err(),
            Malformed {
                at: 6,
                problem: Problem::NotUtf8
            }
        );
    }

    #[test]
    fn accepts_the_documents_readers_agree_on() {
        for ok in [
            "{}",
            " {\"a\" : [ ] , \"b\":{ } }\n",
            r#"{"a":"\ud83d\ude00","b":-0,"c":1e-400,"d":9223372036854775807}"#,
            r#"{"a":18446744073709551615,"b":-9223372036854775808,"c":1.5e308}"#,
            r#"{"":{"":1},"o":[{"k":1},{"k":2}]}"#,
        ] {
            read_object(ok.as_bytes(), 8).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let bom = read_object(b"\xEF\xBB\xBF{\"a\":1}", 8).unwrap();
        assert_eq!(bom[0].key, "a");
    }

    #[test]
    fn many_keys_are_checked_in_linear_time_and_still_caught() {
        let mut body = String::from("{\"o\":{");
        for i in 0..5000 {
            body.push_str(&format!("\"k{i}\":{i},"));
        }
        body.push_str("\"k17\":0}}");
        assert_eq!(problem(&body), Problem::DuplicateKey("k17".into()));
    }

    #[test]
    fn spans_convert_to_the_values_python_reads() {
        let v = value(br#"{"s":"a\"\u00e9\ud83d\ude00","i":-0,"u":18446744073709551615,"f":0.1,"l":[true,null]}"#)
            .unwrap();
        let text = format!("{v:?}");
        for part in ["a\\\"é😀", "18446744073709551615", "0.1"] {
            assert!(text.contains(part), "{text}");
        }
        assert_eq!(number(b"-0"), Some(Number::Int(0)));
        assert_eq!(number(b"4096.0"), Some(Number::Double(4096.0)));
        assert_eq!(string(br#""x\n""#).as_deref(), Some("x\n"));
        let f = read_object(
            br#"{"p":[ [1], "s", 3, {"a":[1]}, 2.5, -7 ],"e":[],"o":{"x":[[1]]}}"#,
            8,
        )
        .unwrap();
        let shape = |count, arrays, integers| {
            Some(Items {
                count,
                arrays,
                integers,
            })
        };
        assert_eq!(f[0].items, shape(6, 1, 2));
        assert_eq!(f[1].items, shape(0, 0, 0));
        assert_eq!(f[2].items, None, "not an array");
    }
}
