//! Finding the buyer an order is for in the seller's amoCRM, before its lead is sent.
//!
//! By the seller's match mode, the buyer's normalised phone, then email, is looked up in the buyer index (filled
//! when the seller connected, kept fresh by contact webhooks and every push); a key the index does not know is
//! searched in amoCRM (`query`) and the hit checked on its own `PHONE`/`EMAIL` values. A buyer still unknown
//! gets a new contact with the order's lead — and the order claims the buyer's keys first, so other orders of
//! that buyer wait for its contact instead of making another one. Companies the same, by exact name.
//!
//! A found contact is never overwritten: only a phone or email it lacks is added later, as a lead step.

use std::collections::HashMap;

use amocrm_client::{Company, Contact};

use crate::domain::buyer::{self, BuyerKey, ContactMatch};
use crate::domain::order::{Customer, OrderDraft};
use crate::domain::settings::{MatchMode, ResponsibleMode, SellerSettings};
use crate::services::Context;
use crate::services::tokens::{self, TokenError};
use crate::storage::StorageError;
use crate::storage::buyers::{Claim, IndexRow};
use crate::storage::orders::{BuyerResolution, ClaimedOrder};

/// What became of one order's buyer in this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ready(BuyerResolution),
    /// Another order is making this buyer's contact (or company): wait for its lead.
    Wait,
    /// The turn's call budget ran out before this order's searches.
    Later,
}

/// Why resolving stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What one round of resolution may spend and has spent.
pub struct Budget {
    pub calls_left: u32,
    pub calls_made: u32,
}

impl Budget {
    fn take(&mut self) -> bool {
        if self.calls_left == 0 {
            return false;
        }
        self.calls_left -= 1;
        self.calls_made += 1;
        true
    }
}

/// The index keys an order's buyer is matched by, under the seller's settings.
pub fn order_keys(customer: &Customer, settings: &SellerSettings) -> Vec<BuyerKey> {
    buyer::keys(
        customer.phone.as_deref(),
        customer.email.as_deref(),
        settings.contacts.match_mode,
        &settings.contacts.default_country,
    )
}

fn draft(o: &ClaimedOrder) -> Option<OrderDraft> {
    serde_json::from_str(&o.row.body_json).ok()
}

/// Resolves the buyers of a claimed batch, in order. Orders already resolved by an earlier attempt keep
/// what they had. Stops at the first amoCRM failure (the caller puts the whole batch back).
pub async fn resolve(
    state: &Context,
    seller_id: &str,
    settings: &SellerSettings,
    batch: &[ClaimedOrder],
    budget: &mut Budget,
) -> Result<Vec<Outcome>, ResolveError> {
    let mut out = Vec::with_capacity(batch.len());
    let mut fresh = Vec::new();
    for o in batch {
        if o.row.buyer.buyer_resolved {
            out.push(Outcome::Ready(o.row.buyer.clone()));
            continue;
        }
        let Some(d) = draft(o) else {
            // An unreadable body cannot be matched: its lead (built from the same body) will fail.
            out.push(Outcome::Ready(BuyerResolution::new_buyer()));
            continue;
        };
        let outcome = resolve_one(state, seller_id, settings, &o.row.id, &d, budget).await?;
        if let Outcome::Ready(r) = &outcome {
            fresh.push((o.row.id.clone(), r.clone()));
        }
        out.push(outcome);
    }
    if !fresh.is_empty() {
        let round_robin = (settings.responsible.mode == ResponsibleMode::RoundRobin)
            .then(|| settings.responsible.user_ids.clone());
        let stored = state
            .db
            .orders()
            .save_buyers(seller_id, &state.settings.instance_id, fresh, round_robin)
            .await?;
        let by_id: HashMap<String, BuyerResolution> = stored.into_iter().collect();
        for (o, outcome) in batch.iter().zip(out.iter_mut()) {
            if let (Some(r), Outcome::Ready(cur)) = (by_id.get(&o.row.id), outcome) {
                *cur = r.clone();
            }
        }
    }
    Ok(out)
}

impl BuyerResolution {
    /// A buyer that gets a new contact (and company) with the lead.
    pub fn new_buyer() -> Self {
        Self {
            buyer_resolved: true,
            contact_matched: Some(ContactMatch::None),
            ..Self::default()
        }
    }
}

