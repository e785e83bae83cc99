//! Loading: every mistake a user can make is reported, naming the rule or field
//! and where it is.

use zt_policy_core::{load_policy as load, parse_rate, parse_size};

fn problems(src: &str) -> String {
    load(src, "p.toml").unwrap_err().to_string()
}

const ALLOW: &str = "[[rule]]\nname = \"ok\"\neffect = \"allow\"\nwhen = 'true'\n";

#[test]
fn unknown_keys_are_rejected() {
    let p = problems(&format!("[settings]\nmax_bdy = 10\n{ALLOW}"));
    assert!(p.contains("unknown field `max_bdy`"), "{p}");
    let p = problems("[[rule]]\nname = \"x\"\neffect = \"allow\"\nwhen = 'true'\nstaus = 400\n");
    assert!(p.contains("unknown field `staus`"), "{p}");
    let p = problems(&format!("{ALLOW}[extra]\na = 1\n"));
    assert!(p.contains("unknown field `extra`"), "{p}");
    let p = problems("[[rule]]\nname = \"x\"\neffect = \"permit\"\nwhen = 'true'\n");
    assert!(p.contains("permit"), "{p}");
}

#[test]
fn cel_syntax_error_names_the_rule_and_position() {
    let src = format!(
        "{ALLOW}\n[[rule]]\nname = \"broken\"\neffect = \"deny\"\nwhen = 'request.path == '\n"
    );
    let p = problems(&src);
    assert!(
        p.starts_with("p.toml:9: rule \"broken\" when: line 1, column"),
        "{p}"
    );
}

#[test]
fn multi_line_expression_errors_point_at_the_file_line() {
    let src = format!(
        "{ALLOW}\n[[rule]]\nname = \"multi\"\neffect = \"deny\"\nwhen = '''\nrequest.path == \"/\" &&\n  reqest.method == \"GET\"\n'''\n"
    );
    let p = problems(&src);
    assert!(
        p.contains("p.toml:11: rule \"multi\" when: line 2, column 3 of the expression: unknown variable 'reqest'"),
        "{p}"
    );
}

#[test]
fn references_to_variables_that_do_not_exist_are_errors() {
    let p =
        problems("[[rule]]\nname = \"typo\"\neffect = \"allow\"\nwhen = 'claim.sub == \"x\"'\n");
    assert!(
        p.contains("rule \"typo\"") && p.contains("unknown variable 'claim'"),
        "{p}"
    );
    // The identity expression cannot read itself.
    let p = problems(&format!("[settings]\nidentity = 'identity'\n{ALLOW}"));
    assert!(
        p.contains("settings.identity") && p.contains("unknown variable 'identity'"),
        "{p}"
    );
}

#[test]
fn bad_rates_sizes_statuses_and_names_are_rejected() {
    let cases = [
        ("[settings]\nmax_body = \"10 parsecs\"\n", "settings.max_body"),
        ("[settings]\nmax_body = 0\n", "settings.max_body: must be larger than 0"),
        ("[settings]\nmax_body = \"2GiB\"\n", "over the 1GiB"),
        ("[settings]\ndeny_status = 200\n", "settings.deny_status = 200"),
        ("[[limit]]\nname = \"l\"\nrate = \"ten per second\"\n", "limit \"l\": rate"),
        ("[[limit]]\nname = \"l\"\nrate = \"0/s\"\n", "at least one request"),
        ("[[limit]]\nname = \"l\"\nrate = \"10/s\"\nburst = 0\n", "burst = 0"),
        ("[[limit]]\nname = \"l\"\nrate = \"10/s\"\nmax_keys = 0\n", "max_keys"),
        ("[[limit]]\nname = \"l\"\nrate = \"10/s\"\ncost = 'body.'\n", "limit \"l\" cost"),
        ("[[rule]]\nname = \"a\"\neffect = \"allow\"\nstatus = 401\nwhen = 'true'\n", "status is only for deny rules"),
        ("[[rule]]\nname = \"d\"\neffect = \"deny\"\nstatus = 302\nwhen = 'true'\n", "status = 302"),
        ("[[rule]]\nname = \"ok\"\neffect = \"allow\"\nwhen = 'false'\n", "used twice"),
        ("[[rule]]\nname = \"has space\"\neffect = \"deny\"\nwhen = 'false'\n", "name must be"),
        ("[token]\nleeway = \"1h\"\n", "token.leeway"),
        ("[token]\nmax_size = \"1MiB\"\n", "token.max_size"),
        ("[[rule]]\nname = \"re\"\neffect = \"deny\"\nwhen = 'request.path.matches(\"([a-z\")'\n", "bad pattern"),
    ];
    for (snippet, want) in cases {
        let p = problems(&format!("{ALLOW}{snippet}"));
        assert!(p.contains(want), "{snippet:?}: want {want:?} in:\n{p}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let p = problems(
        "[settings]\ndeny_status = 99\n[[rule]]\nname = \"a\"\neffect = \"allow\"\nwhen = 'x'\n[[limit]]\nname = \"l\"\nrate = \"fast\"\n",
    );
    assert_eq!(p.lines().count(), 3, "{p}");
}

#[test]
fn a_policy_without_allow_rules_is_rejected() {
    let p = problems("[[rule]]\nname = \"d\"\neffect = \"deny\"\nwhen = 'true'\n");
    assert!(p.contains("no allow rule"), "{p}");
}

#[test]
fn rate_and_size_grammar() {
    assert_eq!(
        parse_rate("600/m").unwrap().period(),
        std::time::Duration::from_millis(100)
    );
    assert_eq!(
        parse_rate("5/10s").unwrap().period(),
        std::time::Duration::from_secs(2)
    );
    assert_eq!(parse_rate("1000/h").unwrap().to_string(), "1000/h");
    assert!(parse_rate("10").is_err());
    assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
    assert_eq!(parse_size("2MB"), Ok(2_000_000));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert!(parse_size("-1").is_err());
}
