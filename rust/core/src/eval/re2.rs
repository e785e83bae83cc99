//! `matches()` with RE2's meaning, as CEL defines it (cel-go runs Go's `regexp`).
//!
//! The `regex` crate and RE2 share most syntax but differ where it matters to a
//! policy: RE2's `\d \w \s \b` are ASCII (`\s` is `[\t\n\f\r ]`, without `\v`) where
//! the crate's are Unicode. A pattern is parsed, its Perl classes and word boundaries
//! are rewritten to their ASCII forms, and syntax RE2 lacks (the `x`, `u` and `R`
//! flags, class set operations, nested classes, `\u`, `\b{start}`, `\<`, repeats over
//! 1000) is refused, so a pattern either means what it means in cel-go or fails to
//! load.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use cel::ExecutionError;
use regex_syntax::ast::{
    self, AssertionKind, Ast, ClassPerl, ClassPerlKind, ClassSet, ClassSetItem, Flag, LiteralKind,
    RepetitionKind, RepetitionRange, Span,
};

const REGEX_CACHE_MAX: usize = 1024;

/// Patterns are compiled once and kept; literal patterns (the common case) are also
/// compiled when the expression compiles, so a bad one fails at policy load.
pub(crate) fn compiled(pattern: &str) -> Result<Arc<regex::Regex>, ExecutionError> {
    static CACHE: OnceLock<RwLock<HashMap<String, Arc<regex::Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(re) = cache.read().unwrap_or_else(|p| p.into_inner()).get(pattern) {
        return Ok(re.clone());
    }
    let bad = |e: String| {
        ExecutionError::function_error("matches", format!("bad pattern {pattern:?}: {e}"))
    };
    let re2 = translate(pattern).map_err(bad)?;
    let re = Arc::new(
        regex::RegexBuilder::new(&re2)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| bad(e.to_string()))?,
    );
    let mut w = cache.write().unwrap_or_else(|p| p.into_inner());
    if w.len() < REGEX_CACHE_MAX {
        w.insert(pattern.to_owned(), re.clone());
    }
    Ok(re)
}

/// RE2's largest repetition count.
const MAX_REPEAT: u32 = 1000;

/// The pattern in the `regex` crate's syntax with RE2's meaning, or why RE2 would
/// read it otherwise.
pub fn translate(pattern: &str) -> Result<String, String> {
    let parsed = ast::parse::Parser::new()
        .parse(pattern)
        .map_err(|e| e.kind().to_string())?;
    let mut edits = Vec::new();
    ast::visit(&parsed, Rewriter { edits: &mut edits })?;
    edits.sort_by_key(|(span, _)| span.start.offset);
    let mut out = String::with_capacity(pattern.len() + 16 * edits.len());
    let mut at = 0;
    for (span, text) in edits {
        out.push_str(&pattern[at..span.start.offset]);
        out.push_str(&text);
        at = span.end.offset;
    }
    out.push_str(&pattern[at..]);
    Ok(out)
}

struct Rewriter<'e> {
    edits: &'e mut Vec<(Span, String)>,
}

/// A Perl class's ASCII members, as they go inside brackets.
fn perl_members(kind: &ClassPerlKind) -> &'static str {
    match kind {
        ClassPerlKind::Digit => "0-9",
        ClassPerlKind::Space => r"\t\n\x0C\r ",
        ClassPerlKind::Word => "0-9A-Za-z_",
    }
}

fn perl_class(c: &ClassPerl, in_brackets: bool) -> String {
    let members = perl_members(&c.kind);
    match (c.negated, in_brackets) {
        (false, true) => members.to_owned(),
        (false, false) => format!("[{members}]"),
        // A nested class: the crate's syntax for a negated class inside brackets.
        (true, _) => format!("[^{members}]"),
    }
}

fn refuse(what: &str) -> Result<(), String> {
    Err(format!(
        "{what} is not RE2 syntax (CEL's matches() follows RE2)"
    ))
}

