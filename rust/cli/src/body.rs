//! `zt-policy body`: how the engine reads a request body — the fields rules see, the
//! `llm` view, or why the body is refused (the 400 `malformed_body` a client gets).
//!
//! `--jsonl` reads many bodies (one JSON object a line: `body` in base64, optional
//! `content_type` and `path`) and writes one answer a line with every value typed
//! exactly (`["i","5"]`, `["d","<f64 bits>"]`, …): the differential test against
//! Python's `json.loads` reads that.

use std::io::{BufRead, Write};

use base64::Engine as _;
use serde_json::{json, Value as Json};
use zt_policy_core::body;
use zt_policy_core::llm::Llm;
use zt_policy_core::policy::MalformedBody;
use zt_policy_core::Request;

use crate::Args;

/// The engine's default nesting limit (`settings.max_json_depth`).
const MAX_DEPTH: usize = 32;

pub fn run(args: &[String]) -> Result<std::process::ExitCode, String> {
    let args = Args::parse(args, &["--content-type", "--path"], &["--jsonl"])?;
    let [file] = args.positional.as_slice() else {
        return Err("body needs one FILE (or - for standard input)".into());
    };
    let text = |flag: &str| args.value(flag).map(|p| p.display().to_string());
    let input: Box<dyn BufRead> = if file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(file).map_err(|e| format!("{file}: {e}"))?;
        Box::new(std::io::BufReader::new(f))
    };
    if args.switch("--jsonl") {
        return batch(input);
    }
    let mut bytes = Vec::new();
    let mut input = input;
    input
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{file}: {e}"))?;
    let path = text("--path").unwrap_or_else(|| "/v1/chat/completions".into());
    let answer = read(&bytes, text("--content-type").as_deref(), &path, false);
    println!(
        "{}",
        serde_json::to_string_pretty(&answer).map_err(|e| e.to_string())?
    );
    Ok(if answer["refused"].is_null() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

fn batch(input: Box<dyn BufRead>) -> Result<std::process::ExitCode, String> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        let item: Json = serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(item["body"].as_str().unwrap_or(""))
            .map_err(|e| format!("line {}: body: {e}", n + 1))?;
        let path = item["path"].as_str().unwrap_or("/v1/chat/completions");
        let answer = read(&bytes, item["content_type"].as_str(), path, true);
        writeln!(out, "{answer}").map_err(|e| e.to_string())?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// One body's reading. `typed`: values as exact tagged JSON instead of plain JSON.
fn read(bytes: &[u8], content_type: Option<&str>, path: &str, typed: bool) -> Json {
    let headers: Vec<(&str, &str)> = content_type
        .map(|ct| ("content-type", ct))
        .into_iter()
        .collect();
    let req = Request {
        method: "POST",
        path,
        headers: &headers,
        body: bytes,
        body_size: bytes.len() as u64,
        ..Default::default()
    };
    let body = match body::read_request(&req, MAX_DEPTH, MalformedBody::Refuse) {
        Ok(b) => b,
        Err(e) => return json!({"json": req.is_json(), "refused": e.to_string()}),
    };
    let show = |v: &dyn cel::common::value::Val| -> Json {
        match cel::Value::try_from(v) {
            Ok(v) if typed => tagged(&v),
            Ok(v) => plain(&v),
            Err(e) => json!({"unconvertible": format!("{e:?}")}),
        }
    };
    let fields: serde_json::Map<String, Json> = body
        .keys()
        .map(|k| (k.to_owned(), show(body.get(k).expect("a listed key"))))
        .collect();
    let mut answer = json!({
        "json": req.is_json(),
        "refused": null,
        "fields": fields,
        "llm": Llm::read(path, &body).to_json(),
    });
    if typed {
        // The whole body as one map: what a rule that reads `body` itself gets.
        answer["whole"] = show(body.whole());
    }
    answer
}

/// A CEL value as exact tagged JSON: `["i", "-5"]`, `["u", "…"]`, `["d", "<bits>"]`,
/// `["s", "…"]`, `["b", true]`, `["n"]`, `["l", […]]`, `["m", [[key, value], …]]`
/// with keys sorted.
fn tagged(v: &cel::Value) -> Json {
    use cel::Value as V;
    match v {
        V::Int(i) => json!(["i", i.to_string()]),
        V::UInt(u) => json!(["u", u.to_string()]),
        V::Float(f) => json!(["d", f.to_bits().to_string()]),
        V::String(s) => json!(["s", s.as_str()]),
        V::Bool(b) => json!(["b", b]),
        V::Null => json!(["n"]),
        V::List(l) => json!(["l", l.iter().map(tagged).collect::<Vec<_>>()]),
        V::Map(m) => {
            let mut entries: Vec<(String, Json)> =
                m.map.iter().map(|(k, v)| (key(k), tagged(v))).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            json!(["m", entries])
        }
        other => json!(["?", format!("{other:?}")]),
    }
}

fn key(k: &cel::objects::Key) -> String {
    match k {
        cel::objects::Key::String(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

/// A CEL value as plain JSON, for people.
fn plain(v: &cel::Value) -> Json {
    use cel::Value as V;
    match v {
        V::Int(i) => json!(i),
        V::UInt(u) => json!(u),
        V::Float(f) => json!(f),
        V::String(s) => json!(s.as_str()),
        V::Bool(b) => json!(b),
        V::Null => Json::Null,
        V::List(l) => Json::Array(l.iter().map(plain).collect()),
        V::Map(m) => Json::Object(m.map.iter().map(|(k, v)| (key(k), plain(v))).collect()),
        other => json!(format!("{other:?}")),
    }
}
