//! `stsgate check` through the real binary: every error of a config, its
//! rule file and the files it names in one run, each at its own line, each
//! once; a hint for a rule file handed over as the config; `--json`; a
//! country allow list without a GeoIP database; clap's suggestions.

use stsgate_tests::*;

const RULES: &str =
    "[request_blocking.ip]\nrule = \"deny\"\nentries = [\"5.143.*.*\", \"300.1.1.1\"]\n";

/// A directory with `stsgate.toml` (`config`) and `rules/wstrust.toml` (`rules`).
fn setup(config: &str, rules: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/wstrust.toml"), rules).unwrap();
    std::fs::write(dir.path().join("stsgate.toml"), config).unwrap();
    let path = dir.path().join("stsgate.toml").display().to_string();
    (dir, path)
}

const BROKEN: &str = r#"rules = "rules/wstrust.toml"
[listen]
addr = "127.0.0.1:0"
tls_cert = "missing-cert.pem"
tls_key = "missing-key.pem"
bogus = 1
[upstream]
url = "http://127.0.0.1:9"
ca_file = "missing-ca.pem"
timeout = 5
[limits]
max_body = "lots"
[admin]
addr = "127.0.0.1:0"
token_file = "missing.token"
[geoip]
country_db = "missing.mmdb"
"#;

#[test]
fn every_error_in_one_run_each_at_its_line_and_once() {
    let (dir, config) = setup(BROKEN, RULES);
    let (code, out, err) = stsgate(&["check", "--config", &config]);
    assert_eq!(code, 1, "{out}{err}");
    let rules = dir.path().join("rules/wstrust.toml").display().to_string();
    let want = [
        format!("{config}:4:12: listen TLS: "),
        format!("{config}:6:1: unknown field `bogus`"),
        format!("{config}:9:11: upstream.ca_file: "),
        format!("{config}:10:11: invalid type: integer `5`"),
        format!("{config}:12:12: invalid size \"lots\""),
        format!("{config}:15:14: admin.token_file: "),
        format!("{config}:17:14: geoip.country_db: "),
        format!("{rules}:3:26: invalid IP entry \"300.1.1.1\""),
    ];
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), want.len(), "{err}");
    for (line, want) in lines.iter().zip(&want) {
        assert!(
            line.starts_with(want.as_str()),
            "want {want}\n got {line}\n{err}"
        );
    }
    assert!(out.is_empty(), "{out}");

    // --json: the same, as one object
    let (code, out, _) = stsgate(&["check", "--config", &config, "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["rules"], rules.as_str());
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), want.len(), "{v}");
    assert_eq!(errors[0]["path"], config.as_str());
    assert_eq!(
        (errors[0]["line"].as_u64(), errors[0]["column"].as_u64()),
        (Some(4), Some(12))
    );
    assert!(
        errors[7]["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid IP entry")
    );
}

#[test]
fn json_summary_when_all_is_well() {
    let config = "rules = \"rules/wstrust.toml\"\n[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n";
    let (_dir, config) = setup(config, &RULES.replace(", \"300.1.1.1\"", ""));
    let (code, out, err) = stsgate(&["check", "--config", &config, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["errors"].as_array().unwrap().len(), 0);
    let summary: Vec<&str> = v["summary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        summary
            .iter()
            .any(|l| l.contains("request_blocking.ip: deny list, 1 entry")),
        "{summary:?}"
    );
}

#[test]
fn a_rule_file_handed_over_as_the_config_gets_a_hint() {
    let (dir, _) = setup("", RULES);
    let rules = dir.path().join("rules/wstrust.toml").display().to_string();
    let (code, _, err) = stsgate(&["check", "--config", &rules]);
    assert_eq!(code, 1);
    assert_eq!(
        err.lines().count(),
        1,
        "one message, not one per key: {err}"
    );
    assert!(
        err.starts_with(&format!("{rules}:1:1: this looks like a rule file")),
        "{err}"
    );
    assert!(err.contains("rules = "), "{err}");
}

#[test]
fn a_country_allow_list_without_a_database_fails_the_check() {
    let config = "rules = \"rules/wstrust.toml\"\n[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n";
    let allow = "[request_blocking]\nuse_adaptive = true\n\n[adaptive.ip_country]\nrestriction = \"country\"\nlist = \"allow\"\nentries = [\"GB\", \"SE\"]\n";
    let (dir, path) = setup(config, allow);
    let rules = dir.path().join("rules/wstrust.toml").display().to_string();
    let (code, _, err) = stsgate(&["check", "--config", &path]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "{rules}:7:1: [adaptive.ip_country] is a country allow list"
        )),
        "{err}"
    );
    assert!(err.contains("geoip.country_db"), "{err}");
    // `run` refuses it the same way
    let (code, _, err) = stsgate(&["run", "--config", &path]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("country allow list"), "{err}");
    // a deny list only warns: it never fires, but refuses no one
    let (_dir, path) = setup(config, &allow.replace("\"allow\"", "\"deny\""));
    let (code, out, err) = stsgate(&["check", "--config", &path]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("warning: ") && out.contains("geoip.country_db"),
        "{out}"
    );
}

#[test]
fn clap_suggests_what_was_meant() {
    let (code, _, err) = stsgate(&["chek", "--config", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("similar subcommand exists: 'check'"), "{err}");
    let (code, _, err) = stsgate(&["check", "--confg", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("'--config'"), "{err}");
}
