//! A native evaluator for the shapes policies are mostly made of: `&&`, `||`, `!`,
//! `?:`, `==`/`!=`, `in`, `<`…`>=`, `startsWith`/`endsWith`/`contains`/`matches` with
//! a literal argument, `type(x) == int`, over field paths and literals.
//!
//! It answers only when it is certain to give what cel gives: every operation calls the
//! same value methods cel's interpreter calls (`equals`, `as_container().contains`,
//! `as_comparer().compare`, the stdlib string functions), follows cel's order and its
//! `&&`/`||` rules, and anything it does not know (a comprehension, a function call, an
//! index) is handed to cel as a sub-expression. When any part fails (a missing
//! variable, a value of another type than it expects, an error from cel) it answers
//! `None` and the caller runs the whole expression through cel, which then says what
//! went wrong. What this saves is cel's per-evaluation overhead on the happy path: the
//! literal list rebuilt on each `in`, the overload error formatted ahead of every `!`
//! and every comparison, the dynamic function dispatch.
//!
//! `tests/expressions.rs` pins that whenever it answers, it agrees with cel.

use std::cell::OnceCell;
use std::cmp::Ordering;
use std::sync::Arc;

use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};
use cel::common::types::{CelBool, CelInt, CelString, CelUInt};
use cel::common::value::CowVal;
use cel::context::VariableResolver;
use cel::{Context, Env, Value};

use super::names::{presence_test, split_path};
use super::re2;

/// A compiled expression: its operations in one vector (children before parents, the
/// root last), and the names and strings they use in one string. Evaluating it walks
/// memory that sits together instead of a tree of separate allocations: under load a
/// decision finds little of the policy in the CPU caches, and each allocation the walk
/// reaches is another line, often another page, to fetch.
struct Program {
    ops: Vec<Op>,
    values: Vec<ValueOp>,
    text: Box<str>,
    lists: Vec<LiteralValue>,
    cel: Vec<IdedExpr>,
    regexes: Vec<Arc<regex::Regex>>,
}

/// A boolean expression.
pub(crate) struct Node {
    program: Program,
    root: u32,
}

/// A value expression (a limit's `cost`): a ternary over values, or a value.
pub(crate) struct ValueNode {
    program: Program,
    root: u32,
}

/// A range of `Program::text`.
#[derive(Clone, Copy)]
struct Text(u32, u32);

enum Op {
    Const(bool),
    And(u32, u32),
    Or(u32, u32),
    Not(u32),
    Cond(u32, u32, u32),
    Eq(Operand, Operand),
    Ne(Operand, Operand),
    /// `x in [literal, …]`: a range of `Program::lists`.
    InList(Operand, u32, u32),
    /// `x in container`
    In(Operand, Operand),
    Cmp(Operand, Operand, Cmp),
    Str(Operand, StrFn),
    /// `type(x) == int`
    IsInt(Operand),
    /// Any other value in a boolean position.
    Truth(Operand),
}

enum ValueOp {
    Cond(u32, u32, u32),
    Leaf(Operand),
}

#[derive(Clone, Copy)]
enum Cmp {
    Less,
    LessEq,
    Greater,
    GreaterEq,
}

#[derive(Clone, Copy)]
enum StrFn {
    StartsWith(Text),
    EndsWith(Text),
    Contains(Text),
    /// An index into `Program::regexes`.
    Matches(u32),
}

enum Operand {
    /// A variable or a flattened field path (`cert.subject.cn`, `has(body.model)`),
    /// split into its parts when the policy loads.
    Var(Var),
    Lit(LiteralValue),
    /// Anything else, evaluated by cel: an index into `Program::cel`.
    Cel(u32),
}

/// A flattened name, split as `Vars` takes it: `cert.subject.cn` is root `cert`, path
/// `subject.cn`; `has(body.model)` is root `body`, field `model`.
#[derive(Clone, Copy)]
struct Var {
    root: Text,
    path: Option<Text>,
    /// `Some` for a presence test of this field.
    field: Option<Text>,
}

/// Where the native evaluator reads variables from: the engine's activation, which is
/// also its cel context's resolver, so both get the same answers. Names are split once
/// when the policy loads (see `Var`) instead of on every read, and the reads skip the
/// cel context's scope walk.
pub(crate) trait Vars {
    /// The value of `root`, or at `path` below it.
    fn path<'b>(&'b self, root: &str, path: Option<&str>) -> Option<CowVal<'b, 'b>>;
    /// `has(root.path.field)`; `None` where cel must say what is wrong.
    fn has(&self, root: &str, path: Option<&str>, field: &str) -> Option<bool>;
}

