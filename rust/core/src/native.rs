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

use std::cmp::Ordering;
use std::sync::Arc;

use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};
use cel::common::types::{CelBool, CelInt, CelString, CelUInt};
use cel::common::value::CowVal;
use cel::{Context, Value};

/// A boolean expression.
pub(crate) enum Node {
    Const(bool),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Eq(Operand, Operand),
    Ne(Operand, Operand),
    /// `x in [literal, …]`
    InList(Operand, Vec<LiteralValue>),
    /// `x in container`
    In(Operand, Operand),
    Cmp(Operand, Operand, Cmp),
    Str(Operand, StrFn),
    /// `type(x) == int`
    IsInt(Operand),
    /// Any other value in a boolean position.
    Truth(Operand),
}

#[derive(Clone, Copy)]
pub(crate) enum Cmp {
    Less,
    LessEq,
    Greater,
    GreaterEq,
}

pub(crate) enum StrFn {
    StartsWith(String),
    EndsWith(String),
    Contains(String),
    Matches(Arc<regex::Regex>),
}

pub(crate) enum Operand {
    /// A variable or a flattened field path (`cert.subject.cn`, `has(body.model)`).
    Var(String),
    Lit(LiteralValue),
    /// Anything else, evaluated by cel.
    Cel(IdedExpr),
}

/// A value expression (a limit's `cost`): a ternary over values, or a value.
pub(crate) enum ValueNode {
    Cond(Node, Box<ValueNode>, Box<ValueNode>),
    Leaf(Operand),
}

/// Builds the native form of `e` (an expression whose paths `expr::flatten` joined).
pub(crate) fn compile(e: &IdedExpr) -> Node {
    let Expr::Call(call) = &e.expr else {
        return match &e.expr {
            Expr::Literal(LiteralValue::Boolean(b)) => Node::Const(*b.inner()),
            _ => Node::Truth(operand(e)),
        };
    };
    let args = &call.args;
    let name = call.func_name.as_str();
    if let Some(target) = &call.target {
        if let [arg] = args.as_slice() {
            if let Expr::Literal(LiteralValue::String(s)) = &arg.expr {
                let s = s.inner();
                let f = match name {
                    "startsWith" => Some(StrFn::StartsWith(s.to_owned())),
                    "endsWith" => Some(StrFn::EndsWith(s.to_owned())),
                    "contains" => Some(StrFn::Contains(s.to_owned())),
                    "matches" => crate::expr::compiled(s).ok().map(StrFn::Matches),
                    _ => None,
                };
                // A target that spells a function's namespace would make this a call
                // to that function; only plain values qualify.
                if let (Some(f), Expr::Ident(_) | Expr::Literal(_)) = (f, &target.expr) {
                    return Node::Str(operand(target), f);
                }
            }
        }
        return Node::Truth(operand(e));
    }
    let node = |i: usize| Box::new(compile(&args[i]));
    match (name, args.len()) {
        (operators::LOGICAL_AND, 2) => Node::And(node(0), node(1)),
        (operators::LOGICAL_OR, 2) => Node::Or(node(0), node(1)),
        (operators::LOGICAL_NOT, 1) => Node::Not(node(0)),
        (operators::CONDITIONAL, 3) => Node::Cond(node(0), node(1), node(2)),
        (operators::EQUALS, 2) => match int_type_test(&args[0], &args[1]) {
            Some(x) => Node::IsInt(operand(x)),
            None => Node::Eq(operand(&args[0]), operand(&args[1])),
        },
        (operators::NOT_EQUALS, 2) => Node::Ne(operand(&args[0]), operand(&args[1])),
        (operators::IN, 2) => match &args[1].expr {
            Expr::List(list) if list.optional_indices.is_empty() => {
                let literals: Option<Vec<LiteralValue>> = list
                    .elements
                    .iter()
                    .map(|x| match &x.expr {
                        Expr::Literal(l) => Some(l.clone()),
                        _ => None,
                    })
                    .collect();
                match literals {
                    Some(l) => Node::InList(operand(&args[0]), l),
                    None => Node::In(operand(&args[0]), operand(&args[1])),
                }
            }
            _ => Node::In(operand(&args[0]), operand(&args[1])),
        },
        (operators::LESS, 2) => Node::Cmp(operand(&args[0]), operand(&args[1]), Cmp::Less),
        (operators::LESS_EQUALS, 2) => Node::Cmp(operand(&args[0]), operand(&args[1]), Cmp::LessEq),
        (operators::GREATER, 2) => Node::Cmp(operand(&args[0]), operand(&args[1]), Cmp::Greater),
        (operators::GREATER_EQUALS, 2) => {
            Node::Cmp(operand(&args[0]), operand(&args[1]), Cmp::GreaterEq)
        }
        _ => Node::Truth(operand(e)),
    }
}

