//! `zt-policy test`: files of named cases, each an input and an expected decision.
//!
//! ```toml
//! policy = "policy.toml"          # relative to this file
//! [[case]]
//! name = "ml user may chat"
//! cert = "certs/alice.pem"
//! request = { method = "POST", path = "/v1/chat/completions" }
//! body = { model = "llama-3-8b-instruct", max_tokens = 256 }
//! expect = { effect = "allow", rule = "ml-chat" }
//! ```
//! Cases of one file share one engine, in order, so limits carry over between them;
//! `repeat` sends a case's request several times (the expectation is for the last)
//! and `advance` moves the engine's clock first.
//!
//! An allowed request that holds a lease (a limit with `settle`, a `[[concurrency]]`
//! cap) ends as `response` says, by the module's rules: `usage = {...}` settles to it;
//! `status` 4xx/5xx but 504 (or `ended = "upstream_unreachable"`) refunds; anything
//! else keeps the reservation. `in_flight = true` leaves the request open (streaming)
//! until a case with `end_in_flight = true`, or the end of the file.
//!
//! ```toml
//! [[case]]
//! name = "a chat that used 30 tokens"
//! # ...request...
//! response = { usage = { prompt_tokens = 4, completion_tokens = 26 } }
//! expect = { effect = "allow", charged = { tokens = 30 }, remaining = { tokens = 131042 } }
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use std::collections::BTreeMap;

use zt_policy_core::{Decision, Ending, Engine, EngineClock, Settled, Usage};

use crate::input::Input;
use crate::{load_engine, Args};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    policy: String,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(flatten)]
    input: Input,
    expect: Expect,
    #[serde(default = "one")]
    repeat: u32,
    advance: Option<String>,
    #[serde(default)]
    response: Response,
    /// The case's requests stay open (streaming) after it.
    #[serde(default)]
    in_flight: bool,
    /// Before the case: every open request of earlier cases ends (reservations kept).
    #[serde(default)]
    end_in_flight: bool,
}

/// How an allowed request's response ends (for limits that settle and caps).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Response {
    status: Option<u16>,
    usage: Option<UsageDef>,
    ended: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageDef {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

impl Response {
    /// The module's rule (README, "Budgets that settle"), from what the case says.
    fn ending(&self) -> Result<Ending, String> {
        if let Some(u) = &self.usage {
            return Ok(Ending::Usage(Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                total_tokens: u.total_tokens,
            }));
        }
        match (self.ended.as_deref(), self.status.unwrap_or(200)) {
            (Some("upstream_unreachable"), _) => Ok(Ending::Refund),
            (Some("client_gone"), _) => Ok(Ending::Keep),
            (Some(other), _) => Err(format!(
                "response.ended = {other:?} is not \"client_gone\" or \"upstream_unreachable\""
            )),
            (None, 504) => Ok(Ending::Keep),
            (None, s) if s >= 400 => Ok(Ending::Refund),
            (None, _) => Ok(Ending::Keep),
        }
    }
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    effect: Option<String>,
    status: Option<u16>,
    rule: Option<String>,
    reason: Option<String>,
    identity: Option<String>,
    limit: Option<String>,
    /// Rules that must all be among the matched ones.
    #[serde(default)]
    matched: Vec<String>,
    /// A substring of the decision's message.
    message: Option<String>,
    /// Tokens each settled limit finally charged the case's (last) request.
    #[serde(default)]
    charged: BTreeMap<String, u64>,
    /// Cells each limit has left for the decision's identity after the case.
    #[serde(default)]
    remaining: BTreeMap<String, u32>,
}

impl Expect {
    /// What differs in what the request was charged and what its limits have left.
    fn settle_differences(
        &self,
        engine: &Engine,
        d: &Decision,
        settled: &[Settled],
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (limit, want) in &self.charged {
            match settled.iter().find(|s| s.limit == limit) {
                Some(s) if s.charged == *want => {}
                Some(s) => out.push(format!(
                    "charged {limit}: want {want}, got {} ({}, reserved {})",
                    s.charged,
                    s.rule.as_str(),
                    s.reserved
                )),
                None => out.push(format!(
                    "charged {limit}: the request reserved nothing there"
                )),
            }
        }
        let key = d.identity.as_deref().unwrap_or("");
        for (limit, want) in &self.remaining {
            match engine.limit_remaining(limit, key) {
                Some(got) if got == *want => {}
                Some(got) => out.push(format!("remaining {limit}: want {want}, got {got}")),
                None => out.push(format!("remaining {limit}: the policy has no such limit")),
            }
        }
        out
    }