impl ast::Visitor for Rewriter<'_> {
    type Output = ();
    type Err = String;

    fn finish(self) -> Result<(), String> {
        Ok(())
    }

    fn visit_pre(&mut self, a: &Ast) -> Result<(), String> {
        match a {
            Ast::ClassPerl(c) => self.edits.push((c.span, perl_class(c, false))),
            Ast::Assertion(x) => match x.kind {
                AssertionKind::WordBoundary => self.edits.push((x.span, r"(?-u:\b)".into())),
                AssertionKind::NotWordBoundary => self.edits.push((x.span, r"(?-u:\B)".into())),
                AssertionKind::StartLine
                | AssertionKind::EndLine
                | AssertionKind::StartText
                | AssertionKind::EndText => {}
                _ => return refuse("this word-boundary assertion"),
            },
            Ast::Flags(f) => check_flags(&f.flags)?,
            Ast::Group(g) => {
                if let ast::GroupKind::NonCapturing(flags) = &g.kind {
                    check_flags(flags)?;
                }
            }
            Ast::Literal(l) => check_literal(l)?,
            Ast::Repetition(r) => {
                if let RepetitionKind::Range(range) = &r.op.kind {
                    let n = match *range {
                        RepetitionRange::Exactly(n) | RepetitionRange::AtLeast(n) => n,
                        RepetitionRange::Bounded(_, n) => n,
                    };
                    if n > MAX_REPEAT {
                        return Err(format!("a repeat count of {n} is over RE2's {MAX_REPEAT}"));
                    }
                }
            }
            Ast::ClassBracketed(b) => {
                if let ClassSet::BinaryOp(_) = &b.kind {
                    return refuse("a class set operation (&&, --, ~~)");
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn visit_class_set_item_pre(&mut self, item: &ClassSetItem) -> Result<(), String> {
        match item {
            ClassSetItem::Perl(c) => self.edits.push((c.span, perl_class(c, true))),
            ClassSetItem::Bracketed(_) => return refuse("a class nested in a class"),
            ClassSetItem::Literal(l) => check_literal(l)?,
            _ => {}
        }
        Ok(())
    }

    fn visit_class_set_binary_op_pre(&mut self, _: &ast::ClassSetBinaryOp) -> Result<(), String> {
        refuse("a class set operation (&&, --, ~~)")
    }
}

fn check_flags(flags: &ast::Flags) -> Result<(), String> {
    for item in &flags.items {
        if let ast::FlagsItemKind::Flag(f) = item.kind {
            match f {
                Flag::CaseInsensitive
                | Flag::MultiLine
                | Flag::DotMatchesNewLine
                | Flag::SwapGreed => {}
                Flag::Unicode => return refuse("the u flag"),
                Flag::CRLF => return refuse("the R flag"),
                Flag::IgnoreWhitespace => return refuse("the x flag"),
            }
        }
    }
    Ok(())
}

fn check_literal(l: &ast::Literal) -> Result<(), String> {
    match &l.kind {
        LiteralKind::HexFixed(ast::HexLiteralKind::UnicodeShort)
        | LiteralKind::HexFixed(ast::HexLiteralKind::UnicodeLong)
        | LiteralKind::HexBrace(ast::HexLiteralKind::UnicodeShort)
        | LiteralKind::HexBrace(ast::HexLiteralKind::UnicodeLong) => refuse("\\u and \\U"),
        LiteralKind::Octal => refuse("an octal escape"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perl_classes_and_boundaries_become_ascii() {
        assert_eq!(translate(r"^\d+$").unwrap(), "^[0-9]+$");
        assert_eq!(translate(r"[\w.-]").unwrap(), "[0-9A-Za-z_.-]");
        assert_eq!(translate(r"[^\S]").unwrap(), r"[^[^\t\n\x0C\r ]]");
        assert_eq!(translate(r"\bx\B").unwrap(), r"(?-u:\b)x(?-u:\B)");
        assert_eq!(translate(r"\\d").unwrap(), r"\\d", "an escaped backslash");
    }

    #[test]
    fn syntax_outside_re2_is_refused() {
        for p in [
            r"(?x) a",
            r"(?u:a)",
            r"[a-z&&[^aeiou]]",
            r"[a[b]]",
            r"\u0041",
            r"\b{start}x",
            r"\<x",
            r"a{1001}",
        ] {
            assert!(translate(p).is_err(), "{p}");
        }
        assert!(translate(r"a{1000}(?i)(?P<n>x)(?s:.)\pL[[:alpha:]]\x41\x{263a}").is_ok());
    }
}
