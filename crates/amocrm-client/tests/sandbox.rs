//! The client against the amoCRM sandbox on 127.0.0.1:0: OAuth (consent, exchange, refresh, revocation), every
//! API call the service uses, error classes under injected faults, and the per-account rate limiter.
#![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::time::{Duration, Instant};

use amocrm_client::{
    Account, AccountApi, AccountHost, AllowedDomains, AmoClient, AmoConfig, ApiError, AuthMode,
    ComplexLead, FieldValue, Lead, LeadQuery, LeadUpdate, NewCompany, NewContact, NewCustomField,
    NewPipeline, NewStatus, OAuthError, Status,
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

/// A started `env()` with ONE's host and an access token for it.
async fn signed_in() -> (Env, AccountHost, SecretString) {
    let env = env().await;
    let t = token(&env, ONE);
    (env, host(ONE), t)
}

/// `GET account`: the cheapest call that shows whether a token is accepted.
async fn get_account(
    client: &AmoClient,
    h: &AccountHost,
    token: &SecretString,
) -> Result<Account, ApiError> {
    client.api(h, token).account().await
}

/// The main pipeline's first ordinary stage.
async fn first_stage(api: &AccountApi<'_>) -> (u64, u64) {
    let p = api
        .pipelines()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.is_main)
        .unwrap();
    let mut stages: Vec<_> = p
        .statuses
        .iter()
        .filter(|s| s.type_ == 0 && s.id != Status::WON && s.id != Status::LOST)
        .collect();
    stages.sort_by_key(|s| s.sort);
    (p.id, stages[0].id)
}

/// Leads whose text matches `query`.
async fn leads_matching(api: &AccountApi<'_>, query: &str) -> Vec<Lead> {
    api.search_leads(&LeadQuery {
        query: Some(query.into()),
        ..LeadQuery::default()
    })
    .await
    .unwrap()
}

/// Faults with what `set` changes, the rest off.
fn faults(set: impl FnOnce(&mut Faults)) -> Faults {
    let mut f = Faults::default();
    set(&mut f);
    f
}

