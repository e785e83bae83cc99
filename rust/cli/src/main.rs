//! `zt-policy`: check, test and evaluate zt_policy policies. This is what "policy unit
//! tests in CI" means for users of the Caddy module: the same engine, the same file.

mod body;
mod cases;
mod input;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use zt_policy_core::{Effect, Engine, EngineClock};

const USAGE: &str = "\
zt-policy: check, test and evaluate zt_policy policies

USAGE:
    zt-policy check POLICY [--sample INPUT.json] [--limits-store URL [--ca-file PEM] [--ping]]
        Load and compile POLICY; report every error with its rule and position, then
        evaluate each expression against a sample request and warn about the ones that
        fail (misspelt fields). With --limits-store, check the store URL the Caddy config
        gives cluster-scoped limits (and with --ping, reach it within 2s). Exit 1 on
        errors.
    zt-policy test DIR|FILE...  [--verbose]
        Run the test cases in FILEs, or in every *_test.toml under DIR. One line per
        failing case, closing line 'N passed, N failed'; exit 1 on any failure.
    zt-policy eval --policy POLICY --input REQUEST.json [--jwks JWKS.json]
        Decide one request; print the decision (identity, every matching rule, the
        limit that fired) as JSON. Exit 0 if allowed, 1 if denied.
    zt-policy body [--content-type CT] [--path PATH] FILE|-
        Show how the engine reads a request body, as vLLM reads it: the fields rules
        see as `body`, the `llm` view, or why it is refused (400 malformed_body).
        Exit 1 if refused. --jsonl: a body per line ({\"body\": base64, \"content_type\",
        \"path\"}), an exactly typed answer per line.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("check") => check(&args[1..]),
        Some("test") => cases::run(&args[1..]),
        Some("eval") => eval(&args[1..]),
        Some("body") => body::run(&args[1..]),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(format!("expected a command\n\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zt-policy: {e}");
            ExitCode::from(2)
        }
    }
}

/// Loads a policy file and its JWKS file (if the policy names one).
pub fn load_engine(
    path: &Path,
    clock: EngineClock,
    jwks_override: Option<&Path>,
) -> Result<Engine, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let engine =
        Engine::from_toml(&text, &path.display().to_string(), clock).map_err(|e| e.to_string())?;
    let jwks = match (
        jwks_override,
        engine
            .policy()
            .token
            .as_ref()
            .and_then(|t| t.jwks_file.clone()),
    ) {
        (Some(p), _) => Some(p.to_path_buf()),
        (None, Some(f)) => Some(input::resolve(path.parent().unwrap_or(Path::new(".")), &f)),
        (None, None) => None,
    };
    if let Some(j) = jwks {
        let bytes = std::fs::read(&j).map_err(|e| format!("{}: {e}", j.display()))?;
        engine
            .set_jwks(&bytes)
            .map_err(|e| format!("{}: {e}", j.display()))?;
    }
    Ok(engine)
}

/// Command-line words: positionals, and `--flag value` for the flags in `valued`
/// (others are switches).
pub struct Args {
    pub positional: Vec<String>,
    values: Vec<(String, String)>,
    switches: Vec<String>,
}

impl Args {
    pub fn parse(words: &[String], valued: &[&str], switches: &[&str]) -> Result<Args, String> {
        let mut a = Args {
            positional: Vec::new(),
            values: Vec::new(),
            switches: Vec::new(),
        };
        let mut it = words.iter();
        while let Some(w) = it.next() {
            if valued.contains(&w.as_str()) {
                let v = it.next().ok_or_else(|| format!("{w} needs a value"))?;
                a.values.push((w.clone(), v.clone()));
            } else if switches.contains(&w.as_str()) {
                a.switches.push(w.clone());
            } else if w.starts_with("--") {
                return Err(format!("unknown option {w}\n\n{USAGE}"));
            } else {
                a.positional.push(w.clone());
            }
        }
        Ok(a)
    }

    pub fn value(&self, flag: &str) -> Option<PathBuf> {
        self.values
            .iter()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| PathBuf::from(v))
    }

    pub fn switch(&self, flag: &str) -> bool {
        self.switches.iter().any(|s| s == flag)
    }
}

