//! Reading requests handed in across the ABI. Lengths are checked against what is
//! there before anything is read; a header or field that is not UTF-8 makes the
//! request a 400, never a pass.

use zt_policy_core::Request;

/// The encoding itself is broken (truncated, lengths past the end, trailing bytes).
pub struct Malformed;

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n > self.buf.len() {
            return Err(Malformed);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| Malformed)?,
        ))
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| Malformed)?,
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

fn text<'a>(what: &str, b: &'a [u8]) -> Result<&'a str, String> {
    utf8(b).ok_or_else(|| format!("request {what} is not valid UTF-8"))
}

/// `b` as text when it is UTF-8. Requests are nearly all ASCII, which is checked a word
/// at a time (a bearer token is most of a kilobyte); anything else gets the full check.
fn utf8(b: &[u8]) -> Option<&str> {
    if b.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(b) })
    } else {
        std::str::from_utf8(b).ok()
    }
}

/// Decodes the flat encoding of `ztp_engine_decide`.
pub fn request<'a>(
    buf: &'a [u8],
    headers: &mut Vec<(&'a str, &'a str)>,
) -> Result<Result<Request<'a>, String>, Malformed> {
    let mut r = Reader { buf };
    if r.take(1)? != [crate::ZTP_REQUEST_VERSION] {
        return Err(Malformed);
    }
    let body_size = r.u64()?;
    let mut raw = [&[][..]; 6];
    for slot in &mut raw {
        *slot = r.bytes()?;
    }
    let count = r.u32()? as usize;
    // Every header takes at least 8 bytes: a count past that is a lie.
    if count > r.buf.len() / 8 {
        return Err(Malformed);
    }
    // The headers go straight into the caller's list (one allocation, of the right
    // size); a header that is not UTF-8 is remembered, and reported once the whole
    // encoding is known to be well formed.
    headers.reserve_exact(count);
    let mut bad_header = None;
    for _ in 0..count {
        let (n, v) = (r.bytes()?, r.bytes()?);
        add_header(headers, &mut bad_header, n, v);
    }
    if !r.buf.is_empty() {
        return Err(Malformed);
    }
    Ok(build(raw, body_size, bad_header))
}

/// Adds a header to `headers`, or, when it is not UTF-8, keeps the first such error
/// (reported by `build` once the whole request is known to be well formed).
fn add_header<'a>(
    headers: &mut Vec<(&'a str, &'a str)>,
    bad_header: &mut Option<String>,
    n: &'a [u8],
    v: &'a [u8],
) {
    if bad_header.is_none() {
        match header(n, v) {
            Ok(h) => headers.push(h),
            Err(e) => *bad_header = Some(e),
        }
    }
}

fn header<'a>(n: &'a [u8], v: &'a [u8]) -> Result<(&'a str, &'a str), String> {
    let name = text("header name", n)?;
    let value = utf8(v).ok_or_else(|| format!("request header {name} is not valid UTF-8"))?;
    Ok((name, value))
}

fn build<'a>(
    raw: [&'a [u8]; 6],
    body_size: u64,
    bad_header: Option<String>,
) -> Result<Request<'a>, String> {
    let names = [
        "method",
        "scheme",
        "host",
        "path",
        "query",
        "remote address",
    ];
    let mut s = [""; 6];
    for i in 0..6 {
        s[i] = text(names[i], raw[i])?;
    }
    if let Some(e) = bad_header {
        return Err(e);
    }
    // The headers go in by the caller, once its list of them is final.
    Ok(Request {
        method: s[0],
        scheme: s[1],
        host: s[2],
        path: s[3],
        query: s[4],
        remote_ip: s[5],
        body_size,
        headers: &[],
        client_cert_der: None,
        body: &[],
    })
}