/// No variables: what a context without a resolver answers.
impl Vars for () {
    fn path<'b>(&'b self, _: &str, _: Option<&str>) -> Option<CowVal<'b, 'b>> {
        None
    }
    fn has(&self, _: &str, _: Option<&str>, _: &str) -> Option<bool> {
        None
    }
}

/// What an evaluation reads: the variables, and cel's context for what the native
/// evaluator hands to cel. The context is built the first time cel needs it: a
/// decision the native evaluator answers whole never makes one (no clone of the
/// shared environment's `Arc`, whose count every core's decisions would otherwise
/// write, no registry and variable map to build and drop).
pub struct Scope<'c, 'v> {
    env: &'c Arc<Env>,
    resolver: Option<&'v dyn VariableResolver>,
    ctx: OnceCell<Context<'c, 'v>>,
    pub(crate) vars: &'c dyn Vars,
}

impl<'c, 'v> Scope<'c, 'v> {
    /// A scope reading `vars`, whose cel context (when one is needed) runs in `env`
    /// with `resolver`, if any, answering its variables.
    pub(crate) fn new(
        env: &'c Arc<Env>,
        resolver: Option<&'v dyn VariableResolver>,
        vars: &'c dyn Vars,
    ) -> Self {
        Scope {
            env,
            resolver,
            ctx: OnceCell::new(),
            vars,
        }
    }

    /// cel's context, built on first use.
    pub(crate) fn ctx(&self) -> &Context<'c, 'v> {
        self.ctx.get_or_init(|| {
            let mut ctx = Context::with_env(Arc::clone(self.env));
            if let Some(r) = self.resolver {
                ctx.set_variable_resolver(r);
            }
            ctx
        })
    }
}

/// A presence test's answer as the value cel gets for it.
pub(crate) fn bool_val(b: bool) -> CowVal<'static, 'static> {
    CowVal::Borrowed(if b { &CelBool::TRUE } else { &CelBool::FALSE })
}

#[derive(Default)]
struct Builder {
    ops: Vec<Op>,
    values: Vec<ValueOp>,
    text: String,
    lists: Vec<LiteralValue>,
    cel: Vec<IdedExpr>,
    regexes: Vec<Arc<regex::Regex>>,
}

fn index(len: usize) -> u32 {
    u32::try_from(len).expect("an expression of fewer than 2^32 parts")
}

impl Builder {
    fn finish(self) -> Program {
        Program {
            ops: self.ops,
            values: self.values,
            text: self.text.into_boxed_str(),
            lists: self.lists,
            cel: self.cel,
            regexes: self.regexes,
        }
    }

    fn text(&mut self, s: &str) -> Text {
        let at = index(self.text.len());
        self.text.push_str(s);
        Text(at, index(s.len()))
    }

    fn push(&mut self, op: Op) -> u32 {
        self.ops.push(op);
        index(self.ops.len() - 1)
    }

    fn var(&mut self, name: &str) -> Var {
        let (name, field) = match presence_test(name) {
            Some(Some((parent, field))) => (parent, Some(field)),
            // `has(x)` without a field: no variable has that name.
            Some(None) | None => (name, None),
        };
        let (root, path) = split_path(name);
        Var {
            root: self.text(root),
            path: path.map(|p| self.text(p)),
            field: field.map(|f| self.text(f)),
        }
    }

    fn operand(&mut self, e: &IdedExpr) -> Operand {
        match &e.expr {
            Expr::Ident(name) => Operand::Var(self.var(name)),
            Expr::Literal(l) => Operand::Lit(l.clone()),
            _ => {
                self.cel.push(e.clone());
                Operand::Cel(index(self.cel.len() - 1))
            }
        }
    }

    fn truth_of(&mut self, e: &IdedExpr) -> u32 {
        let op = Op::Truth(self.operand(e));
        self.push(op)
    }

