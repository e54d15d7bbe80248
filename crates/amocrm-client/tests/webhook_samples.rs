//! Webhook parsing against every real amoCRM capture in `fixtures/` (public captures,
//! provenance in `fixtures/SOURCES.md`), plus a seeded fuzz run: random, truncated, mutated and hostile bodies
//! must give `Ok` or `Err`, never a panic.
#![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::time::{Duration, Instant};

use amocrm_client::webhook::{self, LeadAction, WebhookParseError};
use amocrm_sandbox::form;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn every_captured_webhook_sample_is_accepted() {
    let dir = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !(name.starts_with("webhook-") && name.ends_with(".txt")) {
            continue;
        }
        let mut body = fixture(&name);
        if name.contains("unescaped") {
            body = form::percent_encode(&body);
        }
        let parsed = webhook::parse(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            !parsed.events.is_empty() || !parsed.other.is_empty(),
            "{name} produced no event"
        );
        assert!(parsed.subdomain.is_some(), "{name} has account[subdomain]");
        checked += 1;
    }
    assert_eq!(checked, 11, "all webhook-*.txt captures checked");
}

#[test]
fn a_2016_status_change_capture_is_read_field_by_field() {
    let p = webhook::parse(&fixture("webhook-status-lead-1.txt")).unwrap();
    assert_eq!(p.subdomain.as_deref(), Some("test000002"));
    assert_eq!(p.account_id, None);
    let e = &p.events[0];
    assert_eq!(e.action, LeadAction::Status);
    assert_eq!(e.lead_id, 31_926_520);
    assert_eq!(
        (e.status_id, e.old_status_id, e.pipeline_id),
        (Some(10_216_994), Some(10_216_995), Some(2116))
    );
    assert_eq!(e.old_pipeline_id, None);
    assert_eq!(e.price, Some(1000));
    assert_eq!(e.name.as_deref(), Some("Some test lead"));
    assert_eq!(e.last_modified, Some(1_456_820_780));
    assert_eq!(e.account_id, Some(10_216_991));
    assert_eq!(
        e.custom_fields,
        vec![(1_119_321, vec!["some text".to_owned()])]
    );
}

#[test]
fn the_won_capture_with_cyrillic_tags_and_bare_date_values_is_read() {
    let p = webhook::parse(&form::percent_encode(&fixture(
        "webhook-status-lead-2-won-unescaped.txt",
    )))
    .unwrap();
    assert_eq!(p.subdomain.as_deref(), Some("apfitness"));
    let e = &p.events[0];
    assert_eq!(
        (e.lead_id, e.status_id, e.old_status_id),
        (10_701_093, Some(142), Some(20_067_736))
    );
    assert_eq!((e.pipeline_id, e.price), (Some(9_217_056), Some(22_500)));
    assert_eq!(
        e.name.as_deref(),
        Some("Семинар: Пропитание в фитнесе на результат")
    );
    assert_eq!(e.custom_fields.len(), 8);
    assert!(
        e.custom_fields
            .contains(&(72_333, vec!["1542067200".to_owned()]))
    );
    let link = e
        .custom_fields
        .iter()
        .find(|(id, _)| *id == 566_891)
        .unwrap();
    assert!(
        link.1[0].starts_with("https://forms.amocrm.ru/tvzdtx?dp=Q1zaSQHqO+hHArUG"),
        "{:?}",
        link.1
    );
}

#[test]
fn the_digital_pipeline_capture_carries_account_id_and_old_pipeline() {
    let p = webhook::parse(&fixture("webhook-status-lead-3-dp-format.txt")).unwrap();
    assert_eq!(
        (p.account_id, p.subdomain.as_deref()),
        (Some(30_307_558), Some("anyor"))
    );
    let e = &p.events[0];
    assert_eq!(
        (e.lead_id, e.status_id, e.old_status_id),
        (10_754_147, Some(54_423_922), Some(54_435_014))
    );
    assert_eq!(
        (e.pipeline_id, e.old_pipeline_id),
        (Some(6_344_290), Some(6_344_290))
    );
    assert_eq!((e.price, e.name.as_ref()), (None, None));
}

