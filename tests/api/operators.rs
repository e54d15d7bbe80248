//! Operators: `users create` on the command line, login and refresh, operator tokens on `/api/v1`,
//! read-only viewers, and the throttle on failed logins.

use amocrm_connector::cli::{self, Cli, Command};
use amocrm_connector::config::Settings;
use amocrm_connector::services::operators::{self, Role};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::support::{TestApp, assert_error, header, spawn_app};

const PASSWORD: &str = "correct horse battery";

async fn add_operator(app: &TestApp, email: &str, role: Role) {
    operators::create_or_update(&app.db, email, None, role, SecretString::from(PASSWORD))
        .await
        .expect("operator created");
}

/// The service with an admin operator, ops@example.com, whose password is `PASSWORD`.
async fn app_with_ops() -> TestApp {
    let app = spawn_app().await;
    add_operator(&app, "ops@example.com", Role::Admin).await;
    app
}

/// Presents `refresh_token` at `/api/auth/refresh`.
async fn refresh(app: &TestApp, refresh_token: &str) -> reqwest::Response {
    app.post_json(
        "/api/auth/refresh",
        &json!({"refresh_token": refresh_token}),
    )
    .await
}

/// The new tokens the refresh token of `tokens` (a sign-in's answer) is exchanged for (200).
async fn renew(app: &TestApp, tokens: &Value) -> Value {
    let resp = refresh(app, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.post_json(
        "/api/auth/login",
        &json!({"email": email, "password": password}),
    )
    .await
}

/// A sign-in with `email` and `password` is refused: 401 in the contract format.
async fn assert_refused(app: &TestApp, email: &str, password: &str) {
    assert_error(login(app, email, password).await, 401, "INVALID_TOKEN").await;
}

/// The answer to a sign-in of `email` with the right password.
async fn tokens(app: &TestApp, email: &str) -> Value {
    login(app, email, PASSWORD).await.json().await.unwrap()
}

async fn access_token(app: &TestApp, email: &str) -> String {
    let resp = login(app, email, PASSWORD).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

/// Runs `amocrm-connector users …` in-process (parsed by the real command line) with `stdin` as input.
async fn users_cli(app: &TestApp, args: &[&str], stdin: &str) -> Result<String, String> {
    use clap::Parser;
    let mut argv = vec!["amocrm-connector", "users"];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let Some(Command::Users(cmd)) = cli.command else {
        return Err("not a users command".into());
    };
    let settings = Settings::from_env(&app.env).unwrap();
    cli::users(settings, cmd, stdin.as_bytes()).await
}

#[tokio::test]
async fn an_operator_created_on_the_command_line_signs_in_with_the_password_from_stdin() {
    let app = spawn_app().await;
    let out = users_cli(
        &app,
        &[
            "create",
            "--email",
            "Ops@Example.com",
            "--role",
            "admin",
            "--name",
            "Olga",
        ],
        &format!("{PASSWORD}\n"),
    )
    .await
    .unwrap();
    assert!(out.contains("created operator"), "{out}");
    assert!(!out.contains(PASSWORD));

    let resp = login(&app, "ops@example.com", PASSWORD).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["user"]["name"], "Olga");
    assert_eq!(body["user"]["role"], "admin");
    assert!(body["user"]["id"].as_i64().is_some());
    assert!(body["access_token"].as_str().is_some_and(|t| t.len() > 30));
    assert!(body["refresh_token"].as_str().is_some_and(|t| t.len() > 30));

    // The stored password is an Argon2id hash, never the password.
    let rows = app
        .db
        .run(amocrm_connector::storage::operators::list)
        .await
        .unwrap();
    assert!(rows[0].password_hash.starts_with("$argon2id$"));
    assert!(!rows[0].password_hash.contains(PASSWORD));
    let listed = users_cli(&app, &["list"], "").await.unwrap();
    assert!(
        listed.contains("ops@example.com") && listed.contains("admin"),
        "{listed}"
    );
}

#[tokio::test]
async fn users_create_refuses_a_short_password_a_missing_one_and_a_bad_role() {
    let app = spawn_app().await;
    let create = ["create", "--email", "a@example.com", "--role", "admin"];
    let err = users_cli(&app, &create, "short\n").await.unwrap_err();
    assert!(err.contains("at least"), "{err}");
    let err = users_cli(&app, &create, "").await.unwrap_err();
    assert!(err.contains("no password"), "{err}");
    let bad_role = ["create", "--email", "a@example.com", "--role", "root"];
    assert!(
        users_cli(&app, &bad_role, &format!("{PASSWORD}\n"))
            .await
            .is_err()
    );
    let rows = app
        .db
        .run(amocrm_connector::storage::operators::list)
        .await
        .unwrap();
    assert!(rows.is_empty());
}

#[tokio::test]
async fn a_wrong_password_or_unknown_email_is_401_in_the_contract_format() {
    let app = app_with_ops().await;
    assert_refused(&app, "ops@example.com", "wrong password").await;
    assert_refused(&app, "nobody@example.com", PASSWORD).await;
}

#[tokio::test]
async fn malformed_or_incomplete_login_bodies_are_400_and_422() {
    let app = spawn_app().await;
    let resp = app
        .post_raw("/api/auth/login", None, "application/json", "{not json")
        .await;
    assert_error(resp, 400, "BAD_REQUEST").await;
    let resp = app
        .post_json("/api/auth/login", &json!({"email": "ops@example.com"}))
        .await;
    let body = assert_error(resp, 422, "VALIDATION_ERROR").await;
    assert!(body["error"]["details"].get("password").is_some(), "{body}");
    let body = assert_error(login(&app, "", "").await, 422, "VALIDATION_ERROR").await;
    assert!(body["error"]["details"].get("email").is_some(), "{body}");
}

#[tokio::test]
async fn an_operator_access_token_is_accepted_on_the_api_beside_api_keys() {
    let app = app_with_ops().await;
    let token = access_token(&app, "ops@example.com").await;
    // Past the guard: the route does not exist, so 404 rather than 401.
    let resp = app.get_as("/api/v1/no-such-route", &token).await;
    assert_error(resp, 404, "RESOURCE_NOT_FOUND").await;
    let resp = app
        .request(
            Method::POST,
            "/api/v1/no-such-route",
            Some(&token),
            Some(&json!({})),
        )
        .await;
    assert_error(resp, 404, "RESOURCE_NOT_FOUND").await;
    // A made-up operator token is refused.
    let resp = app
        .get_as(
            "/api/v1/no-such-route",
            "opa_made-up-token-that-was-never-issued",
        )
        .await;
    assert_error(resp, 401, "INVALID_TOKEN").await;
}

#[tokio::test]
async fn viewers_may_read_but_every_write_method_is_403() {
    let app = spawn_app().await;
    add_operator(&app, "viewer@example.com", Role::Viewer).await;
    let token = access_token(&app, "viewer@example.com").await;
    let resp = app.get_as("/api/v1/no-such-route", &token).await;
    assert_error(resp, 404, "RESOURCE_NOT_FOUND").await;
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let resp = app
            .request(
                method.clone(),
                "/api/v1/connections/seller-1",
                Some(&token),
                Some(&json!({})),
            )
            .await;
        assert_error(resp, 403, "INSUFFICIENT_PERMISSION").await;
    }
}

