//! `matches()` against RE2: `fixtures/re2_cases.json` records, for each pattern and
//! input, what Go's `regexp` (RE2 syntax, what cel-go runs) answers — `null` where it
//! refuses the pattern. go-module's `TestRE2CasesAreGoRegexp` re-checks every row
//! against Go, so the table cannot drift from RE2.

mod common;
use common::*;

#[derive(serde::Deserialize)]
struct Case {
    pattern: String,
    input: String,
    #[serde(rename = "match")]
    matched: Option<bool>,
}

/// Patterns RE2 reads one way and the `regex` crate another (or not at all): the
/// engine refuses them rather than answer differently.
const REFUSED_BY_DESIGN: [&str; 6] = [
    r"[a-z&&[^aeiou]]",
    r"\Q.\E",
    r"\<x",
    r"\b{start}x",
    r"[a[b]]",
    r"\e",
];

#[test]
fn matches_agrees_with_re2_or_refuses_the_pattern() {
    let cases: Vec<Case> =
        serde_json::from_slice(&fixture("re2_cases.json")).expect("the RE2 table");
    assert!(cases.len() > 500, "{} cases", cases.len());
    let e = engine(
        r#"
[settings]
require_identity = false
[[rule]]
name = "m"
effect = "allow"
when = 'request.headers["x-in"].matches(request.headers["x-p"])'
"#,
    );
    let mut compared = 0;
    for c in &cases {
        let d = Req::new("GET", "/")
            .header("x-in", &c.input)
            .header("x-p", &c.pattern)
            .decide(&e);
        let refused = !d.errors.is_empty();
        match c.matched {
            None => assert!(refused, "RE2 refuses {:?}, the engine did not", c.pattern),
            Some(_) if refused => assert!(
                REFUSED_BY_DESIGN.contains(&c.pattern.as_str()),
                "{:?} refused: {:?}",
                c.pattern,
                d.errors
            ),
            Some(m) => {
                compared += 1;
                assert_eq!(d.allowed, m, "{:?} on {:?}", c.pattern, c.input);
            }
        }
    }
    assert!(compared >= 700, "{compared} compared");
}