/// Builds the native form of a value expression.
pub(crate) fn compile_value(e: &IdedExpr) -> ValueNode {
    match &e.expr {
        Expr::Call(call)
            if call.target.is_none()
                && call.func_name == operators::CONDITIONAL
                && call.args.len() == 3 =>
        {
            ValueNode::Cond(
                compile(&call.args[0]),
                Box::new(compile_value(&call.args[1])),
                Box::new(compile_value(&call.args[2])),
            )
        }
        _ => ValueNode::Leaf(operand(e)),
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

fn operand(e: &IdedExpr) -> Operand {
    match &e.expr {
        Expr::Ident(name) => Operand::Var(name.clone()),
        Expr::Literal(l) => Operand::Lit(l.clone()),
        _ => Operand::Cel(e.clone()),
    }
}

fn value<'e, 'v>(op: &'e Operand, ctx: &'e Context<'_, 'v>) -> Option<CowVal<'e, 'v>> {
    match op {
        Operand::Var(name) => ctx.get_variable(name),
        Operand::Lit(l) => Some(l.to_val()),
        Operand::Cel(e) => Value::resolve_val(e, ctx).ok(),
    }
}

/// The expression's truth, or `None` when cel must decide (see the module docs).
pub(crate) fn truth(n: &Node, ctx: &Context<'_, '_>) -> Option<bool> {
    match n {
        Node::Const(b) => Some(*b),
        // cel: a false left side decides `&&` whatever the right side is; otherwise
        // the right side must be a bool. A failing left side is cel's to report.
        Node::And(a, b) => match truth(a, ctx)? {
            false => Some(false),
            true => truth(b, ctx),
        },
        Node::Or(a, b) => match truth(a, ctx)? {
            true => Some(true),
            false => truth(b, ctx),
        },
        Node::Not(a) => truth(a, ctx).map(|b| !b),
        Node::Cond(c, a, b) => {
            if truth(c, ctx)? {
                truth(a, ctx)
            } else {
                truth(b, ctx)
            }
        }
        Node::Eq(a, b) => {
            let (a, b) = (value(a, ctx)?, value(b, ctx)?);
            Some(a.equals(b.as_ref()))
        }
        Node::Ne(a, b) => {
            let (a, b) = (value(a, ctx)?, value(b, ctx)?);
            Some(!a.equals(b.as_ref()))
        }
        Node::InList(x, list) => {
            let x = value(x, ctx)?;
            Some(list.iter().any(|l| l.to_val().equals(x.as_ref())))
        }
        Node::In(x, c) => {
            let (x, c) = (value(x, ctx)?, value(c, ctx)?);
            c.as_container()?.contains(x.as_ref()).ok()
        }
        Node::Cmp(a, b, op) => {
            let (a, b) = (value(a, ctx)?, value(b, ctx)?);
            let ord = a.as_comparer()?.compare(b.as_ref()).ok()?;
            Some(match op {
                Cmp::Less => ord == Ordering::Less,
                Cmp::LessEq => ord != Ordering::Greater,
                Cmp::Greater => ord == Ordering::Greater,
                Cmp::GreaterEq => ord != Ordering::Less,
            })
        }
        Node::Str(x, f) => {
            let x = value(x, ctx)?;
            let s = x.downcast_ref::<CelString>()?.inner();
            Some(match f {
                StrFn::StartsWith(p) => s.starts_with(p.as_str()),
                StrFn::EndsWith(p) => s.ends_with(p.as_str()),
                StrFn::Contains(p) => s.contains(p.as_str()),
                StrFn::Matches(re) => re.is_match(s),
            })
        }
        // Other types answer `false` in cel; they are rare enough to leave to it.
        Node::IsInt(x) => value(x, ctx)?.downcast_ref::<CelInt>().map(|_| true),
        Node::Truth(x) => value(x, ctx)?.downcast_ref::<CelBool>().map(|b| *b.inner()),
    }
}

/// A non-negative integer value, or `None` when cel must decide.
pub(crate) fn unsigned(n: &ValueNode, ctx: &Context<'_, '_>) -> Option<u64> {
    match n {
        ValueNode::Cond(c, a, b) => {
            if truth(c, ctx)? {
                unsigned(a, ctx)
            } else {
                unsigned(b, ctx)
            }
        }
        ValueNode::Leaf(op) => {
            let v = value(op, ctx)?;
            if let Some(i) = v.downcast_ref::<CelInt>() {
                return u64::try_from(*i.inner()).ok();
            }
            v.downcast_ref::<CelUInt>().map(|u| *u.inner())
        }
    }
}
