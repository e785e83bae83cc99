//! The request as the caller hands it in, borrowed for one decision, and the
//! `request` variable built from it.

use std::borrow::Cow;
use std::collections::HashMap;

use cel::common::types::{CelInt, CelMapKey, CelString};
use cel::common::value::Val;

use crate::values::{self, BoxVal};

/// One request. Everything is borrowed for the duration of `Engine::decide`.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub remote_ip: &'a str,
    /// Header fields in arrival order; names in any case. Repeated fields are joined
    /// with ", " as HTTP allows.
    pub headers: &'a [(&'a str, &'a str)],
    /// The verified client certificate, DER. `None`: no certificate was presented.
    pub client_cert_der: Option<&'a [u8]>,
    /// The body bytes read so far: all of it, or the first `max_body + 1` bytes when it
    /// is larger.
    pub body: &'a [u8],
    /// The body size: `Content-Length` when known, else the bytes read. The module
    /// never reads past the limit, so `body_size` may be larger than `body.len()`.
    pub body_size: u64,
}

impl<'a> Request<'a> {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// The bearer token in header `name`, if it carries one.
    pub fn bearer(&self, name: &str) -> Option<&'a str> {
        let v = self.header(name)?.trim();
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }

    /// How many fields named `name` the request has.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }

    /// Whether vLLM (FastAPI) parses the body as JSON: when `Content-Type` is absent or
    /// empty, or its type is `application/json` or `application/…+json`, as Python's
    /// `email.message` reads it (the text before `;`, lower-cased, stripped, with
    /// exactly one `/`).
    pub fn is_json(&self) -> bool {
        let Some(ct) = self.header("content-type") else {
            return true;
        };
        if ct.is_empty() {
            return true;
        }
        let ctype = ct.split(';').next().unwrap_or("").to_ascii_lowercase();
        // str.strip()'s ASCII whitespace, including the separators \x1c-\x1f.
        let ctype = ctype.trim_matches(|c: char| {
            c.is_ascii_whitespace() || c == '\x0b' || ('\x1c'..='\x1f').contains(&c)
        });
        if ctype.matches('/').count() != 1 {
            return false;
        }
        let (main, sub) = ctype.split_once('/').unwrap_or_default();
        main == "application" && (sub == "json" || sub.ends_with("+json"))
    }

    /// `request.upgrade`: the protocol the client asks to switch to, lower-case, as
    /// Caddy's `reverse_proxy` reads it (an `Upgrade` header with `upgrade` among the
    /// `Connection` tokens: `websocket`, `h2c`), or HTTP/2's extended CONNECT
    /// (`:protocol`); empty for an ordinary request.
    pub fn upgrade(&self) -> Cow<'a, str> {
        let connect = self
            .method
            .eq_ignore_ascii_case("CONNECT")
            .then(|| self.header(":protocol"))
            .flatten();
        let upgrade = connect.or_else(|| {
            self.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
                .flat_map(|(_, v)| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                .then(|| self.header("upgrade"))
                .flatten()
        });
        match upgrade.map(str::trim) {
            None | Some("") => Cow::Borrowed(""),
            Some(u) if u.bytes().any(|b| b.is_ascii_uppercase()) => {
                Cow::Owned(u.to_ascii_lowercase())
            }
            Some(u) => Cow::Borrowed(u),
        }
    }

    /// The string fields of `request`, in the order of `STRING_FIELDS`.
    fn strings(&self) -> [Cow<'a, str>; 7] {
        [
            Cow::Borrowed(self.method),
            Cow::Borrowed(self.path),
            Cow::Borrowed(self.host),
            Cow::Borrowed(self.scheme),
            Cow::Borrowed(self.query),
            Cow::Borrowed(self.remote_ip),
            self.upgrade(),
        ]
    }

    /// `request.size`: the body size as a CEL int.
    fn size(&self) -> CelInt {
        CelInt::from(self.body_size.min(i64::MAX as u64) as i64)
    }

    /// The scalar fields of `request`, borrowing the request's strings: built without
    /// allocating, so an expression can read them by reference.
    pub fn scalars(&self) -> Scalars<'a> {
        Scalars {
            strings: self.strings().map(cel_string),
            size: self.size(),
        }
    }

    /// The `request` variable. Strings borrow from the request.
    pub fn to_value(&self) -> BoxVal<'a> {
        let mut headers: HashMap<Cow<'a, str>, Cow<'a, str>> =
            HashMap::with_capacity(self.headers.len());
        for (name, value) in self.headers {
            let name: Cow<'a, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(name.to_ascii_lowercase())
            } else {
                Cow::Borrowed(name)
            };
            match headers.get_mut(&name) {
                Some(existing) => {
                    let joined = format!("{existing}, {value}");
                    *existing = Cow::Owned(joined);
                }
                None => {
                    headers.insert(name, Cow::Borrowed(value));
                }
            }
        }
        let headers = values::map(
            headers
                .into_iter()
                .map(|(k, v)| (cow_key(k), values::string(v)))
                .collect(),
        );
        let mut fields: Vec<(&str, BoxVal<'a>)> = STRING_FIELDS
            .into_iter()
            .zip(self.strings().map(|s| values::string(cel_string(s))))
            .collect();
        fields.push(("size", Box::new(self.size())));
        fields.push(("headers", headers));
        values::map(fields)
    }
}

fn cel_string(s: Cow<'_, str>) -> CelString<'_> {
    match s {
        Cow::Borrowed(s) => CelString::from(s),
        Cow::Owned(s) => CelString::from(s),
    }
}

fn cow_key(k: Cow<'_, str>) -> CelMapKey<'_> {
    match k {
        Cow::Borrowed(s) => CelMapKey::from(s),
        Cow::Owned(s) => CelMapKey::from(s),
    }
}

/// `request`'s scalar fields as values (see `Request::scalars`).
pub struct Scalars<'a> {
    strings: [CelString<'a>; 7],
    size: CelInt,
}

/// The names of `request`'s string fields, in the order of `Request::strings`.
const STRING_FIELDS: [&str; 7] = [
    "method",
    "path",
    "host",
    "scheme",
    "query",
    "remote_ip",
    "upgrade",
];

impl<'a> Scalars<'a> {
    /// `request.upgrade`, computed once with the other fields.
    pub fn upgrade(&self) -> &str {
        self.strings[STRING_FIELDS.len() - 1].inner()
    }

    /// The field named `name`; `None` for `headers` and anything that is not a scalar.
    pub fn get(&self, name: &str) -> Option<&(dyn Val + 'a)> {
        if name == "size" {
            return Some(&self.size);
        }
        let i = STRING_FIELDS.iter().position(|f| *f == name)?;
        Some(&self.strings[i])
    }
}