#[test]
fn adds_updates_deletes_and_responsible_changes_are_classified() {
    let add = webhook::parse(&fixture("webhook-add-lead-1.txt")).unwrap();
    assert_eq!(
        (add.events[0].action.clone(), add.events[0].lead_id),
        (LeadAction::Add, 31_926_529)
    );
    assert_eq!(add.events[0].price, Some(24_234));
    let upd = webhook::parse(&fixture("webhook-update-lead-1.txt")).unwrap();
    assert_eq!(upd.events[0].action, LeadAction::Update);
    let resp = webhook::parse(&fixture("webhook-responsible-lead-1.txt")).unwrap();
    assert_eq!(resp.events[0].action, LeadAction::Responsible);
    assert_eq!(
        resp.events[0].price, None,
        "price= is empty in this capture"
    );
    let del = webhook::parse(&fixture("webhook-delete-lead-1.txt")).unwrap();
    assert_eq!(
        (del.events[0].action.clone(), del.events[0].lead_id),
        (LeadAction::Delete, 52_379_505)
    );
    assert_eq!(del.events[0].status_id, None);

    let company = webhook::parse(&fixture("webhook-add-company-1.txt")).unwrap();
    assert!(company.events.is_empty());
    assert_eq!(
        (company.other[0].entity.as_str(), company.other[0].id),
        ("company", Some(1110))
    );
    let contact = webhook::parse(&fixture("webhook-add-contact-1.txt")).unwrap();
    assert_eq!(
        (
            contact.other[0].entity.as_str(),
            contact.other[0].action.as_str()
        ),
        ("contact", "add")
    );
    let gone = webhook::parse(&fixture("webhook-delete-company-1.txt")).unwrap();
    assert_eq!(
        (gone.other[0].entity.as_str(), gone.other[0].action.as_str()),
        ("company", "delete")
    );
    let big = webhook::parse(&fixture("webhook-update-contact-2.txt")).unwrap();
    assert_eq!(
        (big.other[0].entity.as_str(), big.other[0].id),
        ("contact", Some(22_309_159))
    );
}

#[test]
fn kommo_documentation_examples_are_accepted_once_form_encoded() {
    let status = form::from_json(
        &serde_json::from_slice(&fixture("webhook-status-lead-kommo-docs-decoded.json")).unwrap(),
    );
    let p = webhook::parse(status.as_bytes()).unwrap();
    let e = &p.events[0];
    assert_eq!(
        (e.lead_id, e.status_id, e.old_status_id),
        (15_318_175, Some(67_548_619), Some(67_548_607))
    );
    assert_eq!(e.name.as_deref(), Some(""));
    assert!(
        e.custom_fields
            .contains(&(1_246_491, vec!["1725915600".to_owned()]))
    );
    assert!(e.custom_fields.contains(&(1_246_489, vec!["2".to_owned()])));

    let note = form::from_json(
        &serde_json::from_slice(&fixture("webhook-note-lead-kommo-docs-decoded.json")).unwrap(),
    );
    let p = webhook::parse(note.as_bytes()).unwrap();
    assert_eq!(
        (p.events[0].action.clone(), p.events[0].lead_id),
        (LeadAction::Note, 15_320_411)
    );

    let contact = form::from_json(
        &serde_json::from_slice(&fixture("webhook-add-contact-kommo-docs-decoded.json")).unwrap(),
    );
    let p = webhook::parse(contact.as_bytes()).unwrap();
    assert_eq!(
        (p.other[0].entity.as_str(), p.other[0].id),
        ("contact", Some(17_611_273))
    );
}

/// Every sample as wire bytes.
fn all_samples() -> Vec<Vec<u8>> {
    let dir = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.starts_with("webhook-") && name.ends_with(".txt") {
            let body = fixture(&name);
            out.push(if name.contains("unescaped") {
                form::percent_encode(&body)
            } else {
                body
            });
        }
    }
    out
}