#[tokio::test]
async fn a_refresh_token_gives_a_new_working_access_token_and_junk_is_401() {
    let app = app_with_ops().await;
    let body = tokens(&app, "ops@example.com").await;
    let renewed = renew(&app, &body).await;
    assert_eq!(renewed["expires_in"], 3600);
    let token = renewed["access_token"].as_str().unwrap();
    assert_ne!(token, body["access_token"].as_str().unwrap());
    let resp = app.get_as("/api/v1/no-such-route", token).await;
    assert_error(resp, 404, "RESOURCE_NOT_FOUND").await;

    for junk in ["opr_junk", "", body["access_token"].as_str().unwrap()] {
        let resp = refresh(&app, junk).await;
        let status = resp.status().as_u16();
        assert!(status == 401 || status == 422, "{junk}: {status}");
    }
}

#[tokio::test]
async fn a_refresh_token_works_once_and_presenting_it_again_revokes_the_whole_sign_in() {
    let app = app_with_ops().await;
    let first = tokens(&app, "ops@example.com").await;
    let second = renew(&app, &first).await;
    assert_ne!(second["refresh_token"], first["refresh_token"], "rotated");
    let live = |t: &Value| t["access_token"].as_str().unwrap().to_owned();
    let resp = app.get_as("/api/v1/connections", &live(&first)).await;
    assert_error(resp, 401, "INVALID_TOKEN").await;
    let resp = app.get_as("/api/v1/connections", &live(&second)).await;
    assert_eq!(resp.status(), 200, "the new access token works");

    // The first refresh token again: someone kept a copy. Every token of this sign-in dies.
    let resp = refresh(&app, first["refresh_token"].as_str().unwrap()).await;
    assert_error(resp, 401, "INVALID_TOKEN").await;
    let resp = app.get_as("/api/v1/connections", &live(&second)).await;
    assert_error(resp, 401, "INVALID_TOKEN").await;
    let resp = refresh(&app, second["refresh_token"].as_str().unwrap()).await;
    assert_error(resp, 401, "INVALID_TOKEN").await;

    // Another sign-in of the same operator is untouched.
    let other = tokens(&app, "ops@example.com").await;
    let resp = app.get_as("/api/v1/connections", &live(&other)).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn operator_tokens_are_stored_only_as_hashes() {
    let app = app_with_ops().await;
    let body = tokens(&app, "ops@example.com").await;
    let access = body["access_token"].as_str().unwrap().to_owned();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let found = app
        .db
        .run(move |c| {
            let now = amocrm_connector::storage::now();
            Ok((
                amocrm_connector::storage::operators::operator_for_token(
                    c, "access", &access, now,
                )?,
                amocrm_connector::storage::operators::operator_for_token(
                    c, "refresh", &refresh, now,
                )?,
            ))
        })
        .await
        .unwrap();
    assert!(
        found.0.is_none() && found.1.is_none(),
        "plaintext tokens must not be look-up keys"
    );
}

#[tokio::test]
async fn repeated_failed_logins_for_one_email_are_locked_out_with_retry_after() {
    let app = app_with_ops().await;
    for _ in 0..6 {
        assert_refused(&app, "ops@example.com", "wrong password").await;
    }
    // Locked now: even the right password is refused, with a hint when to come back.
    let resp = login(&app, "ops@example.com", PASSWORD).await;
    let retry: u64 = header(&resp, "retry-after").parse().expect("Retry-After");
    assert!((1..=900).contains(&retry), "{retry}");
    assert_error(resp, 429, "RATE_LIMIT_EXCEEDED").await;
    // Another operator is not affected by this e-mail's lock.
    add_operator(&app, "other@example.com", Role::Viewer).await;
    assert_eq!(
        login(&app, "other@example.com", PASSWORD).await.status(),
        200
    );
}

#[tokio::test]
async fn many_failed_logins_from_one_address_lock_that_address_for_every_email() {
    let app = app_with_ops().await;
    // Spread over many e-mails so that no single e-mail reaches its own limit.
    for i in 0..21 {
        assert_refused(&app, &format!("guess{i}@example.com"), "wrong password").await;
    }
    let resp = login(&app, "ops@example.com", PASSWORD).await;
    assert!(resp.headers().get("retry-after").is_some());
    assert_error(resp, 429, "RATE_LIMIT_EXCEEDED").await;
}

#[tokio::test]
async fn a_successful_login_forgets_earlier_failures_of_that_email() {
    let app = app_with_ops().await;
    for _ in 0..5 {
        assert_refused(&app, "ops@example.com", "wrong password").await;
    }
    assert_eq!(login(&app, "ops@example.com", PASSWORD).await.status(), 200);
    // Five more free failures after the success: none of them locks.
    for _ in 0..5 {
        assert_refused(&app, "ops@example.com", "wrong password").await;
    }
    assert_eq!(login(&app, "ops@example.com", PASSWORD).await.status(), 200);
}