async fn resolve_one(
    state: &Context,
    seller_id: &str,
    settings: &SellerSettings,
    order_id: &str,
    d: &OrderDraft,
    budget: &mut Budget,
) -> Result<Outcome, ResolveError> {
    let keys = order_keys(&d.customer, settings);
    let mut r = BuyerResolution::new_buyer();
    match find_contact(state, seller_id, settings, order_id, &keys, budget).await? {
        Found::Known(row, key) => {
            r.buyer_contact_id = row.contact_id;
            r.contact_matched = Some(key.matched());
            if settings.responsible.mode == ResponsibleMode::ContactOwner {
                r.responsible_user_id = row.responsible_user_id;
            }
        }
        Found::Create => {}
        Found::Wait => return Ok(Outcome::Wait),
        Found::Later => return Ok(Outcome::Later),
    }
    if let Some(name) = d.customer.company.as_deref()
        && settings.contacts.match_mode != MatchMode::Off
    {
        match find_company(state, seller_id, order_id, name, budget).await? {
            Found::Known(row, _) => r.buyer_company_id = row.contact_id,
            Found::Create => {}
            Found::Wait => return Ok(Outcome::Wait),
            Found::Later => return Ok(Outcome::Later),
        }
    }
    Ok(Outcome::Ready(r))
}

enum Found {
    /// An existing contact (or company), by the key that found it.
    Known(IndexRow, BuyerKey),
    /// A new one is made with this order's lead (its keys are this order's now).
    Create,
    Wait,
    Later,
}

/// Index first, then amoCRM's search for the keys the index does not know, then a claim for creation.
async fn find_contact(
    state: &Context,
    seller_id: &str,
    settings: &SellerSettings,
    order_id: &str,
    keys: &[BuyerKey],
    budget: &mut Budget,
) -> Result<Found, ResolveError> {
    if keys.is_empty() {
        return Ok(Found::Create);
    }
    let index = state
        .db
        .buyers()
        .lookup(seller_id, keys.iter().map(BuyerKey::as_index).collect())
        .await?;
    for key in keys {
        if let Some(row) = index.get(&key.as_index())
            && row.contact_id.is_some()
        {
            return Ok(Found::Known(row.clone(), key.clone()));
        }
    }
    let held_by_other = index
        .values()
        .any(|r| r.contact_id.is_none() && r.creator_order.as_deref() != Some(order_id));
    if held_by_other {
        return Ok(Found::Wait);
    }
    let ours = index
        .values()
        .any(|r| r.creator_order.as_deref() == Some(order_id));
    if !ours {
        // Never searched (an earlier attempt of this order would hold the keys): ask amoCRM.
        for key in keys {
            if !budget.take() {
                return Ok(Found::Later);
            }
            if let Some(c) =
                search_contact(state, seller_id, key, &settings.contacts.default_country).await?
            {
                let all = buyer::contact_keys(
                    &c.phones(),
                    &c.emails(),
                    &settings.contacts.default_country,
                );
                let owner = c.responsible_user_id.and_then(|u| i64::try_from(u).ok());
                let id = i64::try_from(c.id).unwrap_or(i64::MAX);
                state
                    .db
                    .buyers()
                    .remember(
                        seller_id,
                        all.iter().map(BuyerKey::as_index).collect(),
                        id,
                        owner,
                    )
                    .await?;
                let row = IndexRow {
                    buyer_key: key.as_index(),
                    contact_id: Some(id),
                    responsible_user_id: owner,
                    creator_order: None,
                };
                return Ok(Found::Known(row, key.clone()));
            }
        }
    }
    claim(
        state,
        seller_id,
        order_id,
        keys.iter().map(BuyerKey::as_index).collect(),
    )
    .await
}

async fn claim(
    state: &Context,
    seller_id: &str,
    order_id: &str,
    keys: Vec<String>,
) -> Result<Found, ResolveError> {
    let first = keys.first().cloned().unwrap_or_default();
    Ok(
        match state.db.buyers().claim(seller_id, keys, order_id).await? {
            Claim::Ours => Found::Create,
            Claim::Held(_) => Found::Wait,
            Claim::Known(row) => {
                let key = BuyerKey::from_index(&row.buyer_key)
                    .or_else(|| BuyerKey::from_index(&first))
                    .unwrap_or(BuyerKey::Email(String::new()));
                Found::Known(row, key)
            }
        },
    )
}

