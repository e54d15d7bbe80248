//! The client against the amoCRM sandbox on 127.0.0.1:0: OAuth (consent, exchange, refresh, revocation), every
//! API call the service uses, error classes under injected faults, and the per-account rate limiter.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use amocrm_client::{
    AccountHost, AllowedDomains, AmoClient, AmoConfig, ApiError, AuthMode, ComplexLead, FieldValue,
    LeadQuery, LeadUpdate, NewCompany, NewContact, NewCustomField, NewPipeline, NewStatus,
    OAuthError, Status,
};
use amocrm_sandbox::{Faults, Integration, Sandbox, SandboxConfig, SandboxHandle};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

const CLIENT_ID: &str = "3f1c2e4a-client";
const SECRET: &str = "sandbox-client-secret";
const REDIRECT: &str = "https://connector.example/oauth/amocrm/callback";
const ONE: &str = "sellerone.amocrm.ru";
const TWO: &str = "sellertwo.amocrm.ru";

struct Env {
    sandbox: SandboxHandle,
    client: AmoClient,
}

fn host(s: &str) -> AccountHost {
    AccountHost::parse(s, &AllowedDomains::default()).unwrap()
}

fn config(sandbox: &SandboxHandle) -> AmoConfig {
    let mut cfg = AmoConfig::new(
        CLIENT_ID,
        SecretString::from(SECRET),
        Url::parse(REDIRECT).unwrap(),
    );
    cfg.authorize_url = Url::parse(&sandbox.authorize_url()).unwrap();
    cfg.account_url_template = sandbox.account_url_template();
    cfg.request_timeout = Duration::from_secs(10);
    cfg
}

