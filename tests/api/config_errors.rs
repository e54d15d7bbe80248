//! Bad configuration of each kind exits non-zero with a one-line reason and no stack trace.

use std::process::Command;

fn run_with(vars: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amocrm-connector"));
    cmd.current_dir(dir.path()).env_clear().args(args);
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_failure(vars: &[(&str, &str)], mentions: &str) {
    let key = amocrm_connector::storage::cipher::Keyring::generate_entry("k1");
    let mut all: Vec<(&str, &str)> = vec![
        ("TOKEN_ENCRYPTION_KEYS", key.as_str()),
        ("AMOCRM_CLIENT_ID", "id"),
        ("AMOCRM_CLIENT_SECRET", "secret"),
        ("LISTEN_ADDR", "127.0.0.1:0"),
    ];
    for (k, v) in vars {
        all.retain(|(ek, _)| ek != k);
        all.push((k, v));
    }
    let (code, _out, err) = run_with(&all, &["serve"]);
    assert_ne!(code, 0, "must fail for {vars:?}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line for {vars:?}, got: {err}");
    assert!(
        lines[0].contains(mentions),
        "`{}` should mention {mentions}",
        lines[0]
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

/// `var` set to `value` alone is refused in one line that names `var`.
fn refused(var: &str, value: &str) {
    assert_one_line_failure(&[(var, value)], var);
}

#[test]
fn an_unknown_database_scheme_is_refused() {
    refused("DATABASE_URL", "mysql://localhost/db");
}

#[test]
fn a_malformed_or_short_encryption_key_is_refused() {
    for key in ["k1:c2hvcnQ=", "no-colon-here", "k1:%%%notbase64"] {
        refused("TOKEN_ENCRYPTION_KEYS", key);
    }
}

#[test]
fn a_missing_encryption_key_is_refused_by_serve() {
    refused("TOKEN_ENCRYPTION_KEYS", "");
}

#[test]
fn a_bad_cron_expression_is_refused() {
    for schedule in ["every ten minutes", "0 */10 * * *", "99 * * * * *"] {
        refused("REFRESH_SCHEDULE", schedule);
    }
}

#[test]
fn bad_urls_are_refused() {
    refused("PUBLIC_BASE_URL", "not a url");
    refused("AMOCRM_AUTHORIZE_URL", "ftp://x.example/oauth");
    refused("AMOCRM_ACCOUNT_URL_TEMPLATE", "https://example.com");
}

#[test]
fn missing_amocrm_credentials_are_refused_by_serve() {
    refused("AMOCRM_CLIENT_ID", "");
}

#[test]
fn an_unreachable_postgres_is_reported_in_one_line() {
    assert_one_line_failure(
        &[("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")],
        "database",
    );
}

#[test]
fn a_bad_flag_exits_non_zero_and_help_works() {
    let (code, _, err) = run_with(&[], &["--no-such-flag"]);
    assert_ne!(code, 0);
    assert!(err.contains("no-such-flag"));
    let (code, out, _) = run_with(&[], &["--help"]);
    assert_eq!(code, 0);
    for sub in ["serve", "migrate", "api-keys", "keys"] {
        assert!(out.contains(sub), "--help lists {sub}");
    }
}

#[test]
fn keys_generate_prints_one_valid_entry_and_api_keys_create_prints_the_key_last() {
    let (code, out, _) = run_with(&[], &["keys", "generate", "--id", "prod1"]);
    assert_eq!(code, 0);
    let line = out.trim();
    assert!(
        amocrm_connector::storage::cipher::Keyring::parse(line).is_ok(),
        "{line}"
    );
    assert!(line.starts_with("prod1:"));

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/k.db", dir.path().display());
    let (code, out, err) = run_with(
        &[("DATABASE_URL", &db)],
        &["api-keys", "create", "--name", "erp", "--tier", "premium"],
    );
    assert_eq!(code, 0, "{err}");
    let key = out.lines().last().unwrap();
    assert!(key.starts_with("amc_") && key.len() > 30, "{key}");
    let (code, out, _) = run_with(&[("DATABASE_URL", &db)], &["api-keys", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("erp") && out.contains("premium"));
    assert!(!out.contains(key), "list never shows the key");
    let (code, out, _) = run_with(&[("DATABASE_URL", &db)], &["api-keys", "revoke", "1"]);
    assert_eq!(code, 0, "{out}");
    let (code, _, err) = run_with(&[("DATABASE_URL", &db)], &["api-keys", "revoke", "1"]);
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1);
}
