//! What one request's expressions read: the variables (`cert`, `claims`, `request`,
//! `body`, `llm`, `identity`), resolved when first read, answering cel and the native
//! evaluator alike.

use std::sync::OnceLock;

use cel::common::types::CelString;
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;

use crate::body::{self, LazyBody};
use crate::eval::names::{presence_test, split_path};
use crate::eval::native::{self, bool_val};
use crate::json::Malformed;
use crate::llm::Llm;
use crate::policy::MalformedBody;
use crate::request::{Request, Scalars};
use crate::values::{self, BoxVal, Indexed};

/// The variables of one request, resolved when an expression first reads them.
pub(super) struct Activation<'a> {
    pub(super) cert: &'a Indexed,
    pub(super) claims: &'a Indexed,
    pub(super) req: &'a Request<'a>,
    pub(super) scalars: Scalars<'a>,
    pub(super) request: OnceLock<BoxVal<'a>>,
    pub(super) body: OnceLock<Result<LazyBody<'a>, Malformed>>,
    /// What `body` is when the body was refused (only an identity expression that
    /// reads the body sees it: the refusal comes right after the identity).
    pub(super) empty_body: LazyBody<'static>,
    pub(super) llm: OnceLock<Indexed>,
    pub(super) identity: OnceLock<String>,
    pub(super) max_depth: usize,
    pub(super) malformed_body: MalformedBody,
}

impl<'a> Activation<'a> {
    /// The body as vLLM reads it: a JSON object (see `json`), empty when the request
    /// has no JSON body, or why it was refused.
    pub(super) fn read_body(&self) -> Result<&LazyBody<'a>, &Malformed> {
        self.body
            .get_or_init(|| body::read_request(self.req, self.max_depth, self.malformed_body))
            .as_ref()
    }

    /// A streamed request vLLM will answer without a usage chunk (see
    /// `llm::streams_without_usage`).
    pub(super) fn streams_without_usage(&self) -> bool {
        self.read_body()
            .is_ok_and(|b| crate::llm::streams_without_usage(self.req.path, b, self.req.body))
    }

    fn body(&self) -> &LazyBody<'a> {
        self.read_body().unwrap_or(&self.empty_body)
    }

    fn llm(&self) -> &Indexed {
        self.llm.get_or_init(|| {
            let view = Llm::read(self.req.path, self.body()).to_json();
            Indexed::from_json(&view, 2).expect("a flat object is within two levels")
        })
    }

    fn request(&self) -> &(dyn Val + 'a) {
        self.request.get_or_init(|| self.req.to_value()).as_ref()
    }

    /// The value at a variable or field path, borrowed where it can be.
    fn lookup<'b>(&'b self, root: &str, path: Option<&str>) -> Option<CowVal<'b, 'b>> {
        match (root, path) {
            ("cert", None) => Some(CowVal::Borrowed(self.cert.root())),
            ("cert", Some(p)) => self.cert.get(p).map(CowVal::Borrowed),
            ("claims", None) => Some(CowVal::Borrowed(self.claims.root())),
            ("claims", Some(p)) => self.claims.get(p).map(CowVal::Borrowed),
            ("body", None) => Some(CowVal::Borrowed(self.body().whole())),
            ("body", Some(p)) => {
                let (first, rest) = match p.split_once('.') {
                    Some((first, rest)) => (first, Some(rest)),
                    None => (p, None),
                };
                let top = self.body().get(first)?;
                match rest {
                    None => Some(CowVal::Borrowed(top)),
                    Some(rest) => walk(top, rest),
                }
            }
            ("request", None) => Some(CowVal::Borrowed(self.request())),
            ("request", Some(p)) => match self.scalars.get(p) {
                Some(v) => Some(CowVal::Borrowed(v)),
                None => walk(self.request(), p),
            },
            ("llm", None) => Some(CowVal::Borrowed(self.llm().root())),
            ("llm", Some(p)) => self.llm().get(p).map(CowVal::Borrowed),
            ("identity", None) => {
                Some(CowVal::Owned(values::string(self.identity.get()?.as_str())))
            }
            _ => None,
        }
    }

    /// `has(root.path.field)`: `None` when cel itself would fail (the parent is
    /// missing or not a map), so the program as written reports the error.
    fn has(&self, root: &str, path: Option<&str>, field: &str) -> Option<bool> {
        if root == "body" && path.is_none() {
            return Some(self.body().has(field));
        }
        let value = self.lookup(root, path)?;
        let key = CelString::from(field);
        let result = match &value {
            CowVal::Borrowed(v) => v.as_indexer()?.get(&key).map(|_| ()),
            CowVal::Owned(v) => v.as_indexer()?.get(&key).map(|_| ()),
        };
        match result {
            Ok(()) => Some(true),
            Err(cel::ExecutionError::NoSuchKey(_)) => Some(false),
            Err(_) => None,
        }
    }
}

/// Walks `path` below `root` through map lookups.
fn walk<'b>(root: &'b (dyn Val + 'b), path: &str) -> Option<CowVal<'b, 'b>> {
    let mut current = root;
    for segment in path.split('.') {
        let key = CelString::from(segment);
        match current.as_indexer()?.get(&key).ok()? {
            CowVal::Borrowed(v) => current = v,
            CowVal::Owned(_) => return None,
        }
    }
    Some(CowVal::Borrowed(current))
}

impl VariableResolver for Activation<'_> {
    /// Answers a variable, a whole field path (`cert.subject.cn`) or a presence test
    /// (`has(body.model)`; see `eval::names`) in one call. What it cannot answer
    /// exactly it leaves to cel (`None`), which then reports the missing key.
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        if let Some(test) = presence_test(variable) {
            let (parent, field) = test?;
            let (root, path) = split_path(parent);
            return self.has(root, path, field).map(bool_val);
        }
        let (root, path) = split_path(variable);
        self.lookup(root, path)
    }
}

/// The native evaluator's reads: the same lookups `resolve` makes, on names split
/// when the policy loaded.
impl native::Vars for Activation<'_> {
    fn path<'b>(&'b self, root: &str, path: Option<&str>) -> Option<CowVal<'b, 'b>> {
        self.lookup(root, path)
    }
    fn has(&self, root: &str, path: Option<&str>, field: &str) -> Option<bool> {
        Activation::has(self, root, path, field)
    }
}