/// The contact whose own `PHONE` (or `EMAIL`) equals the key: amoCRM's `query` matches any field, so every
/// hit is checked.
async fn search_contact(
    state: &Context,
    seller_id: &str,
    key: &BuyerKey,
    country: &str,
) -> Result<Option<Contact>, TokenError> {
    let query = match key {
        BuyerKey::Phone(p) => buyer::search_digits(p),
        BuyerKey::Email(e) => e.clone(),
    };
    let q = &query;
    let hits = tokens::with_api(state, seller_id, |amo| async move {
        amo.api().search_contacts(q, 50).await
    })
    .await?;
    Ok(hits.into_iter().find(|c| match key {
        BuyerKey::Phone(p) => c
            .phones()
            .iter()
            .any(|v| buyer::normalize_phone(v, country).as_deref() == Some(p.as_str())),
        BuyerKey::Email(e) => c
            .emails()
            .iter()
            .any(|v| buyer::normalize_email(v).as_deref() == Some(e.as_str())),
    }))
}

async fn find_company(
    state: &Context,
    seller_id: &str,
    order_id: &str,
    name: &str,
    budget: &mut Budget,
) -> Result<Found, ResolveError> {
    let key = buyer::company_key(name);
    let index = state
        .db
        .buyers()
        .lookup(seller_id, vec![key.clone()])
        .await?;
    let placeholder = BuyerKey::Email(String::new());
    match index.get(&key) {
        Some(row) if row.contact_id.is_some() => return Ok(Found::Known(row.clone(), placeholder)),
        Some(row) if row.creator_order.as_deref() != Some(order_id) => return Ok(Found::Wait),
        Some(_) => return claim(state, seller_id, order_id, vec![key]).await,
        None => {}
    }
    if !budget.take() {
        return Ok(Found::Later);
    }
    let wanted = name.trim();
    let hits: Vec<Company> = tokens::with_api(state, seller_id, |amo| async move {
        amo.api().search_companies(wanted).await
    })
    .await?;
    if let Some(c) = hits.into_iter().find(|c| c.name.trim() == wanted) {
        let id = i64::try_from(c.id).unwrap_or(i64::MAX);
        state
            .db
            .buyers()
            .remember(seller_id, vec![key.clone()], id, None)
            .await?;
        let row = IndexRow {
            buyer_key: key,
            contact_id: Some(id),
            responsible_user_id: None,
            creator_order: None,
        };
        return Ok(Found::Known(row, placeholder));
    }
    claim(state, seller_id, order_id, vec![key]).await
}

/// How one page of the index fill went.
#[derive(Debug)]
pub enum ScanPage {
    /// Nothing to read (finished, or not due).
    Idle,
    /// A page was read and stored; `finished` when it was the last.
    Read { contacts: usize, finished: bool },
    /// amoCRM did not answer usefully; the scan waits (the error says why).
    Failed(TokenError),
}

/// Reads the next page (250 contacts) of the seller's contacts into the buyer index. The page number moves on
/// in the same transaction as the page's contacts, so an interrupted fill resumes where it stopped.
pub async fn scan_page(
    state: &Context,
    seller_id: &str,
    settings: &SellerSettings,
) -> Result<ScanPage, StorageError> {
    let buyers = state.db.buyers();
    let scan = match buyers.scan_of(seller_id).await? {
        Some(s) => s,
        None => {
            buyers.start_scan(seller_id).await?;
            match buyers.scan_of(seller_id).await? {
                Some(s) => s,
                None => return Ok(ScanPage::Idle),
            }
        }
    };
    if scan.finished_at.is_some() || scan.next_attempt_at > crate::storage::now() {
        return Ok(ScanPage::Idle);
    }
    let page = u32::try_from(scan.next_page.max(1)).unwrap_or(1);
    let read = tokens::with_api(state, seller_id, |amo| async move {
        amo.api().contacts_page(page, 250).await
    })
    .await;
    let got = match read {
        Ok(got) => got,
        Err(e) => {
            let wait = 60i64 << scan.attempts.clamp(0, 6);
            let next = crate::storage::now() + chrono::TimeDelta::seconds(wait);
            buyers.scan_failed(seller_id, &e.to_string(), next).await?;
            return Ok(ScanPage::Failed(e));
        }
    };
    let country = &settings.contacts.default_country;
    let entries: Vec<(Vec<String>, i64, Option<i64>)> = got
        .contacts
        .iter()
        .filter_map(|c| {
            let keys = buyer::contact_keys(&c.phones(), &c.emails(), country);
            let owner = c.responsible_user_id.and_then(|u| i64::try_from(u).ok());
            (!keys.is_empty()).then(|| {
                let keys = keys.iter().map(BuyerKey::as_index).collect();
                (keys, i64::try_from(c.id).unwrap_or(i64::MAX), owner)
            })
        })
        .collect();
    let finished = !got.has_next;
    buyers
        .scanned_page(seller_id, scan.next_page, entries, finished)
        .await?;
    Ok(ScanPage::Read {
        contacts: got.contacts.len(),
        finished,
    })
}