/// Order `n` as the service pushes it; `field`, when given, carries the order number.
fn order_lead(n: u32, pipeline_id: u64, status_id: u64, field: Option<u64>) -> ComplexLead {
    ComplexLead {
        name: format!("Buyurtma #{n}"),
        price: 150_000,
        pipeline_id,
        status_id,
        request_id: format!("ord_{n}"),
        custom_fields_values: field
            .map(|f| FieldValue::text(f, format!("ORD-{n}")))
            .into_iter()
            .collect(),
        tags: vec!["marketplace".into()],
        // Phone and email are left out here; `contact_phone_and_email_are_stored_as_work_multitext` covers them.
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
    let account = get_account(&env.client, &h, &tokens.access_token)
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
    get_account(&env.client, &h, &next.access_token)
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
    let api = get_account(&env.client, &h, &third.access_token)
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
    let (env, h, t) = signed_in().await;
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
            order_lead(1, created.id, pending, Some(number_field)),
            order_lead(2, created.id, pending, Some(number_field)),
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

    let found = leads_matching(&api, "ORD-2").await;
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
    let none = leads_matching(&api, "no-such-order").await;
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
    let (env, h, t) = signed_in().await;
    let api = env.client.api(&h, &t);
    let (pipeline, stage) = first_stage(&api).await;
    let mut bad = order_lead(7, pipeline, stage, None);
    bad.price = -5;
    let err = api.leads_complex(&[bad]).await.unwrap_err();
    assert!(
        matches!(err, ApiError::Rejected { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(err.rejected_request_ids(), vec!["ord_7"]);

    let too_many: Vec<ComplexLead> = (0..51)
        .map(|n| order_lead(n, pipeline, stage, None))
        .collect();
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
    let err = get_account(&env.client, &h, &nobody).await.unwrap_err();
    assert!(matches!(err, ApiError::Unauthorized));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_map_to_transient_rate_limited_and_ambiguous() {
    let (env, h, t) = signed_in().await;
    let mut cfg = config(&env.sandbox);
    cfg.request_timeout = Duration::from_millis(800);
    let client = AmoClient::new(cfg).unwrap();
    let api = client.api(&h, &t);
    let (pipeline, stage) = first_stage(&api).await;
    let lead = order_lead(9, pipeline, stage, None);
    // Arms one fault, then pushes the lead once.
    let push_under = |fault: fn(&mut Faults)| {
        env.sandbox.set_faults(ONE, faults(fault));
        api.leads_complex(std::slice::from_ref(&lead))
    };

    let err = push_under(|f| f.fail_next = 1).await.unwrap_err();
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

    let err = push_under(|f| f.force_429_next = 1).await.unwrap_err();
    assert!(
        matches!(err, ApiError::RateLimited { retry_after } if retry_after >= Duration::from_secs(1)),
        "{err:?}"
    );

    let err = push_under(|f| f.drop_after_write_next = 1)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Ambiguous(_)), "{err:?}");
    assert!(err.may_have_written());
    // The caller's duty on Ambiguous: look up before re-sending. The lead is there, exactly once.
    let found = leads_matching(&api, "Buyurtma #9").await;
    assert_eq!(found.len(), 1);
    assert_eq!(env.sandbox.leads(ONE).len(), 1);

    env.sandbox.set_faults(ONE, faults(|f| f.fail_next = 1));
    let err = client
        .refresh(&h, &SecretString::from("whatever"))
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::Transient(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_calls_at_seven_per_second_take_two_windows_and_draw_no_429() {
    let (env, h, t) = signed_in().await;
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
            get_account(&client, &h, &t)
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
                async move { get_account(&client, &one, &t1).await.map(|_| ()) }
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
        get_account(&env.client, &two, &t2).await.unwrap();
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
    let (env, h, t) = signed_in().await;
    let api = env.client.api(&h, &t);
    let (pipeline, stage) = first_stage(&api).await;
    let lead = ComplexLead {
        contact: Some(NewContact {
            name: "Buyer 3".into(),
            phone: Some("+998901234567".into()),
            email: Some("buyer3@example.com".into()),
        }),
        ..order_lead(3, pipeline, stage, None)
    };
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

/// Notes, contacts, products and links, users, tasks and unsorted requests against the sandbox.
mod crm {
    use amocrm_client::{
        ApiError, ComplexLead, ComplexLeadItem, ContactCreate, ContactUpdate, EmbeddedContact,
        FieldValue, FormMetadata, NewCatalogElement, NewContact, NewLink, NewNote, NewPipeline,
        NewStatus, NewTask, NewUnsortedForm, UnsortedLead, ValidationError, unconfirmed_links,
    };
    use amocrm_sandbox::{ContactSeed, NewUser, SandboxConfig};

    use super::*;

    /// A sandbox and a client without the rate limit (these tests make many calls), plus an admin token.
    async fn fast() -> (Env, AccountHost, SecretString) {
        let sandbox = Sandbox::start(SandboxConfig {
            integrations: vec![Integration::new(CLIENT_ID, SECRET, REDIRECT)],
            rate_limit_rps: 0,
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
        let mut cfg = config(&sandbox);
        cfg.rate_limit_rps = 1000;
        let client = AmoClient::new(cfg).unwrap();
        let env = Env { sandbox, client };
        let t = token(&env, ONE);
        (env, host(ONE), t)
    }

    /// Adds Dilnoza, a manager who does not administer the account.
    fn add_manager(env: &Env) -> amocrm_sandbox::User {
        let dilnoza = NewUser {
            name: "Dilnoza".into(),
            email: "d@shop.uz".into(),
            is_admin: false,
        };
        env.sandbox.add_user(ONE, dilnoza).unwrap()
    }

    /// The per-item errors of a 400; any other error fails the test.
    fn validation_errors(err: &ApiError) -> &[ValidationError] {
        match err {
            ApiError::Rejected {
                status: 400,
                validation,
                ..
            } => validation,
            other => panic!("{other:?}"),
        }
    }

    fn plain_lead(name: &str) -> ComplexLead {
        ComplexLead {
            name: name.into(),
            price: 150_000,
            pipeline_id: 0,
            status_id: 0,
            request_id: name.into(),
            custom_fields_values: vec![],
            tags: vec![],
            contact: None,
            company: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notes_are_written_in_batches_and_read_back_by_lead_ids() {
        let (env, h, t) = fast().await;
        let api = env.client.api(&h, &t);
        let a = env.sandbox.create_lead(ONE, "A", 1, None).unwrap();
        let b = env.sandbox.create_lead(ONE, "B", 1, None).unwrap();
        let created = api
            .create_lead_notes(&[
                NewNote::common(a, "Order #1: 2 × Tea").with_request_id("ord-1"),
                NewNote::extended_service_message(b, "Marketplace", "Paid by card"),
            ])
            .await
            .unwrap();
        assert_eq!(created.len(), 2);
        assert_eq!(
            (created[0].entity_id, created[0].request_id.as_deref()),
            (Some(a), Some("ord-1"))
        );
        api.create_notes_for_lead(a, &[NewNote::common(0, "second")])
            .await
            .unwrap();

        let common = api
            .lead_notes(&[a, b], Some(amocrm_client::NOTE_COMMON))
            .await
            .unwrap();
        assert_eq!(
            common.iter().map(Note::text).collect::<Vec<_>>(),
            vec!["Order #1: 2 × Tea", "second"]
        );
        assert_eq!(api.lead_notes(&[a, b], None).await.unwrap().len(), 3);
        assert_eq!(
            api.notes_of_lead(b, None).await.unwrap()[0]
                .params
                .service
                .as_deref(),
            Some("Marketplace")
        );
        assert!(
            api.notes_of_lead(b, Some("common"))
                .await
                .unwrap()
                .is_empty(),
            "204 is empty"
        );
        assert!(api.lead_notes(&[], None).await.unwrap().is_empty());

        let too_many: Vec<NewNote> = (0..251)
            .map(|i| NewNote::common(a, format!("n{i}")))
            .collect();
        let before = env.sandbox.request_log().len();
        assert!(matches!(
            api.create_lead_notes(&too_many).await,
            Err(ApiError::Request(_))
        ));
        assert_eq!(env.sandbox.request_log().len(), before, "refused locally");
        api.create_lead_notes(&too_many[..250]).await.unwrap();
        let err = api
            .create_lead_notes(&[NewNote::common(987_654, "ghost").with_request_id("ghost")])
            .await
            .unwrap_err();
        assert!(
            matches!(err, ApiError::Rejected { status: 400, .. }),
            "{err:?}"
        );
        assert_eq!(err.rejected_request_ids(), vec!["ghost"]);
        assert_eq!(env.sandbox.notes(ONE).len(), 253);
    }

    use amocrm_client::Note;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_buyer_is_found_by_phone_digits_and_a_patch_keeps_the_values_it_resends() {
        let (env, h, t) = fast().await;
        let api = env.client.api(&h, &t);
        let ali = env
            .sandbox
            .add_contact(
                ONE,
                ContactSeed {
                    name: "Ali Valiyev".into(),
                    phones: vec!["+998 (90) 123-45-67".into()],
                    emails: vec!["ali@example.uz".into()],
                    ..ContactSeed::default()
                },
            )
            .unwrap();
        let hits = api.search_contacts("901234567", 50).await.unwrap();
        assert_eq!(hits.iter().map(|c| c.id).collect::<Vec<_>>(), vec![ali]);
        let digits = |p: &str| p.chars().filter(char::is_ascii_digit).collect::<String>();
        assert_eq!(
            digits(&hits[0].phones()[0]),
            "998901234567",
            "the caller compares the number itself"
        );
        assert!(
            api.search_contacts("no-such-buyer", 50)
                .await
                .unwrap()
                .is_empty(),
            "204 is empty"
        );
        assert!(
            matches!(
                api.search_contacts("ali", 251).await,
                Ok(ref found) if found.len() == 1
            ),
            "the limit is clamped to 250"
        );

        // The PATCH rule: a field sent replaces its whole list.
        let found = api.get_contact(ali).await.unwrap().unwrap();
        let add = ContactUpdate::adding(&found, "PHONE", "+998935554433", "MOB").unwrap();
        let updated = api.update_contacts(&[add]).await.unwrap();
        assert_eq!(updated[0].id, ali);
        let after = api.get_contact(ali).await.unwrap().unwrap();
        assert_eq!(
            after.phones(),
            vec!["+998 (90) 123-45-67".to_owned(), "+998935554433".to_owned()]
        );
        assert!(ContactUpdate::adding(&after, "PHONE", "+998935554433", "MOB").is_none());
        let naive = ContactUpdate {
            id: ali,
            custom_fields_values: vec![FieldValue::by_code("PHONE", "+998977777777", "WORK")],
            ..ContactUpdate::default()
        };
        api.update_contacts(&[naive]).await.unwrap();
        let replaced = api.get_contact(ali).await.unwrap().unwrap();
        assert_eq!(
            replaced.phones(),
            vec!["+998977777777".to_owned()],
            "the old phones are gone"
        );
        assert_eq!(
            replaced.emails(),
            vec!["ali@example.uz".to_owned()],
            "fields not sent stay"
        );
        let err = api
            .update_contacts(&[ContactUpdate {
                id: 1,
                name: Some("x".into()),
                ..ContactUpdate::default()
            }])
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Rejected { status: 400, .. }));
        assert!(api.get_contact(1).await.unwrap().is_none());

        let created = api
            .create_contacts(&[ContactCreate {
                request_id: Some("c1".into()),
                ..ContactCreate::from(&NewContact {
                    name: "Vali".into(),
                    phone: Some("+998911112233".into()),
                    email: None,
                })
            }])
            .await
            .unwrap();
        assert_eq!(created[0].request_id.as_deref(), Some("c1"));
        for i in 0..3 {
            env.sandbox
                .add_contact(
                    ONE,
                    ContactSeed {
                        name: format!("Buyer {i}"),
                        ..ContactSeed::default()
                    },
                )
                .unwrap();
        }
        let first = api.contacts_page(1, 2).await.unwrap();
        assert!(first.has_next && first.contacts.len() == 2);
        let last = api.contacts_page(3, 2).await.unwrap();
        assert!(!last.has_next && last.contacts.len() == 1);
        assert!(api.contacts_page(4, 2).await.unwrap().contacts.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn complex_attaches_an_existing_contact_and_company_by_id_with_responsible_users() {
        let (env, h, t) = fast().await;
        let api = env.client.api(&h, &t);
        let (pid, stage) = first_stage(&api).await;
        let manager = add_manager(&env).id;
        let ali = env
            .sandbox
            .add_contact(
                ONE,
                ContactSeed {
                    name: "Ali".into(),
                    ..ContactSeed::default()
                },
            )
            .unwrap();
        let first = ComplexLead {
            pipeline_id: pid,
            status_id: stage,
            company: Some(amocrm_client::NewCompany {
                name: "Ali LLC".into(),
            }),
            ..plain_lead("o1")
        };
        let mut item = ComplexLeadItem::from(first);
        item.contact_id = Some(ali);
        item.responsible_user_id = Some(manager);
        let r = api.leads_complex_items(&[item]).await.unwrap();
        assert_eq!(r[0].contact_id, Some(ali));
        let company = r[0].company_id.unwrap();
        let lead = env.sandbox.lead(ONE, r[0].id).unwrap();
        assert_eq!(lead.responsible_user_id, manager);
        assert_eq!(env.sandbox.contacts(ONE).len(), 1, "no contact created");

        let mut again = ComplexLeadItem::from(ComplexLead {
            pipeline_id: pid,
            status_id: stage,
            ..plain_lead("o2")
        });
        again.contact_id = Some(ali);
        again.company_id = Some(company);
        assert_eq!(
            api.leads_complex_items(&[again]).await.unwrap()[0].company_id,
            Some(company)
        );
        assert_eq!(
            api.get_company(company).await.unwrap().unwrap().name,
            "Ali LLC"
        );
        assert_eq!(
            api.search_companies("ali llc").await.unwrap()[0].id,
            company
        );
        assert!(api.search_companies("nothing").await.unwrap().is_empty());
        assert_eq!(
            api.get_contact(ali)
                .await
                .unwrap()
                .unwrap()
                .lead_ids()
                .len(),
            2
        );

        let mut ghost = ComplexLeadItem::from(ComplexLead {
            pipeline_id: pid,
            status_id: stage,
            contact: Some(NewContact {
                name: "X".into(),
                phone: None,
                email: None,
            }),
            ..plain_lead("o3")
        });
        ghost.contact_responsible_user_id = Some(42);
        let err = api.leads_complex_items(&[ghost]).await.unwrap_err();
        let validation = validation_errors(&err);
        assert_eq!(
            validation[0].errors[0].path,
            "_embedded.contacts.0.responsible_user_id"
        );
        assert!(validation[0].errors[0].detail.contains("42"));
        let mut missing = ComplexLeadItem::from(ComplexLead {
            pipeline_id: pid,
            status_id: stage,
            ..plain_lead("o4")
        });
        missing.contact_id = Some(999);
        let err = api.leads_complex_items(&[missing]).await.unwrap_err();
        assert_eq!(err.rejected_request_ids(), vec!["o4"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn products_are_found_by_type_linked_with_quantities_and_verified() {
        let (env, h, t) = fast().await;
        let api = env.client.api(&h, &t);
        assert!(api.catalogs().await.unwrap().is_empty(), "204 is empty");
        assert!(api.products_catalog().await.unwrap().is_none());
        env.sandbox
            .add_catalog(ONE, "Прайс-лист", "regular")
            .unwrap();
        env.sandbox.enable_products(ONE, None).unwrap();
        let catalogs = api.catalogs().await.unwrap();
        assert_eq!(catalogs.len(), 2);
        let products = api.products_catalog().await.unwrap().unwrap();
        assert_eq!(products.name, "Товары");
        assert_ne!(
            catalogs[0].id, products.id,
            "the first list is not the products list"
        );

        let news: Vec<NewCatalogElement> = (0..3)
            .map(|i| {
                NewCatalogElement::product(
                    format!("Tea {i}"),
                    Some(&format!("SKU-{i}")),
                    Some(15_000.0),
                    Some("100 g"),
                )
                .with_request_id(format!("p{i}"))
            })
            .collect();
        let made = api
            .create_catalog_elements(products.id, &news)
            .await
            .unwrap();
        assert_eq!(
            made.iter()
                .map(|e| e.request_id.clone().unwrap())
                .collect::<Vec<_>>(),
            vec!["p0", "p1", "p2"]
        );
        assert_eq!(made[1].sku().as_deref(), Some("SKU-1"));
        let hits = api
            .search_catalog_elements(products.id, "sku-2", 50)
            .await
            .unwrap();
        assert_eq!((hits.len(), hits[0].price()), (1, Some(15_000.0)));
        assert!(
            api.search_catalog_elements(products.id, "coffee", 50)
                .await
                .unwrap()
                .is_empty()
        );
        let many: Vec<NewCatalogElement> = (0..251)
            .map(|i| NewCatalogElement::product(format!("x{i}"), None, None, None))
            .collect();
        assert!(matches!(
            api.create_catalog_elements(products.id, &many).await,
            Err(ApiError::Request(_))
        ));

        let lead = env.sandbox.create_lead(ONE, "Order", 45_000, None).unwrap();
        let links = vec![
            NewLink::product(lead, made[0].id, products.id, 2.0),
            NewLink::product(lead, made[1].id, products.id, 1.0),
        ];
        let answered = api.link_leads(&links).await.unwrap();
        assert_eq!(answered.len(), 2);
        let relink = NewLink::product(lead, made[0].id, products.id, 5.0);
        api.link_leads(std::slice::from_ref(&relink)).await.unwrap();
        let read = api.lead_links(lead).await.unwrap();
        assert_eq!(read.len(), 2, "linking again updates, it does not add");
        assert!(unconfirmed_links(&[relink.clone(), links[1].clone()], &read).is_empty());
        assert_eq!(
            unconfirmed_links(&links[..1], &read),
            links[..1].to_vec(),
            "the quantity changed to 5"
        );
        let with = api.leads_catalog_elements(&[lead, 987_654]).await.unwrap();
        assert_eq!(with.len(), 1);
        assert_eq!(with[0].lead_id, lead);
        let q: Vec<(u64, Option<f64>)> = with[0]
            .elements
            .iter()
            .map(|e| (e.id, e.quantity))
            .collect();
        assert_eq!(q, vec![(made[0].id, Some(5.0)), (made[1].id, Some(1.0))]);

        // amoCRM lost links once (100 sent, 91 linked): the answer says all, the read-back shows the truth.
        env.sandbox
            .set_faults(ONE, faults(|f| f.drop_links_next = 1));
        let other = env.sandbox.create_lead(ONE, "Other", 1, None).unwrap();
        let batch: Vec<NewLink> = made
            .iter()
            .map(|e| NewLink::product(other, e.id, products.id, 1.0))
            .collect();
        assert_eq!(api.link_leads(&batch).await.unwrap().len(), 3);
        let missing = unconfirmed_links(&batch, &api.lead_links(other).await.unwrap());
        assert_eq!(missing.len(), 1);
        api.link_leads(&missing).await.unwrap();
        assert!(unconfirmed_links(&batch, &api.lead_links(other).await.unwrap()).is_empty());
        assert!(api.lead_links(987_654).await.unwrap().is_empty());
        api.unlink_leads(&batch[..1]).await.unwrap();
        assert_eq!(api.lead_links(other).await.unwrap().len(), 2);
        let too_many: Vec<NewLink> = (0..251)
            .map(|i| NewLink::product(lead, i, products.id, 1.0))
            .collect();
        assert!(matches!(
            api.link_leads(&too_many).await,
            Err(ApiError::Request(_))
        ));
        let c = env.sandbox.counters(ONE).endpoints;
        assert_eq!((c.links_create, c.links_read, c.elements_create), (5, 5, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_an_admin_reads_users_and_tasks_are_created_and_read_per_lead() {
        let (env, h, t) = fast().await;
        let api = env.client.api(&h, &t);
        let manager = add_manager(&env);
        env.sandbox.set_user_active(ONE, manager.id, false).unwrap();
        let users = api.users().await.unwrap();
        assert_eq!(users.len(), 2);
        assert!(users[0].is_admin() && users[0].is_active());
        assert_eq!(
            (users[1].email.as_str(), users[1].is_active()),
            ("d@shop.uz", false)
        );
        env.sandbox.set_connecting_user_admin(ONE, false).unwrap();
        let err = api.users().await.unwrap_err();
        assert!(err.is_forbidden(), "{err:?}");
        env.sandbox.set_connecting_user_admin(ONE, true).unwrap();

        let lead = env.sandbox.create_lead(ONE, "Order", 1, None).unwrap();
        let mut task = NewTask::for_lead(lead, "Call the buyer about delivery", 1_900_000_000);
        task.request_id = Some("t1".into());
        let created = api.create_tasks(&[task]).await.unwrap();
        assert_eq!(created[0].request_id.as_deref(), Some("t1"));
        let read = api.lead_tasks(&[lead]).await.unwrap();
        assert_eq!(
            (read.len(), read[0].text.as_str()),
            (1, "Call the buyer about delivery")
        );
        assert!(
            api.lead_tasks(&[lead + 1]).await.unwrap().is_empty(),
            "204 is empty"
        );
        let mut inactive = NewTask::for_lead(lead, "x", 1);
        inactive.responsible_user_id = Some(manager.id);
        let err = api
            .create_tasks(&[inactive, NewTask::for_lead(lead, "", 1)])
            .await
            .unwrap_err();
        let validation = validation_errors(&err);
        let paths: Vec<&str> = validation
            .iter()
            .map(|v| v.errors[0].path.as_str())
            .collect();
        assert_eq!(paths, vec!["responsible_user_id", "text"]);
        assert!(
            validation[0].errors[0]
                .detail
                .contains(&manager.id.to_string())
        );
    }

    fn form(
        request_id: &str,
        pipeline_id: Option<u64>,
        contact: Option<EmbeddedContact>,
    ) -> NewUnsortedForm {
        NewUnsortedForm {
            request_id: request_id.into(),
            source_name: "Marketplace".into(),
            source_uid: format!("order-{request_id}"),
            pipeline_id,
            created_at: Some(1_732_260_000),
            metadata: FormMetadata {
                form_id: "checkout".into(),
                form_name: "Checkout".into(),
                form_page: "https://shop.example/checkout".into(),
                form_sent_at: 1_732_260_000,
                referer: None,
                ip: None,
            },
            lead: UnsortedLead {
                name: format!("Order {request_id}"),
                price: Some(150_000),
                ..UnsortedLead::default()
            },
            contact,
            company: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unsorted_requests_are_accepted_or_declined() {
        let (env, h, t) = fast().await;
        let api = env.client.api(&h, &t);
        let p = api
            .create_pipeline(&NewPipeline {
                name: "Marketplace".into(),
                sort: None,
                statuses: vec![
                    NewStatus::new("New", 10, "#fffeb2"),
                    NewStatus::new("Paid", 20, "#87f2c0"),
                ],
            })
            .await
            .unwrap();
        let paid = p.status_named("Paid").unwrap().id;
        let err = api
            .create_unsorted_forms(&[form("u0", Some(p.id), None)])
            .await
            .unwrap_err();
        assert!(
            matches!(err, ApiError::Rejected { status: 400, .. }),
            "incoming leads are off: {err:?}"
        );
        api.set_pipeline_unsorted(p.id, true).await.unwrap();
        let buyer = EmbeddedContact::New(NewContact {
            name: "Zarina".into(),
            phone: Some("+998901112233".into()),
            email: None,
        });
        let created = api
            .create_unsorted_forms(&[
                form("u1", Some(p.id), Some(buyer)),
                form("u2", Some(p.id), None),
            ])
            .await
            .unwrap();
        assert_eq!(created.len(), 2);
        assert_eq!(created[0].request_id.as_deref(), Some("u1"));
        let lead = created[0].lead_id().unwrap();
        let incoming = p.statuses.iter().find(|s| s.type_ == 1).unwrap().id;
        assert_eq!(
            api.get_lead(lead).await.unwrap().unwrap().status_id,
            Some(incoming)
        );
        assert!(
            api.search_contacts("Zarina", 10).await.unwrap().is_empty(),
            "hidden until accepted"
        );
        let pending = api.get_unsorted(&created[0].uid).await.unwrap().unwrap();
        assert_eq!(
            (pending.lead_id(), pending.source_uid.as_deref()),
            (Some(lead), Some("order-u1"))
        );

        let accepted = api
            .accept_unsorted(&created[0].uid, None, Some(paid))
            .await
            .unwrap();
        assert_eq!(accepted.lead_id(), Some(lead));
        assert_eq!(
            api.get_lead(lead).await.unwrap().unwrap().status_id,
            Some(paid)
        );
        assert!(api.get_unsorted(&created[0].uid).await.unwrap().is_none());
        assert_eq!(api.search_contacts("Zarina", 10).await.unwrap().len(), 1);
        let again = api
            .accept_unsorted(&created[0].uid, None, None)
            .await
            .unwrap_err();
        assert!(
            matches!(again, ApiError::Rejected { status: 400, .. }),
            "{again:?}"
        );

        let declined = api.decline_unsorted(&created[1].uid, None).await.unwrap();
        let lost = api
            .get_lead(declined.lead_id().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lost.status_id, Some(Status::LOST));
        assert!(matches!(
            api.accept_unsorted("../x", None, None).await,
            Err(ApiError::Request(_))
        ));

        let (main, stage) = first_stage(&api).await;
        let mut item = ComplexLeadItem::from(ComplexLead {
            pipeline_id: main,
            status_id: stage,
            ..plain_lead("o9")
        });
        item.unsorted = Some(form("x", None, None).metadata);
        let r = api.leads_complex_items(&[item]).await.unwrap();
        let entry = env
            .sandbox
            .unsorted(ONE)
            .into_iter()
            .find(|u| u.lead_id == r[0].id)
            .unwrap();
        assert_eq!(entry.state, amocrm_sandbox::UnsortedState::Pending);
        api.accept_unsorted(&entry.uid, None, None).await.unwrap();
        assert_eq!(
            api.get_lead(r[0].id).await.unwrap().unwrap().status_id,
            Some(stage)
        );
        let c = env.sandbox.counters(ONE).endpoints;
        assert_eq!(
            (c.unsorted_create, c.unsorted_accept, c.unsorted_decline),
            (2, 3, 1)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_account_is_found_at_the_api_host_its_token_names() {
    let env = env().await;
    let account_id = env.sandbox.add_account(ONE);
    let pair = env.sandbox.issue_tokens(CLIENT_ID, ONE);
    let claims = amocrm_client::TokenClaims::from_jwt(&pair.access_token);
    let refresh = SecretString::from(pair.refresh_token.clone());
    env.sandbox
        .rename_account(ONE, "sellerrenamed.amocrm.ru", 401)
        .unwrap();

    let refused = env.client.refresh(&host(ONE), &refresh).await.unwrap_err();
    assert!(
        matches!(refused, OAuthError::Rejected { status: 401, .. }),
        "{refused:?}"
    );
    let api_host = amocrm_client::ApiHost::parse(
        claims.api_domain.as_deref().unwrap(),
        &AllowedDomains::default(),
    )
    .unwrap();
    let found = env
        .client
        .account_subdomain(&api_host, &host(ONE), &refresh)
        .await
        .unwrap();
    assert_eq!(found.id, account_id);
    assert_eq!(found.subdomain, "sellerrenamed");
    assert_eq!(found.domain, "sellerrenamed.amocrm.ru");
    let set = env
        .client
        .refresh(&host(&found.domain), &refresh)
        .await
        .unwrap();
    assert!(!set.access_token.expose_secret().is_empty());

    let stale = env
        .client
        .account_subdomain(&api_host, &host(ONE), &SecretString::from("def50200stale"))
        .await
        .unwrap_err();
    assert!(matches!(stale, ApiError::Unauthorized), "{stale:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_refresh_token_goes_to_an_api_host_of_another_platform() {
    let env = env().await;
    let mut cfg = config(&env.sandbox);
    cfg.allowed_domains = AllowedDomains::parse("amocrm.ru").unwrap();
    let amocrm_only = AmoClient::new(cfg).unwrap();
    let kommo_api =
        amocrm_client::ApiHost::parse("api-c.kommo.com", &AllowedDomains::default()).unwrap();
    env.sandbox.clear_log();
    let err = amocrm_only
        .account_subdomain(&kommo_api, &host(ONE), &SecretString::from("def50200x"))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Request(_)), "{err:?}");
    assert!(env.sandbox.request_log().is_empty(), "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_and_blocked_accounts_are_their_own_error_classes() {
    let env = env().await;
    let t = token(&env, ONE);
    env.sandbox.require_payment(ONE).unwrap();
    let err = get_account(&env.client, &host(ONE), &t).await.unwrap_err();
    assert!(matches!(err, ApiError::PaymentRequired), "{err:?}");
    env.sandbox.block(ONE).unwrap();
    let err = get_account(&env.client, &host(ONE), &t).await.unwrap_err();
    assert!(err.is_forbidden(), "{err:?}");
    assert_eq!(err.status(), Some(403));
    env.sandbox.clear_block(ONE).unwrap();
    get_account(&env.client, &host(ONE), &t).await.unwrap();
}