fn read_input(path: &Path) -> Result<input::Input, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn sample_input() -> input::Input {
    serde_json::from_value(serde_json::json!({
        "cert": {
            "subject": {"cn": "sample", "o": ["Example"], "ou": ["ml-users"], "dn": "CN=sample,OU=ml-users,O=Example"},
            "issuer": {"cn": "Sample CA", "o": ["Example"], "dn": "CN=Sample CA,O=Example"},
            "san": {"email": ["sample@example.com"], "dns": ["sample.example.internal"],
                    "uri": ["spiffe://example.internal/user/sample"], "ip": ["10.0.0.1"]},
            "serial": "01", "fingerprint_sha256": "00", "not_before": 0, "not_after": 4102444800i64
        },
        "claims": {"iss": "https://idp.example.internal", "aud": "sample", "sub": "sample",
                   "email": "sample@example.com", "groups": ["ml-users"], "exp": 4102444800i64,
                   "iat": 0, "preferred_username": "sample", "name": "Sample"},
        "request": {"method": "POST", "path": "/v1/chat/completions",
                    "headers": {"user-agent": "sample", "accept": "application/json"}},
        "body": {"model": "sample-model", "max_tokens": 16, "stream": false, "temperature": 0.0,
                 "messages": [{"role": "user", "content": "hi"}]}
    }))
    .expect("the sample input matches the input schema")
}

fn check(args: &[String]) -> Result<ExitCode, String> {
    let args = Args::parse(
        args,
        &["--sample", "--limits-store", "--ca-file"],
        &["--ping"],
    )?;
    let [policy] = args.positional.as_slice() else {
        return Err("check needs one policy file".into());
    };
    let store = match args.value("--limits-store") {
        None if args.value("--ca-file").is_some() || args.switch("--ping") => {
            return Err("--ca-file and --ping go with --limits-store URL".into())
        }
        None => None,
        Some(url) => {
            let config = zt_policy_store::StoreConfig {
                url: url.to_string_lossy().into_owned(),
                ca_file: args
                    .value("--ca-file")
                    .map(|p| p.to_string_lossy().into_owned()),
                timeout: std::time::Duration::from_secs(2),
            };
            let checked = zt_policy_store::Store::new(config).and_then(|s| {
                if args.switch("--ping") {
                    s.ping()?;
                }
                Ok(s)
            });
            match checked {
                Ok(s) => Some(s),
                Err(e) => {
                    println!("{e}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
    };
    let path = PathBuf::from(policy);
    let engine = match load_engine(&path, EngineClock::system(), None) {
        Ok(e) => e,
        Err(e) => {
            println!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    let (sample, base) = match args.value("--sample") {
        Some(p) => (
            read_input(&p)?,
            p.parent().unwrap_or(Path::new(".")).to_path_buf(),
        ),
        None => (sample_input(), PathBuf::from(".")),
    };
    let prepared = sample.prepare(&base)?;
    let warnings = prepared.with_request(|req, given| engine.lint(req, given));
    for (place, error) in &warnings {
        println!(
            "warning: {}: {place}: {error} (evaluated against the sample request)",
            path.display()
        );
    }
    let cluster = engine.cluster_scoped();
    if !cluster.is_empty() && store.is_none() {
        println!(
            "note: {}: {} scope = \"cluster\": the Caddy config needs a limits_store (check its URL with --limits-store URL)",
            path.display(),
            cluster.join(", ")
        );
    }
    if let Some(s) = &store {
        println!(
            "{}: limits store {} {}",
            path.display(),
            zt_policy_store::redact(&s.config().url),
            if args.switch("--ping") {
                "answers"
            } else {
                "is a valid URL"
            }
        );
    }
    let p = engine.policy();
    let allows = p.rules.iter().filter(|r| r.effect == Effect::Allow).count();
    println!(
        "{}: ok: {} rules ({} allow, {} deny), {} limits, mode {:?}{}{}",
        path.display(),
        p.rules.len(),
        allows,
        p.rules.len() - allows,
        p.limits.len(),
        p.mode,
        if cluster.is_empty() {
            String::new()
        } else {
            format!(", {} cluster-scoped", cluster.len())
        },
        if engine.needs_body() {
            ", reads the JSON body"
        } else {
            ""
        },
    );
    Ok(ExitCode::SUCCESS)
}

fn eval(args: &[String]) -> Result<ExitCode, String> {
    let args = Args::parse(args, &["--policy", "--input", "--jwks"], &[])?;
    let policy = args.value("--policy").ok_or("eval needs --policy POLICY")?;
    let input_path = args
        .value("--input")
        .ok_or("eval needs --input REQUEST.json")?;
    let jwks = args.value("--jwks");
    let engine = load_engine(&policy, EngineClock::system(), jwks.as_deref())?;
    let input = read_input(&input_path)?;
    let prepared = input.prepare(input_path.parent().unwrap_or(Path::new(".")))?;
    let d = prepared.decide(&engine);
    println!(
        "{}",
        serde_json::to_string_pretty(&d).map_err(|e| e.to_string())?
    );
    Ok(if d.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