async fn env() -> Env {
    let sandbox = Sandbox::start(SandboxConfig {
        integrations: vec![Integration::new(CLIENT_ID, SECRET, REDIRECT)],
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let client = AmoClient::new(config(&sandbox)).unwrap();
    Env { sandbox, client }
}

fn token(env: &Env, h: &str) -> SecretString {
    SecretString::from(env.sandbox.issue_tokens(CLIENT_ID, h).access_token)
}

fn order_lead(n: u32, pipeline_id: u64, status_id: u64, field: u64) -> ComplexLead {
    ComplexLead {
        name: format!("Buyurtma #{n}"),
        price: 150_000,
        pipeline_id,
        status_id,
        request_id: format!("ord_{n}"),
        custom_fields_values: vec![FieldValue::text(field, format!("ORD-{n}"))],
        tags: vec!["marketplace".into()],
        // Phone and email are left out: the sandbox seeds PHONE/EMAIL without their WORK/… enums and refuses
        // any enum_code (see `contact_phone_and_email_are_stored_as_work_multitext`).
        contact: Some(NewContact {
            name: format!("Buyer {n}"),
            phone: None,
            email: None,
        }),
        company: Some(NewCompany {
            name: format!("Buyer {n} LLC"),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consented_code_is_exchanged_once_and_its_refresh_token_rotates() {
    let env = env().await;
    let authorize = env.client.authorize_url("state-123", AuthMode::PostMessage);
    let redirect = Url::parse(&env.sandbox.approve(authorize.as_str(), ONE).unwrap()).unwrap();
    let q = |k: &str| {
        redirect
            .query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(q("state").as_deref(), Some("state-123"));
    assert_eq!(q("client_id").as_deref(), Some(CLIENT_ID));
    let h =
        AccountHost::parse(&q("referer").unwrap(), &env.client.config().allowed_domains).unwrap();
    let code = q("code").unwrap();

    let tokens = env.client.exchange_code(&h, &code).await.unwrap();
    let account_id = env.sandbox.account_id(ONE).unwrap();
    assert_eq!(tokens.claims.account_id, Some(account_id));
    let hours = (tokens.expires_at - chrono::Utc::now()).num_hours();
    assert!(
        (23..=24).contains(&hours),
        "access token lives 24 h, got {hours} h"
    );
    let account = env
        .client
        .api(&h, &tokens.access_token)
        .account()
        .await
        .unwrap();
    assert_eq!(
        (account.id, account.subdomain.as_str()),
        (account_id, "sellerone")
    );

    let reused = env.client.exchange_code(&h, &code).await.unwrap_err();
    assert!(
        matches!(
            reused,
            OAuthError::Rejected {
                status: 400..=499,
                ..
            }
        ),
        "{reused:?}"
    );
    assert!(!reused.is_retryable());

    let next = env.client.refresh(&h, &tokens.refresh_token).await.unwrap();
    assert_ne!(
        next.refresh_token.expose_secret(),
        tokens.refresh_token.expose_secret()
    );
    env.client
        .api(&h, &next.access_token)
        .account()
        .await
        .unwrap();
    let third = env.client.refresh(&h, &next.refresh_token).await.unwrap();
    let stale = env
        .client
        .refresh(&h, &tokens.refresh_token)
        .await
        .unwrap_err();
    assert!(
        matches!(stale, OAuthError::Rejected { .. }),
        "an old refresh token dies once its successor is used"
    );

    assert!(env.sandbox.revoke_grant(ONE, CLIENT_ID));
    let revoked = env
        .client
        .refresh(&h, &third.refresh_token)
        .await
        .unwrap_err();
    let shown = format!("{revoked} {revoked:?}");
    assert!(matches!(revoked, OAuthError::Rejected { .. }), "{shown}");
    assert!(!shown.contains(SECRET) && !shown.contains(third.refresh_token.expose_secret()));
    let api = env
        .client
        .api(&h, &third.access_token)
        .account()
        .await
        .unwrap_err();
    assert!(matches!(api, ApiError::Unauthorized), "{api:?}");

    let c = env.sandbox.counters(ONE);
    assert_eq!((c.code_exchanges, c.refreshes), (1, 2));
    assert!(
        env.sandbox
            .request_log()
            .iter()
            .all(|r| r.host.as_deref() == Some(ONE))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_is_a_terminal_rejection() {
    let env = env().await;
    let mut cfg = config(&env.sandbox);
    cfg.client_secret = SecretString::from("not-the-secret");
    let bad = AmoClient::new(cfg).unwrap();
    let authorize = bad.authorize_url("s", AuthMode::Popup);
    let redirect = Url::parse(&env.sandbox.approve(authorize.as_str(), ONE).unwrap()).unwrap();
    let code = redirect
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let err = bad.exchange_code(&host(ONE), &code).await.unwrap_err();
    assert!(matches!(err, OAuthError::Rejected { .. }), "{err:?}");
    assert!(!err.to_string().contains("not-the-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_pushing_searching_and_moving_leads_work_end_to_end() {
    let env = env().await;
    let h = host(ONE);
    let t = token(&env, ONE);
    let api = env.client.api(&h, &t);

    let before = api.pipelines().await.unwrap();
    assert!(!before.is_empty(), "every account has a main pipeline");
    let created = api
        .create_pipeline(&NewPipeline {
            name: "Marketplace".into(),
            sort: Some(20),
            statuses: vec![
                NewStatus::new("Kutilmoqda", 10, "#fffeb2"),
                NewStatus::new("To'lov kutilmoqda", 20, "#fffd7f"),
                NewStatus::new("To'landi", 30, "#87f2c0"),
            ],
        })
        .await
        .unwrap();
    assert!(created.statuses.iter().any(|s| s.id == Status::WON));
    assert!(created.statuses.iter().any(|s| s.id == Status::LOST));
    let pending = created.status_named("Kutilmoqda").unwrap().id;
    let paid = created.status_named("To'landi").unwrap().id;
    assert_eq!(
        api.get_pipeline(created.id).await.unwrap().unwrap().name,
        "Marketplace"
    );
    assert!(api.get_pipeline(987_654_321).await.unwrap().is_none());
    assert_eq!(api.pipelines().await.unwrap().len(), before.len() + 1);

    let fields = api
        .create_lead_custom_fields(&[
            NewCustomField {
                name: "Order number".into(),
                type_: "text".into(),
                code: None,
                is_api_only: true,
            },
            NewCustomField {
                name: "Order link".into(),
                type_: "url".into(),
                code: None,
                is_api_only: true,
            },
        ])
        .await
        .unwrap();
    assert_eq!(fields.len(), 2);
    let number_field = fields[0].id;
    let listed = api.lead_custom_fields().await.unwrap();
    assert!(
        fields
            .iter()
            .all(|f| listed.iter().any(|l| l.id == f.id && l.type_ == f.type_))
    );

    let results = api
        .leads_complex(&[
            order_lead(1, created.id, pending, number_field),
            order_lead(2, created.id, pending, number_field),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].request_id, vec!["ord_1".to_owned()]);
    assert!(
        results
            .iter()
            .all(|r| r.contact_id.is_some() && r.company_id.is_some() && !r.merged)
    );
    let contacts = env.sandbox.contacts(ONE);
    let contact = contacts
        .iter()
        .find(|c| Some(c.id) == results[0].contact_id)
        .unwrap();
    assert_eq!(contact.name, "Buyer 1");
    let lead_in_sandbox = env.sandbox.lead(ONE, results[0].id).unwrap();
    assert_eq!(
        lead_in_sandbox
            .tags
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        vec!["marketplace"]
    );
    assert_eq!(lead_in_sandbox.company_id, results[0].company_id);

    let found = api
        .search_leads(&LeadQuery {
            query: Some("ORD-2".into()),
            ..LeadQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        found.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![results[1].id]
    );
    let by_ids = api
        .search_leads(&LeadQuery {
            ids: results.iter().map(|r| r.id).collect(),
            pipeline_id: Some(created.id),
            limit: Some(50),
            ..LeadQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(by_ids.len(), 2);
    let none = api
        .search_leads(&LeadQuery {
            query: Some("no-such-order".into()),
            ..LeadQuery::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty(), "204 reads as an empty list");

    let lead = api.get_lead(results[0].id).await.unwrap().unwrap();
    assert_eq!(
        (lead.pipeline_id, lead.status_id, lead.price),
        (Some(created.id), Some(pending), 150_000)
    );
    assert_eq!(lead.field_texts(number_field), vec!["ORD-1".to_owned()]);
    assert!(api.get_lead(999_999_999).await.unwrap().is_none());

    let moved = api
        .update_leads(&[LeadUpdate {
            id: lead.id,
            pipeline_id: created.id,
            status_id: paid,
        }])
        .await
        .unwrap();
    assert_eq!(moved[0].id, lead.id);
    assert_eq!(
        api.get_lead(lead.id).await.unwrap().unwrap().status_id,
        Some(paid)
    );

    let destination = "https://connector.example/webhooks/amocrm/tok123";
    assert!(api.webhooks().await.unwrap().is_empty());
    let hook = api
        .subscribe_webhook(
            destination,
            &["add_lead", "update_lead", "status_lead", "delete_lead"],
        )
        .await
        .unwrap();
    assert_eq!(hook.destination, destination);
    assert!(!hook.disabled);
    let hooks = api.webhooks().await.unwrap();
    assert_eq!(hooks.len(), 1);
    assert!(hooks[0].settings.contains(&"status_lead".to_owned()));
    api.unsubscribe_webhook(destination).await.unwrap();
    assert!(api.webhooks().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amocrm_validation_errors_name_the_rejected_request() {
    let env = env().await;
    let h = host(ONE);
    let t = token(&env, ONE);
    let api = env.client.api(&h, &t);
    let p = &api.pipelines().await.unwrap()[0];
    let stage = p
        .statuses
        .iter()
        .find(|s| s.type_ == 0 && s.id != Status::WON && s.id != Status::LOST)
        .unwrap();
    let mut bad = order_lead(7, p.id, stage.id, 0);
    bad.custom_fields_values.clear();
    bad.price = -5;
    let err = api.leads_complex(&[bad]).await.unwrap_err();
    assert!(
        matches!(err, ApiError::Rejected { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(err.rejected_request_ids(), vec!["ord_7"]);

    let too_many: Vec<ComplexLead> = (0..51).map(|n| order_lead(n, p.id, stage.id, 0)).collect();
    let before = env.sandbox.request_log().len();
    assert!(matches!(
        api.leads_complex(&too_many).await,
        Err(ApiError::Request(_))
    ));
    assert_eq!(
        env.sandbox.request_log().len(),
        before,
        "refused locally, nothing sent"
    );

    let nobody = SecretString::from("not-a-token");
    let err = env.client.api(&h, &nobody).account().await.unwrap_err();
    assert!(matches!(err, ApiError::Unauthorized));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_map_to_transient_rate_limited_and_ambiguous() {
    let env = env().await;
    let h = host(ONE);
    let t = token(&env, ONE);
    let mut cfg = config(&env.sandbox);
    cfg.request_timeout = Duration::from_millis(800);
    let client = AmoClient::new(cfg).unwrap();
    let api = client.api(&h, &t);
    let p = &api.pipelines().await.unwrap()[0];
    let stage = p
        .statuses
        .iter()
        .find(|s| s.type_ == 0 && s.id != Status::WON && s.id != Status::LOST)
        .unwrap();
    let mut lead = order_lead(9, p.id, stage.id, 0);
    lead.custom_fields_values.clear();

    env.sandbox.set_faults(
        ONE,
        Faults {
            fail_next: 1,
            ..Faults::default()
        },
    );
    let err = api
        .leads_complex(std::slice::from_ref(&lead))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ApiError::Transient {
                status: Some(500),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(env.sandbox.leads(ONE).is_empty(), "a 500 applied nothing");

    env.sandbox.set_faults(
        ONE,
        Faults {
            force_429_next: 1,
            ..Faults::default()
        },
    );
    let err = api
        .leads_complex(std::slice::from_ref(&lead))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::RateLimited { retry_after } if retry_after >= Duration::from_secs(1)),
        "{err:?}"
    );

    env.sandbox.set_faults(
        ONE,
        Faults {
            drop_after_write_next: 1,
            ..Faults::default()
        },
    );
    let err = api
        .leads_complex(std::slice::from_ref(&lead))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Ambiguous(_)), "{err:?}");
    assert!(err.may_have_written());
    // The caller's duty on Ambiguous: look up before re-sending. The lead is there, exactly once.
    let found = api
        .search_leads(&LeadQuery {
            query: Some("Buyurtma #9".into()),
            ..LeadQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(env.sandbox.leads(ONE).len(), 1);

    env.sandbox.set_faults(
        ONE,
        Faults {
            fail_next: 1,
            ..Faults::default()
        },
    );
    let err = client
        .refresh(&h, &SecretString::from("whatever"))
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::Transient(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_calls_at_seven_per_second_take_two_windows_and_draw_no_429() {
    let env = env().await;
    let h = host(ONE);
    let t = token(&env, ONE);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..15 {
        let client = env.client.clone();
        let h = h.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            if i == 7 {
                // The token endpoint draws from the same budget.
                let pair = SecretString::from("unknown-refresh-token");
                return client
                    .refresh(&h, &pair)
                    .await
                    .map(|_| ())
                    .or_else(|e| match e {
                        OAuthError::Rejected { .. } => Ok(()),
                        other => Err(format!("{other:?}")),
                    });
            }
            client
                .api(&h, &t)
                .account()
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:?}"))
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert_eq!(env.sandbox.counters(ONE).rate_limited, 0);
    assert_eq!(env.sandbox.counters(ONE).admitted, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_account_does_not_slow_another_account() {
    let env = env().await;
    let (one, two) = (host(ONE), host(TWO));
    let (t1, t2) = (token(&env, ONE), token(&env, TWO));
    let busy = {
        let client = env.client.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let calls = (0..21).map(|_| {
                let client = client.clone();
                let (one, t1) = (one.clone(), t1.clone());
                async move { client.api(&one, &t1).account().await.map(|_| ()) }
            });
            let mut set = tokio::task::JoinSet::new();
            for call in calls {
                set.spawn(call);
            }
            while let Some(r) = set.join_next().await {
                r.unwrap().unwrap();
            }
            started.elapsed()
        })
    };
    // Let the busy account use its first window and queue the rest (bounded poll on the sandbox's counter).
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.sandbox.counters(ONE).admitted < 7 {
        assert!(Instant::now() < deadline, "busy account never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let started = Instant::now();
    for _ in 0..7 {
        env.client.api(&two, &t2).account().await.unwrap();
    }
    let quiet = started.elapsed();
    let busy = busy.await.unwrap();
    assert!(
        quiet < Duration::from_millis(900),
        "the quiet account waited {quiet:?}"
    );
    assert!(
        busy >= Duration::from_secs(2),
        "21 calls at 7/s need two more windows: {busy:?}"
    );
    assert_eq!(
        env.sandbox.counters(ONE).rate_limited + env.sandbox.counters(TWO).rate_limited,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_phone_and_email_are_stored_as_work_multitext() {
    let env = env().await;
    let h = host(ONE);
    let t = token(&env, ONE);
    let api = env.client.api(&h, &t);
    let p = &api.pipelines().await.unwrap()[0];
    let stage = p
        .statuses
        .iter()
        .find(|s| s.type_ == 0 && s.id != Status::WON && s.id != Status::LOST)
        .unwrap();
    let mut lead = order_lead(3, p.id, stage.id, 0);
    lead.custom_fields_values.clear();
    lead.contact = Some(NewContact {
        name: "Buyer 3".into(),
        phone: Some("+998901234567".into()),
        email: Some("buyer3@example.com".into()),
    });
    let r = api.leads_complex(&[lead]).await.unwrap();
    let contacts = env.sandbox.contacts(ONE);
    let contact = contacts
        .iter()
        .find(|c| Some(c.id) == r[0].contact_id)
        .unwrap();
    let codes: Vec<(&str, Option<&str>)> = contact
        .custom_fields_values
        .iter()
        .map(|f| {
            (
                f.field_code.as_deref().unwrap_or(""),
                f.values[0].enum_code.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        vec![("PHONE", Some("WORK")), ("EMAIL", Some("WORK"))]
    );
}
