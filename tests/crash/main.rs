//! Crash tests: the real `amocrm-connector serve` binary is killed with SIGKILL at random moments while it
//! refreshes tokens, pushes orders and processes webhooks, then restarted; in the end nothing is lost or
//! doubled. `CRASH_SEED=<n>` replays a run; `CRASH_ROUNDS=<n>` makes it longer.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod harness;
#[path = "../api/helpers.rs"]
mod helpers;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use harness::{REFRESH_SECRET, World, wait_for};

/// The seed of this run (printed so a failure can be replayed).
fn rng() -> StdRng {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("CRASH_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

fn rounds(default: usize) -> usize {
    std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

const SELLERS: usize = 3;

fn seller(i: usize) -> (String, String) {
    (format!("crash-seller-{i}"), format!("crash{i}.amocrm.ru"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_at_random_moments_while_refreshing_every_connection_still_works() {
    let mut rng = rng();
    let world = World::new().await;
    let svc = world.start("crash-a").await;
    world.balancer.set_backends(vec![svc.port]);
    for i in 0..SELLERS {
        let (s, h) = seller(i);
        world.connect(&s, &h).await;
    }
    let mut svc = svc;
    let t0 = std::time::Instant::now();
    for round in 0..rounds(4) {
        // Pressure: every token due, the cron URL and the API hammering refresh while the schedule sweeps.
        world.make_tokens_due().await;
        let load = {
            let http = world.http.clone();
            let (base, key) = (world.balancer.url(), world.api_key.clone());
            tokio::spawn(async move {
                for n in 0usize.. {
                    let _ = http
                        .get(format!("{base}/refresh?secret_key={REFRESH_SECRET}"))
                        .send()
                        .await;
                    let (s, _) = seller(n % SELLERS);
                    let _ = http
                        .post(format!("{base}/api/v1/connections/{s}/refresh"))
                        .bearer_auth(&key)
                        .send()
                        .await;
                }
            })
        };
        let before = world.sandbox.total_counters().refreshes;
        // Kill at a random moment, but after at least one refresh reached amoCRM this round.
        assert!(
            // A killed process's row leases (2 × timeout + 10 s) expire first.
            wait_for(Duration::from_secs(60), || async {
                world.sandbox.total_counters().refreshes > before
            })
            .await,
            "round {round}: refreshes happen"
        );
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        svc.kill();
        load.abort();
        println!(
            "round {round}: killed after {} refreshes at {:?}",
            world.sandbox.total_counters().refreshes - before,
            t0.elapsed()
        );
        svc = world.start("crash-a").await;
        world.balancer.set_backends(vec![svc.port]);
    }
    // Let the restarted service settle what the crash interrupted: refresh leases of the dead process
    // expire, and the next sweeps refresh what is still due.
    world.make_tokens_due().await;
    let all_fresh = wait_for(Duration::from_secs(120), || async {
        let now = amocrm_connector::storage::now();
        world.connections().await.iter().all(|c| {
            c.status == "active"
                && c.token_expires_at
                    .is_some_and(|t| t > now + chrono::Duration::hours(2))
        })
    })
    .await;
    println!("settled at {:?}", t0.elapsed());
    assert!(all_fresh, "every connection refreshed after the crashes");
    let counters = world.sandbox.total_counters();
    assert_eq!(
        counters.rejected_refreshes, 0,
        "no refresh used a dead token (a lost answer is retried under the grace rule): {counters:?}"
    );
    for i in 0..SELLERS {
        let (s, _) = seller(i);
        world.assert_connection_works(&s).await;
        let (status, body) = world
            .api("POST", &format!("/api/v1/connections/{s}/refresh"), None)
            .await
            .unwrap();
        assert_eq!(status, 200, "{s}: {body}");
        world.assert_connection_works(&s).await;
    }
    svc.kill();
}