    /// Builds the native form of `e` (an expression whose paths `expr::flatten` joined).
    fn bool(&mut self, e: &IdedExpr) -> u32 {
        let Expr::Call(call) = &e.expr else {
            return match &e.expr {
                Expr::Literal(LiteralValue::Boolean(b)) => self.push(Op::Const(*b.inner())),
                _ => self.truth_of(e),
            };
        };
        let args = &call.args;
        let name = call.func_name.as_str();
        if let Some(target) = &call.target {
            if let [arg] = args.as_slice() {
                if let Expr::Literal(LiteralValue::String(s)) = &arg.expr {
                    // A target that spells a function's namespace would make this a
                    // call to that function; only plain values qualify.
                    if matches!(&target.expr, Expr::Ident(_) | Expr::Literal(_)) {
                        let s = s.inner();
                        let f = match name {
                            "startsWith" => Some(StrFn::StartsWith(self.text(s))),
                            "endsWith" => Some(StrFn::EndsWith(self.text(s))),
                            "contains" => Some(StrFn::Contains(self.text(s))),
                            "matches" => re2::compiled(s).ok().map(|re| {
                                self.regexes.push(re);
                                StrFn::Matches(index(self.regexes.len() - 1))
                            }),
                            _ => None,
                        };
                        if let Some(f) = f {
                            let x = self.operand(target);
                            return self.push(Op::Str(x, f));
                        }
                    }
                }
            }
            return self.truth_of(e);
        }
        let op = match (name, args.len()) {
            (operators::LOGICAL_AND, 2) => {
                let (a, b) = (self.bool(&args[0]), self.bool(&args[1]));
                Op::And(a, b)
            }
            (operators::LOGICAL_OR, 2) => {
                let (a, b) = (self.bool(&args[0]), self.bool(&args[1]));
                Op::Or(a, b)
            }
            (operators::LOGICAL_NOT, 1) => Op::Not(self.bool(&args[0])),
            (operators::CONDITIONAL, 3) => {
                let (c, a, b) = (
                    self.bool(&args[0]),
                    self.bool(&args[1]),
                    self.bool(&args[2]),
                );
                Op::Cond(c, a, b)
            }
            (operators::EQUALS, 2) => match int_type_test(&args[0], &args[1]) {
                Some(x) => Op::IsInt(self.operand(x)),
                None => Op::Eq(self.operand(&args[0]), self.operand(&args[1])),
            },
            (operators::NOT_EQUALS, 2) => Op::Ne(self.operand(&args[0]), self.operand(&args[1])),
            (operators::IN, 2) => {
                let literals = match &args[1].expr {
                    Expr::List(list) if list.optional_indices.is_empty() => list
                        .elements
                        .iter()
                        .map(|x| match &x.expr {
                            Expr::Literal(l) => Some(l.clone()),
                            _ => None,
                        })
                        .collect::<Option<Vec<LiteralValue>>>(),
                    _ => None,
                };
                let x = self.operand(&args[0]);
                match literals {
                    Some(l) => {
                        let at = index(self.lists.len());
                        let n = index(l.len());
                        self.lists.extend(l);
                        Op::InList(x, at, n)
                    }
                    None => Op::In(x, self.operand(&args[1])),
                }
            }
            (operators::LESS, 2) => self.cmp(args, Cmp::Less),
            (operators::LESS_EQUALS, 2) => self.cmp(args, Cmp::LessEq),
            (operators::GREATER, 2) => self.cmp(args, Cmp::Greater),
            (operators::GREATER_EQUALS, 2) => self.cmp(args, Cmp::GreaterEq),
            _ => return self.truth_of(e),
        };
        self.push(op)
    }

    fn cmp(&mut self, args: &[IdedExpr], op: Cmp) -> Op {
        Op::Cmp(self.operand(&args[0]), self.operand(&args[1]), op)
    }

    fn value(&mut self, e: &IdedExpr) -> u32 {
        let v = match &e.expr {
            Expr::Call(call)
                if call.target.is_none()
                    && call.func_name == operators::CONDITIONAL
                    && call.args.len() == 3 =>
            {
                let c = self.bool(&call.args[0]);
                let (a, b) = (self.value(&call.args[1]), self.value(&call.args[2]));
                ValueOp::Cond(c, a, b)
            }
            _ => ValueOp::Leaf(self.operand(e)),
        };
        self.values.push(v);
        index(self.values.len() - 1)
    }
}

/// Builds the native form of `e` (an expression whose paths `expr::flatten` joined).
pub(crate) fn compile(e: &IdedExpr) -> Node {
    let mut b = Builder::default();
    let root = b.bool(e);
    Node {
        program: b.finish(),
        root,
    }
}

/// Builds the native form of a value expression.
pub(crate) fn compile_value(e: &IdedExpr) -> ValueNode {
    let mut b = Builder::default();
    let root = b.value(e);
    ValueNode {
        program: b.finish(),
        root,
    }
}

/// `Some(x)` for `type(x) == int`.
fn int_type_test<'a>(left: &'a IdedExpr, right: &IdedExpr) -> Option<&'a IdedExpr> {
    match (&left.expr, &right.expr) {
        (Expr::Call(call), Expr::Ident(t))
            if t == "int"
                && call.target.is_none()
                && call.func_name == "type"
                && call.args.len() == 1 =>
        {
            Some(&call.args[0])
        }
        _ => None,
    }
}

impl Program {
    fn text(&self, t: Text) -> &str {
        &self.text[t.0 as usize..(t.0 + t.1) as usize]
    }