#[test]
fn random_truncated_and_mutated_bodies_never_panic() {
    let mut rng = StdRng::seed_from_u64(0xA30C_2026);
    let samples = all_samples();
    let mut outcomes = (0usize, 0usize);
    let mut tally = |r: Result<webhook::WebhookPayload, WebhookParseError>| match r {
        Ok(_) => outcomes.0 += 1,
        Err(e) => {
            assert!(e.to_string().len() < 400, "error messages stay short");
            outcomes.1 += 1;
        }
    };
    // Every prefix of every sample.
    for s in &samples {
        for cut in (0..s.len()).step_by(7) {
            tally(webhook::parse(&s[..cut]));
        }
    }
    // Random bytes, and random bytes from the form alphabet.
    const ALPHABET: &[u8] = b"[]=&%+0123456789abcdefleadsstatusid_account";
    for _ in 0..3000 {
        let len = rng.random_range(0..600);
        let bytes: Vec<u8> = if rng.random_bool(0.5) {
            (0..len).map(|_| rng.random::<u8>()).collect()
        } else {
            (0..len)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
                .collect()
        };
        tally(webhook::parse(&bytes));
    }
    // Samples with random bytes overwritten by structural characters.
    for _ in 0..3000 {
        let mut s = samples[rng.random_range(0..samples.len())].clone();
        for _ in 0..rng.random_range(1..8) {
            let at = rng.random_range(0..s.len());
            s[at] = ALPHABET[rng.random_range(0..ALPHABET.len())];
        }
        tally(webhook::parse(&s));
    }
    assert!(
        outcomes.0 > 0 && outcomes.1 > 0,
        "both outcomes seen: {outcomes:?}"
    );
}

#[test]
fn hostile_shapes_are_bounded_in_depth_size_and_time() {
    let started = Instant::now();
    let deep = format!("leads{}=1", "[0]".repeat(5000));
    assert!(
        webhook::parse(deep.as_bytes()).is_err(),
        "nesting past the depth limit is not a lead"
    );
    let deep_map = format!("account{}=1", "[x]".repeat(5000));
    assert_eq!(
        webhook::parse(deep_map.as_bytes()),
        Err(WebhookParseError::NotAWebhook)
    );
    let huge_index =
        "leads[status][18446744073709551616][id]=1&leads[status][99999999999][id]=2&account[id]=1";
    let p = webhook::parse(huge_index.as_bytes()).unwrap();
    let mut ids: Vec<u64> = p.events.iter().map(|e| e.lead_id).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![1, 2],
        "sparse and out-of-range indices are kept as keys"
    );
    let many: String = (0..30_000)
        .map(|i| format!("leads[add][{i}][id]={}&", i + 1))
        .collect();
    assert!(many.len() < webhook::MAX_BODY_BYTES);
    let p = webhook::parse(many.as_bytes()).unwrap();
    assert_eq!(p.events.len(), 30_000);
    assert_eq!(
        p.events.last().map(|e| e.lead_id),
        Some(30_000),
        "numeric order kept"
    );
    assert!(matches!(
        webhook::parse(b"leads[add][][id]=1&leads[add][][id]=2"),
        Err(WebhookParseError::Malformed(_))
    ));
    let too_big = vec![b'a'; webhook::MAX_BODY_BYTES + 1];
    assert_eq!(
        webhook::parse(&too_big),
        Err(WebhookParseError::TooLarge {
            limit: webhook::MAX_BODY_BYTES
        })
    );
    let bad_utf8 = b"leads[status][0][id]=1&leads[status][0][name]=\xff\xfe%ff%fe&account[id]=1";
    // Invalid UTF-8 in a value is refused or replaced, never a panic; the id is still read when accepted.
    if let Ok(p) = webhook::parse(bad_utf8) {
        assert_eq!(p.events[0].lead_id, 1);
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
