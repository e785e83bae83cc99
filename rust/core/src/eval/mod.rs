//! Expressions: compiling CEL and evaluating it, read top-down —
//! `expr` (compile a rule's expression, evaluate it, the environment), which builds on
//! `native` (the native evaluator of the common shapes, and the evaluation `Scope`),
//! both naming paths and presence tests through `names`, and `re2` (`matches()` with
//! RE2's meaning). Nothing here knows the engine.

pub(crate) mod expr;
pub(crate) mod names;
pub(crate) mod native;
pub(crate) mod re2;