    fn value<'e>(&'e self, op: &'e Operand, scope: &'e Scope<'_, '_>) -> Option<CowVal<'e, 'e>> {
        match op {
            Operand::Var(v) => {
                let (root, path) = (self.text(v.root), v.path.map(|p| self.text(p)));
                match v.field {
                    None => scope.vars.path(root, path),
                    Some(f) => scope.vars.has(root, path, self.text(f)).map(bool_val),
                }
            }
            Operand::Lit(l) => Some(l.to_val()),
            Operand::Cel(i) => Value::resolve_val(&self.cel[*i as usize], scope.ctx()).ok(),
        }
    }

    /// The truth of operation `i`, or `None` when cel must decide (see the module docs).
    fn truth(&self, i: u32, ctx: &Scope<'_, '_>) -> Option<bool> {
        match &self.ops[i as usize] {
            Op::Const(b) => Some(*b),
            // cel: a false left side decides `&&` whatever the right side is; otherwise
            // the right side must be a bool. A failing left side is cel's to report.
            Op::And(a, b) => match self.truth(*a, ctx)? {
                false => Some(false),
                true => self.truth(*b, ctx),
            },
            Op::Or(a, b) => match self.truth(*a, ctx)? {
                true => Some(true),
                false => self.truth(*b, ctx),
            },
            Op::Not(a) => self.truth(*a, ctx).map(|b| !b),
            Op::Cond(c, a, b) => {
                if self.truth(*c, ctx)? {
                    self.truth(*a, ctx)
                } else {
                    self.truth(*b, ctx)
                }
            }
            Op::Eq(a, b) => {
                let (a, b) = (self.value(a, ctx)?, self.value(b, ctx)?);
                Some(a.equals(b.as_ref()))
            }
            Op::Ne(a, b) => {
                let (a, b) = (self.value(a, ctx)?, self.value(b, ctx)?);
                Some(!a.equals(b.as_ref()))
            }
            Op::InList(x, at, n) => {
                let x = self.value(x, ctx)?;
                let list = &self.lists[*at as usize..(*at + *n) as usize];
                Some(list.iter().any(|l| l.to_val().equals(x.as_ref())))
            }
            Op::In(x, c) => {
                let (x, c) = (self.value(x, ctx)?, self.value(c, ctx)?);
                c.as_container()?.contains(x.as_ref()).ok()
            }
            Op::Cmp(a, b, op) => {
                let (a, b) = (self.value(a, ctx)?, self.value(b, ctx)?);
                let ord = a.as_comparer()?.compare(b.as_ref()).ok()?;
                Some(match op {
                    Cmp::Less => ord == Ordering::Less,
                    Cmp::LessEq => ord != Ordering::Greater,
                    Cmp::Greater => ord == Ordering::Greater,
                    Cmp::GreaterEq => ord != Ordering::Less,
                })
            }
            Op::Str(x, f) => {
                let x = self.value(x, ctx)?;
                let s = x.downcast_ref::<CelString>()?.inner();
                Some(match *f {
                    StrFn::StartsWith(p) => s.starts_with(self.text(p)),
                    StrFn::EndsWith(p) => s.ends_with(self.text(p)),
                    StrFn::Contains(p) => s.contains(self.text(p)),
                    StrFn::Matches(re) => self.regexes[re as usize].is_match(s),
                })
            }
            // Other types answer `false` in cel; they are rare enough to leave to it.
            Op::IsInt(x) => self.value(x, ctx)?.downcast_ref::<CelInt>().map(|_| true),
            Op::Truth(x) => self
                .value(x, ctx)?
                .downcast_ref::<CelBool>()
                .map(|b| *b.inner()),
        }
    }

    fn unsigned(&self, i: u32, ctx: &Scope<'_, '_>) -> Option<u64> {
        match &self.values[i as usize] {
            ValueOp::Cond(c, a, b) => {
                if self.truth(*c, ctx)? {
                    self.unsigned(*a, ctx)
                } else {
                    self.unsigned(*b, ctx)
                }
            }
            ValueOp::Leaf(op) => {
                let v = self.value(op, ctx)?;
                if let Some(i) = v.downcast_ref::<CelInt>() {
                    return u64::try_from(*i.inner()).ok();
                }
                v.downcast_ref::<CelUInt>().map(|u| *u.inner())
            }
        }
    }
}

/// The expression's truth, or `None` when cel must decide (see the module docs).
pub(crate) fn truth(n: &Node, ctx: &Scope<'_, '_>) -> Option<bool> {
    n.program.truth(n.root, ctx)
}

/// A non-negative integer value, or `None` when cel must decide.
pub(crate) fn unsigned(n: &ValueNode, ctx: &Scope<'_, '_>) -> Option<u64> {
    n.program.unsigned(n.root, ctx)
}
