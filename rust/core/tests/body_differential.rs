//! Presence tests and field reads of `body` agree between the native path (the
//! flattened names the activation answers from the lazily converted fields) and cel
//! running the program as written (over the whole body as one map), over the corpus
//! the differential test against Python uses (`e2e/json_corpus.py`, seed 1), so a
//! field a presence test sees is never missing from what a rule reads.

mod common;
use common::*;

use base64::Engine as _;
use zt_policy_core::read_body;
use zt_policy_core::MalformedBody;
use zt_policy_core::{GivenIdentity, Request, Value};

const RESERVED: [&str; 21] = [
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

fn identifier(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !RESERVED.contains(&k)
}

fn corpus() -> Vec<serde_json::Value> {
    let out = std::process::Command::new("python3")
        .args(["e2e/json_corpus.py", "--seed", "1", "--count", "1500"])
        .current_dir(repo_root())
        .output()
        .expect("python3 runs the corpus generator");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn native_and_as_written_reads_of_body_agree_over_the_corpus() {
    let (mut bodies, mut compared, mut present, mut native) = (0, 0, 0, 0);
    for item in corpus() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(item["body"].as_str().unwrap())
            .unwrap();
        let headers = [("content-type", "application/json")];
        let req = Request {
            method: "POST",
            path: "/v1/chat/completions",
            headers: &headers,
            body: &bytes,
            body_size: bytes.len() as u64,
            ..Default::default()
        };
        let Ok(b) = read_body(&req, 32, MalformedBody::Refuse) else {
            continue;
        };
        bodies += 1;
        // For each top-level key a rule can name, and one it cannot find: a presence
        // test, a read, and a read one level down.
        let mut exprs = vec!["has(body.absent_field)".to_owned(), "size(body)".to_owned()];
        for k in b.keys().filter(|k| identifier(k)) {
            exprs.push(format!("has(body.{k})"));
            exprs.push(format!("body.{k}"));
            exprs.push(format!("has(body.{k}.content)"));
            exprs.push(format!("body.{k}.role"));
        }
        let mut policy = String::from("[settings]\nrequire_identity = false\n");
        for (i, e) in exprs.iter().enumerate() {
            policy.push_str(&format!(
                "[[rule]]\nname = \"r{i}\"\neffect = \"allow\"\nwhen = '{e}'\n"
            ));
        }
        let e = engine(&policy);
        for (r, expr) in e
            .compare_evaluations(&req, &GivenIdentity::default())
            .iter()
            .zip(&exprs)
        {
            let what = format!("{expr} over {}", String::from_utf8_lossy(&bytes));
            assert_eq!(r.flattened, r.as_written, "{what}");
            if let Some(n) = r.native_bool {
                assert_eq!(r.as_written, Ok(Value::Bool(n)), "native: {what}");
                native += 1;
                present += usize::from(n && expr.starts_with("has("));
            }
            compared += 1;
        }
    }
    assert!(
        bodies > 400 && compared > 3000,
        "{bodies} bodies, {compared} reads"
    );
    assert!(
        native > 1000 && present > 500,
        "{native} native answers, {present} present"
    );
}
