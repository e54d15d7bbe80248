//! Health, migrations on both backends, the vault at rest, key rotation.

use amocrm_connector::services::keys;
use amocrm_connector::storage::cipher::Keyring;
use amocrm_connector::storage::connections::{self, seal_tokens};
use amocrm_connector::storage::schema::amocrm_connections as c;
use amocrm_connector::storage::{self as st, AnyConnection};
use diesel::prelude::*;
use secrecy::ExposeSecret;

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_answers_ok_with_a_request_id_when_the_database_is_reachable() {
    let app = spawn_app().await;
    let resp = app.http.get(app.url("/health")).send().await.unwrap();
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

fn insert_connection(
    conn: &mut AnyConnection,
    keys: &Keyring,
    seller: &str,
    access: &str,
    refresh: &str,
) {
    let (a, r) = seal_tokens(keys, seller, access, refresh);
    let now = st::now();
    diesel::insert_into(c::table)
        .values((
            c::seller_id.eq(seller),
            c::account_id.eq(31000001i64),
            c::host.eq("sellerone.amocrm.ru"),
            c::subdomain.eq("sellerone"),
            c::status.eq("active"),
            c::access_token_enc.eq(Some(a)),
            c::refresh_token_enc.eq(Some(r)),
            c::webhook_token.eq(format!("wh-{seller}")),
            c::connected_at.eq(now),
            c::created_at.eq(now),
            c::updated_at.eq(now),
        ))
        .execute(conn)
        .unwrap();
}

#[tokio::test]
async fn tokens_are_encrypted_at_rest_and_a_ciphertext_moved_to_another_seller_fails() {
    let app = spawn_app().await;
    let keys = app.state.keys.clone();
    let k = keys.clone();
    app.db
        .run(move |conn| {
            insert_connection(
                conn,
                &k,
                "seller-a",
                "ACCESS-PLAINTEXT-A",
                "REFRESH-PLAINTEXT-A",
            );
            insert_connection(
                conn,
                &k,
                "seller-b",
                "ACCESS-PLAINTEXT-B",
                "REFRESH-PLAINTEXT-B",
            );
            Ok(())
        })
        .await
        .unwrap();
    // Nothing in the stored rows contains the plaintext.
    type Blobs = (Option<Vec<u8>>, Option<Vec<u8>>);
    let rows: Vec<Blobs> = app
        .db
        .run(|conn| {
            Ok(c::table
                .select((c::access_token_enc, c::refresh_token_enc))
                .load(conn)?)
        })
        .await
        .unwrap();
    for (a, r) in &rows {
        for blob in [a.as_ref().unwrap(), r.as_ref().unwrap()] {
            assert!(!blob.windows(9).any(|w| w == b"PLAINTEXT"));
        }
    }
    let a = app
        .db
        .run(|conn| connections::find_by_seller(conn, "seller-a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        a.access_token(&keys).unwrap().unwrap().expose_secret(),
        "ACCESS-PLAINTEXT-A"
    );
    // Copy seller-a's ciphertext into seller-b's row: it must not decrypt there.
    let stolen = a.access_token_enc.clone();
    app.db
        .run(move |conn| {
            Ok(diesel::update(c::table.filter(c::seller_id.eq("seller-b")))
                .set(c::access_token_enc.eq(stolen.clone()))
                .execute(conn)?)
        })
        .await
        .unwrap();
    let b = app
        .db
        .run(|conn| connections::find_by_seller(conn, "seller-b"))
        .await
        .unwrap()
        .unwrap();
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
    let k = old_keys.clone();
    app.db
        .run(move |conn| {
            for i in 0..5 {
                insert_connection(
                    conn,
                    &k,
                    &format!("seller-{i}"),
                    &format!("access-{i}"),
                    &format!("refresh-{i}"),
                );
            }
            Ok(())
        })
        .await
        .unwrap();
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
        let seller = format!("seller-{i}");
        let row = app
            .db
            .run(move |conn| connections::find_by_seller(conn, &seller))
            .await
            .unwrap()
            .unwrap();
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
