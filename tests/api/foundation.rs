//! Health, migrations on both backends, the vault at rest, key rotation.

use amocrm_connector::services::keys;
use amocrm_connector::storage as st;
use amocrm_connector::storage::cipher::Keyring;
use amocrm_connector::storage::connections::NewConnection;
use amocrm_connector::storage::schema::amocrm_connections as c;
use diesel::prelude::*;
use secrecy::ExposeSecret;

use crate::support::{TestApp, connection, connection_row, insert_connections, spawn_app};

#[tokio::test]
async fn health_answers_ok_with_a_request_id_when_the_database_is_reachable() {
    let app = spawn_app().await;
    let resp = app.get("/health").await;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers().get("x-request-id").is_some());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "ok");
}

#[test]
fn every_migration_exists_for_both_backends_with_the_same_name() {
    let list = |dir: &str| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let sqlite = list("migrations/sqlite");
    let postgres = list("migrations/postgres");
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, postgres);
    for m in &sqlite {
        for b in ["sqlite", "postgres"] {
            for f in ["up.sql", "down.sql"] {
                assert!(
                    std::path::Path::new(&format!("migrations/{b}/{m}/{f}")).exists(),
                    "{b}/{m}/{f}"
                );
            }
        }
    }
}

/// An active connection of `seller` holding the pair (`access`, `refresh`).
fn seller_row(app: &TestApp, seller: &str, access: &str, refresh: &str) -> NewConnection {
    let expires_at = st::now() + chrono::TimeDelta::hours(24);
    let mut row = connection_row(
        app,
        seller,
        "sellerone.amocrm.ru",
        31000001,
        (access, refresh),
        expires_at,
    );
    row.webhook_token = format!("wh-{seller}");
    row
}

#[tokio::test]
async fn tokens_are_encrypted_at_rest_and_a_ciphertext_moved_to_another_seller_fails() {
    let app = spawn_app().await;
    let keys = app.state.keys.clone();
    let rows = vec![
        seller_row(
            &app,
            "seller-a",
            "ACCESS-PLAINTEXT-A",
            "REFRESH-PLAINTEXT-A",
        ),
        seller_row(
            &app,
            "seller-b",
            "ACCESS-PLAINTEXT-B",
            "REFRESH-PLAINTEXT-B",
        ),
    ];
    insert_connections(&app, rows).await;
    // Nothing in the stored rows contains the plaintext.
    type Blobs = (Option<Vec<u8>>, Option<Vec<u8>>);
    let rows: Vec<Blobs> = app
        .sql(|conn| {
            c::table
                .select((c::access_token_enc, c::refresh_token_enc))
                .load(conn)
        })
        .await;
    for (a, r) in &rows {
        for blob in [a.as_ref().unwrap(), r.as_ref().unwrap()] {
            assert!(!blob.windows(9).any(|w| w == b"PLAINTEXT"));
        }
    }
    let a = connection(&app, "seller-a").await.unwrap();
    assert_eq!(
        a.access_token(&keys).unwrap().unwrap().expose_secret(),
        "ACCESS-PLAINTEXT-A"
    );
    // Copy seller-a's ciphertext into seller-b's row: it must not decrypt there.
    let stolen = a.access_token_enc.clone();
    app.update(
        c::table.filter(c::seller_id.eq("seller-b")),
        c::access_token_enc.eq(stolen),
    )
    .await;
    let b = connection(&app, "seller-b").await.unwrap();
    assert!(b.access_token(&keys).is_err());
    // And the access-token ciphertext does not open as the refresh token of the same row.
    let mut swapped = a.clone();
    swapped.refresh_token_enc = a.access_token_enc.clone();
    assert!(swapped.refresh_token(&keys).is_err());
}

#[tokio::test]
async fn rotation_re_encrypts_every_token_with_the_new_key_and_is_idempotent() {
    let app = spawn_app().await;
    let old_keys = app.state.keys.clone();
    let rows = (0..5)
        .map(|i| {
            let seller = format!("seller-{i}");
            seller_row(
                &app,
                &seller,
                &format!("access-{i}"),
                &format!("refresh-{i}"),
            )
        })
        .collect();
    insert_connections(&app, rows).await;
    let old_entry = app.env["TOKEN_ENCRYPTION_KEYS"].clone();
    let new_entry = Keyring::generate_entry("test2");
    let new_ring = Keyring::parse(&format!("{new_entry},{old_entry}")).unwrap();
    let first = keys::rotate(&app.db, &new_ring).await.unwrap();
    assert_eq!(first.rotated, 5);
    assert_eq!(first.failed, 0);
    let second = keys::rotate(&app.db, &new_ring).await.unwrap();
    assert_eq!(second.rotated, 0);
    assert_eq!(second.already_current, 5);
    // Everything now opens with the new key alone.
    let only_new = Keyring::parse(&new_entry).unwrap();
    for i in 0..5 {
        let row = connection(&app, &format!("seller-{i}")).await.unwrap();
        assert_eq!(
            Keyring::key_id_of(row.access_token_enc.as_deref().unwrap()),
            Some("test2")
        );
        assert_eq!(
            row.refresh_token(&only_new)
                .unwrap()
                .unwrap()
                .expose_secret(),
            format!("refresh-{i}")
        );
        assert!(
            row.access_token(&old_keys).is_err(),
            "the old key alone no longer opens it"
        );
    }
}
