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
use zt_policy_core::{read_body, Llm, MalformedBody, Request, Value};

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
    let body = match read_body(&req, MAX_DEPTH, MalformedBody::Refuse) {
        Ok(b) => b,
        Err(e) => return json!({"json": req.is_json(), "refused": e.to_string()}),
    };
    let show = |v: Value| {
        if typed {
            v.to_tagged_json()
        } else {
            v.to_json()
        }
    };
    let fields: serde_json::Map<String, Json> = body
        .keys()
        .map(|k| {
            (
                k.to_owned(),
                show(body.field_value(k).expect("a listed key")),
            )
        })
        .collect();
    let mut answer = json!({
        "json": req.is_json(),
        "refused": null,
        "fields": fields,
        "llm": Llm::read(path, &body).to_json(),
    });
    if typed {
        // The whole body as one map: what a rule that reads `body` itself gets.
        answer["whole"] = show(body.to_value());
    }
    answer
}
