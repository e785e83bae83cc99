//! CEL expressions: one shared environment, compilation with errors that say where,
//! and evaluation against a request's variables.

use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedEntryExpr, IdedExpr, LiteralValue};
use cel::common::types::{CelBool, CelString};
use cel::{Env, ExecutionError, Program, Value};

use super::names;
use super::native::{self, Scope};
use super::re2;

/// The variables a rule may read (DESIGN.md, "What a rule sees").
pub const VARIABLES: [&str; 6] = ["cert", "claims", "request", "body", "llm", "identity"];

/// The environment every expression compiles and runs in: the standard library, with
/// `matches` served from a cache of compiled patterns instead of compiling per call.
pub(crate) fn env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        cel::add_overload!(env, fn matches: (CelString, CelString) -> Result<CelBool>, id = "matches")
            .expect("matches is not in the stdlib without the regex feature");
        cel::add_member_overload!(env, fn matches: (CelString, CelString) -> Result<CelBool>)
            .expect("matches is not in the stdlib without the regex feature");
        Arc::new(env)
    })
    .clone()
}

fn matches(this: &CelString<'_>, pattern: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    Ok(CelBool::from(
        re2::compiled(pattern.inner())?.is_match(this.inner()),
    ))
}

/// Why an expression could not give the value its use needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// cel failed (a missing key, a type mismatch, a function error), as cel says it.
    #[error("{0}")]
    Cel(String),
    #[error("expected a bool, got {0}")]
    NotBool(&'static str),
    #[error("expected a string, got {0}")]
    NotString(&'static str),
    #[error("expected a non-negative number, got {0}")]
    Negative(i64),
    #[error("expected a non-negative integer, got {0}")]
    NotUnsigned(&'static str),
}

impl From<ExecutionError> for EvalError {
    fn from(e: ExecutionError) -> Self {
        EvalError::Cel(e.to_string())
    }
}

/// A compiled expression and the variables it reads.
pub struct Expression {
    pub source: String,
    program: Program,
    /// The program with field paths on the request variables flattened (see `flatten`).
    fast: IdedExpr,
    /// The flattened program in native form, for the happy path (see `native`);
    /// `None` where the policy turned the native evaluator off.
    native: Option<(native::Node, native::ValueNode)>,
    reads: [bool; VARIABLES.len()],
    /// Names `request.upgrade` (or tests for it): the rule speaks of protocol upgrades.
    reads_upgrade: bool,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

/// Where an expression failed to compile, relative to the expression's own text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Expression {
    /// Compiles `source`, allowing only the variables in `allowed` (plus the ones that
    /// comprehension macros bind).
    pub fn compile(source: &str, allowed: &[&str]) -> Result<Expression, Vec<CompileError>> {
        if source.trim().is_empty() {
            return Err(vec![CompileError {
                line: 1,
                column: 1,
                message: "expression is empty".into(),
            }]);
        }
        let program = env().compile(source).map_err(|errs| {
            errs.errors
                .iter()
                .map(|e| CompileError {
                    line: e.pos.0.max(1) as usize,
                    column: e.pos.1.max(0) as usize + 1,
                    message: e.msg.clone(),
                })
                .collect::<Vec<_>>()
        })?;
        let mut found = Found::default();
        walk(program.expression(), &mut Vec::new(), &mut found);
        let position = |id: u64| {
            let at = program
                .source_info()
                .offset_for(id)
                .map(|(start, _)| start as usize)
                .unwrap_or(0);
            line_column(source, at)
        };
        let mut errors = Vec::new();
        let mut reported: Vec<&str> = Vec::new();
        for (name, id) in &found.free {
            if !allowed.contains(name) && !reported.contains(name) {
                reported.push(name);
                let (line, column) = position(*id);
                errors.push(CompileError {
                    line,
                    column,
                    message: format!(
                        "unknown variable '{name}' (this expression can read {})",
                        allowed.join(", ")
                    ),
                });
            }
        }
        for (pattern, id) in &found.patterns {
            if let Err(e) = re2::compiled(pattern) {
                let (line, column) = position(*id);
                errors.push(CompileError {
                    line,
                    column,
                    message: e.to_string(),
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut reads = [false; VARIABLES.len()];
        for (i, name) in VARIABLES.iter().enumerate() {
            reads[i] = found.free.iter().any(|(v, _)| v == name);
        }
        let mut fast = program.expression().clone();
        flatten(&mut fast, &mut Vec::new());
        let upgrade_test = names::presence("request", "upgrade");
        let reads_upgrade = any_ident(&fast, &|name| {
            name == "request.upgrade" || name == upgrade_test
        });
        Ok(Expression {
            reads_upgrade,
            source: source.to_owned(),
            program,
            native: Some((native::compile(&fast), native::compile_value(&fast))),
            fast,
            reads,
        })
    }

    /// Whether the expression names `request.upgrade`: only such a rule can allow a
    /// protocol upgrade (the tunnel escapes per-request decisions).
    pub fn reads_upgrade(&self) -> bool {
        self.reads_upgrade
    }

    pub fn reads(&self, variable: &str) -> bool {
        VARIABLES
            .iter()
            .position(|v| *v == variable)
            .is_some_and(|i| self.reads[i])
    }

    pub(crate) fn eval(&self, scope: &Scope<'_, '_>) -> Result<Value, EvalError> {
        match Value::resolve(&self.fast, scope.ctx()) {
            Ok(v) => Ok(v),
            // The flattened form reports a missing field as an undeclared name; the
            // program as written says which key is missing. Errors are the slow path.
            Err(_) => Ok(self.program.execute(scope.ctx())?),
        }
    }

    /// The program exactly as written, without the flattened paths: what `eval` must
    /// always agree with (the tests compare the two).
    pub(crate) fn eval_as_written(&self, scope: &Scope<'_, '_>) -> Result<Value, EvalError> {
        Ok(self.program.execute(scope.ctx())?)
    }

    /// What the native evaluator answers, `None` where it leaves the answer to cel
    /// (exposed so tests can compare it with cel).
    pub(crate) fn eval_native_bool(&self, scope: &Scope<'_, '_>) -> Option<bool> {
        native::truth(&self.native.as_ref()?.0, scope)
    }

    pub(crate) fn eval_native_u64(&self, scope: &Scope<'_, '_>) -> Option<u64> {
        native::unsigned(&self.native.as_ref()?.1, scope)
    }

    /// Evaluates with cel alone from now on (`settings.native_eval = false`).
    pub(crate) fn without_native(mut self) -> Expression {
        self.native = None;
        self
    }

    pub(crate) fn eval_bool(&self, scope: &Scope<'_, '_>) -> Result<bool, EvalError> {
        if let Some(b) = self.eval_native_bool(scope) {
            return Ok(b);
        }
        match self.eval(scope)? {
            Value::Bool(b) => Ok(b),
            other => Err(EvalError::NotBool(type_name(&other))),
        }
    }

    pub(crate) fn eval_string(&self, scope: &Scope<'_, '_>) -> Result<String, EvalError> {
        match self.eval(scope)? {
            Value::String(s) => Ok(s.to_string()),
            Value::Int(i) => Ok(i.to_string()),
            Value::UInt(u) => Ok(u.to_string()),
            other => Err(EvalError::NotString(type_name(&other))),
        }
    }

    pub(crate) fn eval_u64(&self, scope: &Scope<'_, '_>) -> Result<u64, EvalError> {
        if let Some(n) = self.eval_native_u64(scope) {
            return Ok(n);
        }
        match self.eval(scope)? {
            Value::Int(i) if i >= 0 => Ok(i as u64),
            Value::UInt(u) => Ok(u),
            Value::Float(f) if f >= 0.0 && f.is_finite() && f.fract() == 0.0 => Ok(f as u64),
            Value::Int(i) => Err(EvalError::Negative(i)),
            other => Err(EvalError::NotUnsigned(type_name(&other))),
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::List(_) => "list",
        Value::Map(_) => "map",
        Value::Int(_) => "int",
        Value::UInt(_) => "uint",
        Value::Float(_) => "double",
        Value::String(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::Bool(_) => "bool",
        Value::Null => "null",
        _ => "value",
    }
}

/// Rewrites each field path rooted at a request variable (`cert.subject.cn`) into one
/// identifier naming the whole path. cel resolves a dotted select chain by joining its
/// segments into a fresh string and trying every prefix as a variable and as a type;
/// a single identifier goes straight to the resolver, which looks the path up itself.
/// `has(x.f)` becomes the identifier `has(x.f)`, which the resolver answers without
/// converting `x`. Variables bound by comprehension macros are left alone.
fn flatten(e: &mut IdedExpr, bound: &mut Vec<String>) {
    if let Some(path) = dotted_path(e, bound) {
        e.expr = Expr::Ident(path);
        return;
    }
    if let Expr::Select(sel) = &e.expr {
        if sel.test {
            let parent = match &sel.operand.expr {
                Expr::Ident(root) if is_root(root, bound) => Some(root.clone()),
                _ => dotted_path(&sel.operand, bound),
            };
            if let Some(parent) = parent {
                e.expr = Expr::Ident(names::presence(&parent, &sel.field));
                return;
            }
        }
    }
    match &mut e.expr {
        Expr::Select(sel) => flatten(&mut sel.operand, bound),
        Expr::Call(call) => {
            if let Some(target) = &mut call.target {
                flatten(target, bound);
            }
            for arg in &mut call.args {
                flatten(arg, bound);
            }
        }
        Expr::Comprehension(comp) => {
            flatten(&mut comp.iter_range, bound);
            let depth = bound.len();
            bound.push(comp.iter_var.clone());
            if let Some(v2) = &comp.iter_var2 {
                bound.push(v2.clone());
            }
            bound.push(comp.accu_var.clone());
            flatten(&mut comp.accu_init, bound);
            flatten(&mut comp.loop_cond, bound);
            flatten(&mut comp.loop_step, bound);
            flatten(&mut comp.result, bound);
            bound.truncate(depth);
        }
        Expr::List(list) => list.elements.iter_mut().for_each(|x| flatten(x, bound)),
        Expr::Map(map) => map.entries.iter_mut().for_each(|x| flatten_entry(x, bound)),
        Expr::Struct(st) => st.entries.iter_mut().for_each(|x| flatten_entry(x, bound)),
        _ => {}
    }
}

/// Whether any identifier of the (flattened) expression satisfies `pred`.
fn any_ident(e: &IdedExpr, pred: &dyn Fn(&str) -> bool) -> bool {
    let entry = |x: &IdedEntryExpr| match &x.expr {
        EntryExpr::StructField(f) => any_ident(&f.value, pred),
        EntryExpr::MapEntry(me) => any_ident(&me.key, pred) || any_ident(&me.value, pred),
    };
    match &e.expr {
        Expr::Ident(name) => pred(name),
        Expr::Select(sel) => any_ident(&sel.operand, pred),
        Expr::Call(call) => {
            call.target.as_deref().is_some_and(|t| any_ident(t, pred))
                || call.args.iter().any(|a| any_ident(a, pred))
        }
        Expr::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .into_iter()
        .any(|x| any_ident(x, pred)),
        Expr::List(list) => list.elements.iter().any(|x| any_ident(x, pred)),
        Expr::Map(map) => map.entries.iter().any(entry),
        Expr::Struct(st) => st.entries.iter().any(entry),
        _ => false,
    }
}

fn flatten_entry(entry: &mut IdedEntryExpr, bound: &mut Vec<String>) {
    match &mut entry.expr {
        EntryExpr::StructField(f) => flatten(&mut f.value, bound),
        EntryExpr::MapEntry(me) => {
            flatten(&mut me.key, bound);
            flatten(&mut me.value, bound);
        }
    }
}

/// A request variable that no comprehension has rebound.
fn is_root(name: &str, bound: &[String]) -> bool {
    ["cert", "claims", "request", "body", "llm"].contains(&name) && !bound.iter().any(|b| b == name)
}

/// `Some("cert.subject.cn")` for a plain select chain rooted at a request variable.
fn dotted_path(e: &IdedExpr, bound: &[String]) -> Option<String> {
    let mut fields = Vec::new();
    let mut cur = e;
    loop {
        match &cur.expr {
            Expr::Select(sel) if !sel.test => {
                fields.push(sel.field.as_str());
                cur = &sel.operand;
            }
            Expr::Ident(root) if !fields.is_empty() && is_root(root, bound) => {
                let mut path = root.clone();
                for f in fields.iter().rev() {
                    path.push('.');
                    path.push_str(f);
                }
                return Some(path);
            }
            _ => return None,
        }
    }
}

/// Identifiers CEL resolves to type values (`type(x) == int`), not variables.
const TYPE_NAMES: [&str; 10] = [
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

/// What an expression reads: its free variables (comprehension macros bind their own,
/// which are not free) and the literal patterns given to `matches`.
#[derive(Default)]
struct Found<'a> {
    free: Vec<(&'a str, u64)>,
    patterns: Vec<(&'a str, u64)>,
}

fn walk<'a>(e: &'a IdedExpr, bound: &mut Vec<&'a str>, found: &mut Found<'a>) {
    match &e.expr {
        Expr::Ident(name)
            if !name.starts_with('@')
                && !bound.contains(&name.as_str())
                && !TYPE_NAMES.contains(&name.as_str()) =>
        {
            found.free.push((name, e.id));
        }
        Expr::Select(sel) => walk(&sel.operand, bound, found),
        Expr::Call(call) => {
            if call.func_name == "matches" {
                if let Some(IdedExpr {
                    id,
                    expr: Expr::Literal(LiteralValue::String(p)),
                }) = call.args.last()
                {
                    found.patterns.push((p.inner(), *id));
                }
            }
            if let Some(target) = &call.target {
                walk(target, bound, found);
            }
            for arg in &call.args {
                walk(arg, bound, found);
            }
        }
        Expr::Comprehension(comp) => {
            walk(&comp.iter_range, bound, found);
            let depth = bound.len();
            bound.push(&comp.iter_var);
            if let Some(v2) = &comp.iter_var2 {
                bound.push(v2);
            }
            bound.push(&comp.accu_var);
            for part in [
                &comp.accu_init,
                &comp.loop_cond,
                &comp.loop_step,
                &comp.result,
            ] {
                walk(part, bound, found);
            }
            bound.truncate(depth);
        }
        Expr::List(list) => {
            for item in &list.elements {
                walk(item, bound, found);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                walk_entry(entry, bound, found);
            }
        }
        Expr::Struct(st) => {
            for entry in &st.entries {
                walk_entry(entry, bound, found);
            }
        }
        _ => {}
    }
}

fn walk_entry<'a>(entry: &'a IdedEntryExpr, bound: &mut Vec<&'a str>, found: &mut Found<'a>) {
    match &entry.expr {
        EntryExpr::StructField(field) => walk(&field.value, bound, found),
        EntryExpr::MapEntry(me) => {
            walk(&me.key, bound, found);
            walk(&me.value, bound, found);
        }
    }
}

/// 1-based line and column of character offset `at` in `source`.
fn line_column(source: &str, at: usize) -> (usize, usize) {
    let mut line = 1;
    let mut column = 1;
    for (i, c) in source.chars().enumerate() {
        if i == at {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_variable_is_a_compile_error_with_position() {
        let err = Expression::compile("request.path == '/' && reqest.host == 'x'", &VARIABLES)
            .unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(
            err[0].message.contains("unknown variable 'reqest'"),
            "{err:?}"
        );
        assert_eq!((err[0].line, err[0].column), (1, 24));
    }

    #[test]
    fn syntax_error_has_position() {
        let err = Expression::compile("request.path ==", &VARIABLES).unwrap_err();
        assert!(!err.is_empty());
        assert_eq!(err[0].line, 1);
        assert!(err[0].column > 1, "{err:?}");
    }

    #[test]
    fn macro_bindings_are_not_unknown_variables() {
        let e = Expression::compile("claims.groups.exists(g, g == 'sre')", &VARIABLES).unwrap();
        assert!(e.reads("claims"));
        assert!(!e.reads("body"));
    }

    #[test]
    fn bad_literal_regex_fails_at_compile() {
        let err = Expression::compile("request.path.matches('(unclosed')", &VARIABLES).unwrap_err();
        assert!(err[0].message.contains("bad pattern"), "{err:?}");
    }

    #[test]
    fn matches_works_in_both_forms() {
        let e = Expression::compile(
            "'/v1/chat'.matches('^/v1/') && matches('abc', 'b')",
            &VARIABLES,
        )
        .unwrap();
        assert_eq!(e.eval_bool(&Scope::new(&env(), None, &())), Ok(true));
    }
}
