//! The `zt-policy` binary as users run it in CI.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn zt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zt-policy"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run zt-policy")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tmp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zt-policy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_accepts_the_example_policy() {
    let o = zt(&["check", "examples/policy/policy.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("ok: 9 rules (3 allow, 6 deny), 2 limits"),
        "{}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains("warning"), "{}", stdout(&o));
}

const CLUSTER: &str = "[[rule]]\nname = \"ok\"\neffect = \"allow\"\nwhen = 'true'\n\n[[limit]]\nname = \"req\"\nrate = \"10/s\"\nscope = \"cluster\"\n";

#[test]
fn check_reports_cluster_scoped_limits_and_a_bad_store_url() {
    let p = tmp("cluster.toml", CLUSTER);
    let path = p.to_str().unwrap();
    let o = zt(&["check", path]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("req scope = \"cluster\": the Caddy config needs a limits_store"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("1 limits, mode Enforce, 1 cluster-scoped"),
        "{}",
        stdout(&o)
    );
    let o = zt(&[
        "check",
        path,
        "--limits-store",
        "redis://u:s3cret@store.internal:6379/0",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("limits store redis://u:***@store.internal:6379/0 is a valid URL"),
        "{}",
        stdout(&o)
    );
    for (url, says) in [
        ("http://store:6379", "the scheme \"http\""),
        (
            "rediss://u:s3cret@store:6379/#insecure",
            "options after ? or #",
        ),
        ("redis://u:s3cret@:6379", "no host"),
    ] {
        let o = zt(&["check", path, "--limits-store", url]);
        assert_eq!(o.status.code(), Some(1), "{url}: {}", stdout(&o));
        assert!(stdout(&o).contains(says), "{url}: {}", stdout(&o));
        assert!(!stdout(&o).contains("s3cret"), "{}", stdout(&o));
    }
    // --ping: a store that is not there is an error within the timeout.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let o = zt(&["check", path, "--limits-store", &url, "--ping"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains(&format!("limits store {url}")),
        "{}",
        stdout(&o)
    );
    let bad = tmp("bad-scope.toml", &CLUSTER.replace("cluster", "global"));
    let o = zt(&["check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains(
            "bad-scope.toml:9: limit \"req\": scope = \"global\" is not \"local\" or \"cluster\""
        ),
        "{}",
        stdout(&o)
    );
}

#[test]
fn check_names_the_rule_and_position_of_an_error() {
    let p = tmp(
        "broken.toml",
        "[[rule]]\nname = \"ok\"\neffect = \"allow\"\nwhen = 'true'\n\n[[rule]]\nname = \"bad\"\neffect = \"deny\"\nwhen = 'request.path == && true'\n",
    );
    let o = zt(&["check", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("broken.toml:9: rule \"bad\" when: line 1, column"),
        "{out}"
    );
}

#[test]
fn check_warns_about_fields_that_do_not_exist() {
    let p = tmp(
        "typo.toml",
        "[[rule]]\nname = \"typo\"\neffect = \"allow\"\nwhen = 'cert.subject.nme == \"alice\"'\n",
    );
    let o = zt(&["check", p.to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("warning:") && out.contains("rule \"typo\" when") && out.contains("nme"),
        "{out}"
    );
}

#[test]
fn test_runs_the_example_cases() {
    let o = zt(&["test", "examples/policy"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let last = out.lines().last().unwrap();
    let passed: usize = last.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 25, "{last}");
    assert_eq!(last, format!("{passed} passed, 0 failed"));
}

#[test]
fn test_reports_what_differed_and_fails() {
    let policy = root().join("examples/policy/policy.toml");
    let cases = tmp(
        "wrong_test.toml",
        &format!(
            "policy = {:?}\n[[case]]\nname = \"expects the impossible\"\nrequest = {{ method = \"GET\", path = \"/v1/models\" }}\nexpect = {{ effect = \"allow\", status = 200 }}\n[[case]]\nname = \"right\"\nexpect = {{ status = 401 }}\n",
            policy.to_str().unwrap()
        ),
    );
    let o = zt(&["test", cases.to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("case \"expects the impossible\": effect: want allow, got deny; status: want 200, got 401"),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("1 passed, 1 failed"));
}

#[test]
fn test_counts_an_unloadable_file_as_a_failure() {
    let cases = tmp(
        "nopolicy_test.toml",
        "policy = \"does-not-exist.toml\"\n[[case]]\nname = \"x\"\nexpect = { status = 200 }\n",
    );
    let o = zt(&["test", cases.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o).lines().last(), Some("0 passed, 1 failed"));
}

#[test]
fn eval_prints_the_decision_and_exits_by_it() {
    let input = tmp(
        "req.json",
        &format!(
            r#"{{"cert": {:?}, "request": {{"method": "POST", "path": "/v1/chat/completions"}}, "body": {{"model": "llama-3.1-8b-instruct", "max_tokens": 10}}}}"#,
            root()
                .join("examples/policy/certs/alice.pem")
                .to_str()
                .unwrap()
        ),
    );
    let o = zt(&[
        "eval",
        "--policy",
        "examples/policy/policy.toml",
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let d: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(d["allowed"], true);
    assert_eq!(d["identity"], "alice@example.com");
    assert_eq!(d["matched"], serde_json::json!(["ml-users-inference"]));
    assert_eq!(d["limit"]["name"], "requests-per-identity");

    let input = tmp("anon.json", r#"{"request": {"path": "/metrics"}}"#);
    let o = zt(&[
        "eval",
        "--policy",
        "examples/policy/policy.toml",
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let d: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(d["status"], 401);
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(zt(&[]).status.code(), Some(2));
    assert_eq!(zt(&["check"]).status.code(), Some(2));
    assert_eq!(zt(&["test", "/nonexistent-folder"]).status.code(), Some(2));
    assert_eq!(zt(&["eval", "--policy"]).status.code(), Some(2));
}