    /// What differs between the expectation and the decision, one phrase each.
    fn differences(&self, d: &Decision) -> Vec<String> {
        let mut out = Vec::new();
        let effect = if d.effect == zt_policy_core::Effect::Allow {
            "allow"
        } else {
            "deny"
        };
        if let Some(e) = &self.effect {
            if e != effect {
                out.push(format!("effect: want {e}, got {effect}"));
            }
        }
        if let Some(s) = self.status {
            if s != d.status {
                out.push(format!("status: want {s}, got {}", d.status));
            }
        }
        if let Some(r) = &self.rule {
            if Some(r.as_str()) != d.rule {
                out.push(format!(
                    "rule: want {r:?}, got {:?}",
                    d.rule.unwrap_or("(none)")
                ));
            }
        }
        if let Some(r) = &self.reason {
            if r != d.reason.as_str() {
                out.push(format!("reason: want {r}, got {}", d.reason.as_str()));
            }
        }
        if let Some(i) = &self.identity {
            if Some(i) != d.identity.as_ref() {
                out.push(format!(
                    "identity: want {i:?}, got {:?}",
                    d.identity.as_deref().unwrap_or("(none)")
                ));
            }
        }
        if let Some(l) = &self.limit {
            let got = d.limit.as_ref().map(|l| l.name);
            if got != Some(l.as_str()) {
                out.push(format!(
                    "limit: want {l:?}, got {:?}",
                    got.unwrap_or("(none)")
                ));
            }
        }
        for m in &self.matched {
            if !d.matched.contains(&m.as_str()) {
                out.push(format!("matched: want {m:?} among {:?}", d.matched));
            }
        }
        if let Some(m) = &self.message {
            if !d.message.contains(m.as_str()) {
                out.push(format!(
                    "message: want it to contain {m:?}, got {:?}",
                    d.message
                ));
            }
        }
        out
    }

    fn is_empty(&self) -> bool {
        self.effect.is_none()
            && self.status.is_none()
            && self.rule.is_none()
            && self.reason.is_none()
            && self.identity.is_none()
            && self.limit.is_none()
            && self.matched.is_empty()
            && self.message.is_none()
            && self.charged.is_empty()
            && self.remaining.is_empty()
    }
}

/// The test files named on the command line: files as given, folders searched for
/// `*_test.toml`.
fn collect(paths: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for p in paths {
        let path = PathBuf::from(p);
        if path.is_dir() {
            walk(&path, &mut files).map_err(|e| format!("{p}: {e}"))?;
        } else if path.is_file() {
            files.push(path);
        } else {
            return Err(format!("{p}: no such file or folder"));
        }
    }
    files.sort();
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with("_test.toml"))
        {
            out.push(p);
        }
    }
    Ok(())
}

pub fn run(args: &[String]) -> Result<ExitCode, String> {
    let args = Args::parse(args, &[], &["--verbose", "-v"])?;
    let verbose = args.switch("--verbose") || args.switch("-v");
    if args.positional.is_empty() {
        return Err("test needs a folder or test files".into());
    }
    let files = collect(&args.positional)?;
    if files.is_empty() {
        return Err(format!(
            "no *_test.toml files under {}",
            args.positional.join(" ")
        ));
    }
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in &files {
        let (p, f) = run_file(file, verbose);
        passed += p;
        failed += f;
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs one file's cases; a file that cannot be loaded counts as one failure.
fn run_file(file: &Path, verbose: bool) -> (usize, usize) {
    let shown = file.display();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            println!("FAIL {shown}: {e}");
            return (0, 1);
        }
    };
    let parsed: CaseFile = match toml::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            println!("FAIL {shown}: {}", e.to_string().trim_end());
            return (0, 1);
        }
    };
    let base = file.parent().unwrap_or(Path::new("."));
    // Wall time is read once; the cases then move the engine's own clock.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let engine = match load_engine(
        &crate::input::resolve(base, &parsed.policy),
        EngineClock::manual(now),
        None,
    ) {
        Ok(e) => e,
        Err(e) => {
            println!("FAIL {shown}: policy does not load:\n{e}");
            return (0, 1);
        }
    };
    if parsed.cases.is_empty() {
        println!("FAIL {shown}: the file has no [[case]]");
        return (0, 1);
    }
    let (mut passed, mut failed) = (0, 0);
    // Leases of requests the cases left open (`in_flight`).
    let mut open: Vec<u64> = Vec::new();
    for case in &parsed.cases {
        let fail = |why: String| println!("FAIL {shown}: case {:?}: {why}", case.name);
        if case.expect.is_empty() {
            fail("expect names nothing to check".into());
            failed += 1;
            continue;
        }
        if let Some(adv) = &case.advance {
            match zt_policy_core::parse_duration(adv) {
                Ok(d) => engine.clock().advance(d),
                Err(e) => {
                    fail(format!("advance: {e}"));
                    failed += 1;
                    continue;
                }
            }
        }
        let prepared = match case.input.prepare(base) {
            Ok(p) => p,
            Err(e) => {
                fail(e);
                failed += 1;
                continue;
            }
        };
        let ending = match case.response.ending() {
            Ok(e) => e,
            Err(e) => {
                fail(e);
                failed += 1;
                continue;
            }
        };
        if case.end_in_flight {
            for lease in open.drain(..) {
                engine.settle(lease, Ending::Keep);
            }
        }
        let mut decision = None;
        let mut settled = Vec::new();
        for _ in 0..case.repeat.max(1) {
            let d = prepared.decide(&engine);
            settled.clear();
            if let Some(lease) = d.lease {
                if case.in_flight {
                    open.push(lease);
                } else {
                    settled = engine.settle(lease, ending).unwrap_or_default();
                }
            }
            decision = Some(d);
        }
        let d = decision.expect("repeat is at least 1");
        let mut diffs = case.expect.differences(&d);
        diffs.extend(case.expect.settle_differences(&engine, &d, &settled));
        if diffs.is_empty() {
            passed += 1;
            if verbose {
                println!("ok   {shown}: case {:?}", case.name);
            }
        } else {
            failed += 1;
            fail(format!("{} (message: {:?})", diffs.join("; "), d.message));
        }
    }
    (passed, failed)
}
