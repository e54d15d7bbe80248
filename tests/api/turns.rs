//! Several instances share one amoCRM account's budget: an instance calls an account only while it holds
//! the account's turn (`amocrm_account_turns`). The lease rules on the database, then the whole path: two
//! instances calling one sandbox account at once get no 429.

use std::time::Duration;

use amocrm_connector::services::tokens;
use amocrm_connector::storage::turns::{self, Turn};
use chrono::TimeDelta;
use futures_util::future::join_all;

use crate::support::{TestApp, connect_seller, spawn_app, wait_until};

const KEY: &str = "shared.amocrm.ru";

#[tokio::test]
async fn a_turn_is_held_renewed_yielded_to_a_waiter_and_cooled_on_release() {
    let app = spawn_app().await;
    let t0 = amocrm_connector::storage::now();
    let at = move |s: i64| t0 + TimeDelta::seconds(s);
    let max_turn = TimeDelta::seconds(10);
    // `owner` asks for the turn of account `key` at `now`, for a lease until `until`.
    let take_turn = |key: &'static str, owner: &'static str, now, until| {
        let db = app.db.clone();
        async move {
            db.run(move |c| turns::take(c, key, owner, now, until, max_turn))
                .await
                .unwrap()
        }
    };
    let take = |owner: &'static str, now, until| take_turn(KEY, owner, now, until);
    // Someone else holds the turn until `s`; `was_ours` if the asker just gave it up.
    let busy = |s: i64, was_ours: bool| Turn::Busy {
        until: at(s),
        was_ours,
    };

    // First caller takes the free turn; another waits for it until the lease ends.
    assert_eq!(take("a", at(0), at(4)).await, Turn::Taken);
    assert_eq!(take("b", at(1), at(5)).await, busy(4, false));
    // The holder keeps renewing while it has held the turn for less than the longest turn.
    assert_eq!(take("a", at(3), at(7)).await, Turn::Renewed);
    assert_eq!(take("a", at(6), at(10)).await, Turn::Renewed);
    assert_eq!(take("a", at(9), at(13)).await, Turn::Renewed);
    // Held for over 10 s with "b" waiting: "a" may not renew; it is told it gave the turn up.
    assert_eq!(take("a", at(11), at(15)).await, busy(13, true));
    // When the lease has run out, the waiter takes it, and the old holder now waits.
    assert_eq!(take("b", at(14), at(18)).await, Turn::Taken);
    assert_eq!(take("a", at(15), at(19)).await, busy(18, false));
    // Nobody waits for "c"'s account: its holder renews for as long as it likes.
    let key_c = "quiet.amocrm.ru";
    let take_c = |now, until| take_turn(key_c, "c", now, until);
    assert_eq!(take_c(at(0), at(4)).await, Turn::Taken);
    assert_eq!(take_c(at(3), at(7)).await, Turn::Renewed);
    assert_eq!(
        take_c(at(30), at(34)).await,
        Turn::Taken,
        "expired, taken again"
    );
    // Idle, "c" shortens its turn to when its last calls' window closes: others wait only until then,
    // while "c" itself may still renew it.
    let shortened = app
        .db
        .run(move |c| turns::shorten(c, key_c, "c", at(32)))
        .await
        .unwrap();
    assert!(shortened);
    let take_d = |now, until| take_turn(key_c, "d", now, until);
    assert_eq!(take_d(at(31), at(35)).await, busy(32, false));
    assert_eq!(take_c(at(31), at(35)).await, Turn::Renewed);
    assert!(
        app.db
            .run(move |c| turns::shorten(c, key_c, "c", at(33)))
            .await
            .unwrap()
    );
    assert_eq!(take_d(at(34), at(38)).await, Turn::Taken);
    assert!(
        !app.db
            .run(move |c| turns::shorten(c, key_c, "c", at(35)))
            .await
            .unwrap(),
        "no longer ours to shorten"
    );

    // Releasing "b"'s turns (shutdown, or a restart under the same instance id) keeps the turn closed
    // until its last calls are a window old, for everyone, "b" included.
    let released = app
        .db
        .run(move |c| turns::release_all(c, "b", at(16)))
        .await
        .unwrap();
    assert_eq!(released, 1);
    assert_eq!(take("b", at(15), at(19)).await, busy(16, false));
    assert_eq!(take("a", at(17), at(21)).await, Turn::Taken);
}

#[tokio::test]
async fn two_instances_calling_one_account_at_once_share_its_budget_and_get_no_429() {
    let app = spawn_app().await;
    let seller = connect_seller(&app, "seller-turns", "turns.amocrm.ru").await;
    let peer = app.spawn_peer().await;
    let before = app.sandbox.counters(&seller.host);

    // 16 reads from each instance at once: 32 calls against a budget of 7 a second.
    let calls = [&app, &peer].into_iter().flat_map(|instance| {
        (0..16).map(|_| {
            let state = instance.state.clone();
            async move {
                tokens::with_api(&state, "seller-turns", |amo| async move {
                    amo.api().account().await
                })
                .await
            }
        })
    });
    let started = std::time::Instant::now();
    let results = join_all(calls).await;
    let elapsed = started.elapsed();

    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(failed.is_empty(), "every call answered: {failed:?}");
    let after = app.sandbox.counters(&seller.host);
    assert_eq!(
        after.requests - before.requests,
        32,
        "one request per call, none retried"
    );
    assert_eq!(after.rate_limited, 0, "no 429 for the shared account");
    // 32 calls at 7 a second take at least four full windows, whoever made them.
    assert!(elapsed >= Duration::from_secs(4), "{elapsed:?}");
}

/// The account's turn as stored: (owner, lease end).
async fn turn_row(app: &TestApp, host: &str) -> (Option<String>, Option<chrono::NaiveDateTime>) {
    use amocrm_connector::storage::schema::amocrm_account_turns as t;
    use diesel::prelude::*;
    let host = host.to_owned();
    app.db
        .run(move |c| {
            t::table
                .filter(t::account_key.eq(&host))
                .select((t::owner, t::lease_until))
                .first(c)
                .map_err(Into::into)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn an_idle_instance_shortens_its_turn_so_another_need_not_wait_out_the_lease() {
    let app = spawn_app().await;
    let seller = connect_seller(&app, "seller-idle", "idle.amocrm.ru").await;
    tokens::with_api(&app.state, "seller-idle", |amo| async move {
        amo.api().account().await
    })
    .await
    .unwrap();
    let (owner, until) = turn_row(&app, &seller.host).await;
    assert_eq!(
        owner.as_deref(),
        Some(app.state.settings.instance_id.as_str())
    );
    let until = until.unwrap();
    // Only the keeper's shortening moves a lease's end earlier (renewals move it later); poll for it.
    let (owner, short_until) = wait_until(Duration::from_secs(10), "a shorter lease", || async {
        let (owner, now_until) = turn_row(&app, &seller.host).await;
        now_until.filter(|u| *u < until).map(|u| (owner, u))
    })
    .await
    .expect("the idle turn was shortened");
    assert_eq!(
        owner.as_deref(),
        Some(app.state.settings.instance_id.as_str()),
        "still ours to renew"
    );
    assert!(
        short_until <= amocrm_connector::storage::now() + TimeDelta::milliseconds(1500),
        "closed at most one margin from now"
    );
    // And this instance takes it straight back when it calls again.
    tokens::with_api(&app.state, "seller-idle", |amo| async move {
        amo.api().account().await
    })
    .await
    .unwrap();
    let (_, renewed) = turn_row(&app, &seller.host).await;
    assert!(renewed.unwrap() > short_until, "renewed");
}
