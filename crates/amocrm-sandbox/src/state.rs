//! The sandbox's in-memory world: accounts and their entities, grants and tokens, logs, id sequences.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::config::{Faults, Integration, Rules, WebhookFormat};
use crate::model::{
    Catalog, CatalogElement, Company, Contact, Counters, CustomField, Delivery, EntityLink,
    FieldEnum, Lead, LoggedRequest, Note, Pipeline, Status, Task, UnsortedEntry, User, Webhook,
};

/// Colours amoCRM accepts for non-system statuses (amocrm-api.md §5).
pub const STATUS_COLORS: [&str; 21] = [
    "#fffeb2", "#fffd7f", "#fff000", "#ffeab2", "#ffdc7f", "#ffce5a", "#ffdbdb", "#ffc8c8",
    "#ff8f92", "#d6eaff", "#c1e0ff", "#98cbff", "#ebffb1", "#deff81", "#87f2c0", "#f9deff",
    "#f3beff", "#ccc8f9", "#eb93ff", "#f2f3f4", "#e6e8ea",
];
pub const WON: u64 = 142;
pub const LOST: u64 = 143;
pub const MAX_PIPELINES: usize = 50;
pub const MAX_STATUSES: usize = 100;
pub const MAX_WEBHOOKS: usize = 100;
pub const CODE_TTL_SECS: i64 = 20 * 60;
pub const ACCESS_TTL_SECS: i64 = 86_400;
pub const REFRESH_TTL_SECS: i64 = 90 * 86_400;
/// Caps the in-memory logs so a long benchmark cannot exhaust memory.
pub const LOG_CAP: usize = 2_000_000;

/// Most `leads/complex` arrivals an account keeps until they are taken.
pub const ARRIVALS_CAP: usize = 100_000;

/// Monotonic id sequences, one per entity kind, in ranges that look like amoCRM's.
#[derive(Debug)]
pub struct Ids {
    pub account: u64,
    pub user: u64,
    pub pipeline: u64,
    pub status: u64,
    pub lead: u64,
    pub contact: u64,
    pub company: u64,
    pub field: u64,
    pub enum_: u64,
    pub tag: u64,
    pub note: u64,
    pub task: u64,
    pub catalog: u64,
    pub element: u64,
    pub webhook: u64,
    pub install: u64,
    pub pair: u64,
    pub log: u64,
    pub delivery: u64,
}

impl Default for Ids {
    fn default() -> Self {
        Self {
            account: 31_000_000,
            user: 8_000_000,
            pipeline: 7_000_000,
            status: 61_000_000,
            lead: 25_000_000,
            contact: 40_000_000,
            company: 50_000_000,
            field: 990_000,
            enum_: 550_000,
            tag: 80_000,
            note: 4_600_000,
            task: 30_000_000,
            catalog: 11_000,
            element: 700_000,
            webhook: 0,
            install: 0,
            pair: 0,
            log: 0,
            delivery: 0,
        }
    }
}

pub fn next(counter: &mut u64) -> u64 {
    *counter += 1;
    *counter
}

/// One amoCRM account.
#[derive(Debug)]
pub struct Account {
    pub id: u64,
    pub host: String,
    pub subdomain: String,
    pub name: String,
    /// The account's default user (its admin): responsible for what is created without one.
    pub user_id: u64,
    /// The user new tokens are issued for (the one who clicks Allow); the default user unless changed.
    pub token_user_id: u64,
    pub users: BTreeMap<u64, User>,
    pub created_at: i64,
    pub pipelines: BTreeMap<u64, Pipeline>,
    pub lead_fields: BTreeMap<u64, CustomField>,
    pub contact_fields: BTreeMap<u64, CustomField>,
    pub leads: BTreeMap<u64, Lead>,
    pub contacts: BTreeMap<u64, Contact>,
    pub companies: BTreeMap<u64, Company>,
    pub tags: BTreeMap<String, u64>,
    pub notes: BTreeMap<u64, Note>,
    pub tasks: BTreeMap<u64, Task>,
    pub catalogs: BTreeMap<u64, Catalog>,
    /// Each list's fields (products: `SKU`, `PRICE`, `DESCRIPTION`), by list id.
    pub catalog_fields: BTreeMap<u64, BTreeMap<u64, CustomField>>,
    pub elements: BTreeMap<u64, CatalogElement>,
    pub links: Vec<EntityLink>,
    pub unsorted: BTreeMap<String, UnsortedEntry>,
    /// Contacts of pending unsorted requests: not found by search or listing until accepted.
    pub hidden_contacts: BTreeSet<u64>,
    pub webhooks: Vec<WebhookState>,
    pub faults: Faults,
    pub counters: Counters,
    /// Arrival instants of admitted requests within the last second.
    pub window: VecDeque<Instant>,
    /// When each `leads/complex` call was handled (after the injected latency) and the `request_id`s it
    /// carried, until taken by [`crate::SandboxHandle::take_complex_arrivals`]: benchmarks time orders
    /// from acceptance to their lead with it. At most [`ARRIVALS_CAP`], the oldest dropped first.
    pub complex_arrivals: Vec<(Instant, Vec<String>)>,
    /// The `api_domain` claim of the account's tokens, where its subdomain can be asked for.
    pub api_domain: String,
    /// 402 (the paid period ended) or 403 (blocked): every API call answers it, and for 403 the token
    /// endpoint too, until cleared.
    pub block: Option<u16>,
}

/// Where a renamed account went, and what its old host answers now (401 or 404).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renamed {
    pub to: String,
    pub status: u16,
}

/// The API host real amoCRM puts in an account's tokens: `api-b.amocrm.ru` for amoCRM accounts, `api-c.kommo.com`
/// for Kommo (old `*.amocrm.com` accounts live on Kommo), `api-b.{domain}` for anything else.
pub fn default_api_domain(host: &str) -> String {
    let domain = host.split_once('.').map(|(_, d)| d).unwrap_or(host);
    match domain {
        "kommo.com" | "amocrm.com" => "api-c.kommo.com".to_owned(),
        other => format!("api-b.{other}"),
    }
}

/// The `platform` amoCRM's consent redirect carries: 1 for amocrm.ru, 2 for kommo.com and amocrm.com.
pub fn platform_of(host: &str) -> &'static str {
    let domain = host.split_once('.').map(|(_, d)| d).unwrap_or(host);
    match domain {
        "kommo.com" | "amocrm.com" => "2",
        _ => "1",
    }
}

/// A webhook subscription plus its failure history.
#[derive(Debug, Clone)]
pub struct WebhookState {
    pub hook: Webhook,
    pub failures: VecDeque<Instant>,
}

/// An installation of an integration in an account (a grant). Revoking it kills every token.
#[derive(Debug)]
pub struct Install {
    pub client_id: String,
    pub host: String,
    pub revoked: bool,
}

#[derive(Debug)]
pub struct AuthCode {
    pub client_id: String,
    pub host: String,
    pub install_id: u64,
    pub issued_at: i64,
    pub used: bool,
}

/// A token pair and its place in the refresh chain.
#[derive(Debug)]
pub struct PairRecord {
    pub install_id: u64,
    pub parent: Option<u64>,
    pub children: Vec<u64>,
    /// The pair's access or refresh token has been used.
    pub used: bool,
    /// The pair's refresh token no longer works.
    pub refresh_dead: bool,
}

#[derive(Debug)]
pub struct AccessRecord {
    pub pair_id: u64,
    /// The user the token acts as (`sub`).
    pub user_id: u64,
    pub install_id: u64,
    pub host: String,
    pub exp: i64,
}

#[derive(Debug)]
pub struct RefreshRecord {
    pub pair_id: u64,
    pub install_id: u64,
    pub host: String,
    pub client_id: String,
    pub exp: i64,
}

/// The whole mutable world, behind one mutex.
#[derive(Debug)]
pub struct State {
    pub accounts: BTreeMap<String, Account>,
    pub integrations: BTreeMap<String, Integration>,
    pub installs: HashMap<u64, Install>,
    pub active_installs: HashMap<(String, String), u64>,
    pub codes: HashMap<String, AuthCode>,
    pub pairs: HashMap<u64, PairRecord>,
    pub access: HashMap<String, AccessRecord>,
    pub refresh: HashMap<String, RefreshRecord>,
    pub log: Vec<LoggedRequest>,
    pub deliveries: Vec<Delivery>,
    /// Old hosts of renamed accounts.
    pub renamed: HashMap<String, Renamed>,
    pub ids: Ids,
    pub rate_limit_rps: u32,
    pub rules: Rules,
    pub webhook_format: WebhookFormat,
    pub webhook_disable_after: u32,
    /// Sandbox time minus real time, from `SandboxConfig::now`.
    pub base_offset: chrono::Duration,
}

impl State {
    pub fn new(
        rate_limit_rps: u32,
        webhook_format: WebhookFormat,
        webhook_disable_after: u32,
        now: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            accounts: BTreeMap::new(),
            integrations: BTreeMap::new(),
            installs: HashMap::new(),
            active_installs: HashMap::new(),
            codes: HashMap::new(),
            pairs: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            log: Vec::new(),
            deliveries: Vec::new(),
            renamed: HashMap::new(),
            ids: Ids::default(),
            rate_limit_rps,
            rules: Rules::default(),
            webhook_format,
            webhook_disable_after,
            base_offset: now.map(|n| n - Utc::now()).unwrap_or_default(),
        }
    }

    /// Sandbox time for an account (real time + start offset + the account's clock offset).
    pub fn now_dt(&self, host: &str) -> DateTime<Utc> {
        let offset = self
            .accounts
            .get(host)
            .map(|a| a.faults.clock_offset_secs)
            .unwrap_or(0);
        Utc::now() + self.base_offset + chrono::Duration::seconds(offset)
    }

    /// Sandbox unix seconds for an account.
    pub fn now(&self, host: &str) -> i64 {
        self.now_dt(host).timestamp()
    }

    /// Normalises and checks an account host; `None` when it cannot be one.
    pub fn normalize_host(host: &str) -> Option<String> {
        let h = host.trim().to_ascii_lowercase();
        let ok = !h.is_empty()
            && h.len() <= 253
            && !h.starts_with('_')
            && h != "oauth"
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
        ok.then_some(h)
    }

    /// Creates the account (seeded with a main pipeline and contact fields) or returns the existing id.
    pub fn ensure_account(&mut self, host: &str) -> Option<u64> {
        let host = Self::normalize_host(host)?;
        if let Some(a) = self.accounts.get(&host) {
            return Some(a.id);
        }
        let now = self.now(&host);
        let ids = &mut self.ids;
        let id = next(&mut ids.account);
        let user_id = next(&mut ids.user);
        let subdomain = host.split('.').next().unwrap_or(&host).to_owned();
        let mut account = Account {
            id,
            host: host.clone(),
            subdomain: subdomain.clone(),
            name: subdomain.clone(),
            user_id,
            token_user_id: user_id,
            users: BTreeMap::from([(
                user_id,
                User {
                    id: user_id,
                    name: "Администратор".to_owned(),
                    email: format!("admin@{subdomain}.example"),
                    is_admin: true,
                    is_active: true,
                },
            )]),
            created_at: now,
            pipelines: BTreeMap::new(),
            lead_fields: BTreeMap::new(),
            contact_fields: BTreeMap::new(),
            leads: BTreeMap::new(),
            contacts: BTreeMap::new(),
            companies: BTreeMap::new(),
            tags: BTreeMap::new(),
            notes: BTreeMap::new(),
            tasks: BTreeMap::new(),
            catalogs: BTreeMap::new(),
            catalog_fields: BTreeMap::new(),
            elements: BTreeMap::new(),
            links: Vec::new(),
            unsorted: BTreeMap::new(),
            hidden_contacts: BTreeSet::new(),
            webhooks: Vec::new(),
            faults: Faults::default(),
            counters: Counters::default(),
            window: VecDeque::new(),
            complex_arrivals: Vec::new(),
            api_domain: default_api_domain(&host),
            block: None,
        };
        let main = new_pipeline(
            ids,
            "Воронка",
            1,
            true,
            true,
            &[
                ("Первичный контакт", "#99ccff"),
                ("Переговоры", "#ffff99"),
                ("Принимают решение", "#ffcc66"),
            ],
        );
        account.pipelines.insert(main.id, main);
        for (code, name, sort) in [
            ("PHONE", "Телефон", 4),
            ("EMAIL", "Email", 6),
            ("POSITION", "Должность", 2),
        ] {
            let fid = next(&mut ids.field);
            let kinds: &[&str] = match code {
                "PHONE" => &["WORK", "WORKDD", "MOB", "FAX", "HOME", "OTHER"],
                "EMAIL" => &["WORK", "PRIV", "OTHER"],
                _ => &[],
            };
            let enums = kinds
                .iter()
                .enumerate()
                .map(|(i, k)| FieldEnum {
                    id: next(&mut ids.enum_),
                    value: (*k).to_owned(),
                    sort: 2 * (i as i64 + 1),
                })
                .collect();
            account.contact_fields.insert(
                fid,
                CustomField {
                    id: fid,
                    name: name.to_owned(),
                    type_: if code == "POSITION" {
                        "text"
                    } else {
                        "multitext"
                    }
                    .to_owned(),
                    code: Some(code.to_owned()),
                    sort,
                    is_api_only: false,
                    enums,
                    entity_type: "contacts".to_owned(),
                },
            );
        }
        // A new account may take a name another account gave up.
        self.renamed.remove(&host);
        self.accounts.insert(host, account);
        Some(id)
    }

    /// Renames an account: it is served at `to` from now on, with its grants and tokens; `from` answers
    /// `status` (401 or 404) to the token endpoint and the API.
    pub fn rename_account(&mut self, from: &str, to: &str, status: u16) -> Result<(), String> {
        let from = Self::normalize_host(from).ok_or("invalid old host")?;
        let to = Self::normalize_host(to).ok_or("invalid new host")?;
        if !matches!(status, 401 | 404) {
            return Err("the old host answers 401 or 404".into());
        }
        if self.accounts.contains_key(&to) {
            return Err(format!("an account already lives at {to}"));
        }
        let mut acc = self
            .accounts
            .remove(&from)
            .ok_or_else(|| format!("unknown account {from}"))?;
        acc.subdomain = to.split('.').next().unwrap_or(&to).to_owned();
        acc.host = to.clone();
        self.accounts.insert(to.clone(), acc);
        for i in self.installs.values_mut().filter(|i| i.host == from) {
            i.host = to.clone();
        }
        let moved: Vec<_> = self
            .active_installs
            .keys()
            .filter(|(_, h)| *h == from)
            .cloned()
            .collect();
        for key in moved {
            if let Some(id) = self.active_installs.remove(&key) {
                self.active_installs.insert((key.0, to.clone()), id);
            }
        }
        for c in self.codes.values_mut().filter(|c| c.host == from) {
            c.host = to.clone();
        }
        for a in self.access.values_mut().filter(|a| a.host == from) {
            a.host = to.clone();
        }
        for r in self.refresh.values_mut().filter(|r| r.host == from) {
            r.host = to.clone();
        }
        for r in self.renamed.values_mut().filter(|r| r.to == from) {
            r.to = to.clone();
        }
        self.renamed.remove(&to);
        self.renamed.insert(from, Renamed { to, status });
        Ok(())
    }

    /// Appends to the request log.
    pub fn push_log(&mut self, mut entry: LoggedRequest) {
        entry.seq = next(&mut self.ids.log);
        if self.log.len() >= LOG_CAP {
            self.log.drain(..LOG_CAP / 2);
        }
        self.log.push(entry);
    }

    /// The active installation of `client_id` in `host`, created when absent (or revoked).
    pub fn ensure_install(&mut self, client_id: &str, host: &str) -> u64 {
        let key = (client_id.to_owned(), host.to_owned());
        if let Some(id) = self.active_installs.get(&key) {
            return *id;
        }
        let id = next(&mut self.ids.install);
        self.installs.insert(
            id,
            Install {
                client_id: client_id.to_owned(),
                host: host.to_owned(),
                revoked: false,
            },
        );
        self.active_installs.insert(key, id);
        id
    }

    pub fn install_live(&self, install_id: u64) -> bool {
        self.installs.get(&install_id).is_some_and(|i| !i.revoked)
    }

    /// Marks a pair as used: its parent's refresh token and its siblings' refresh tokens die
    /// (the old refresh token works only until the new pair is used).
    pub fn mark_pair_used(&mut self, pair_id: u64) {
        let parent = match self.pairs.get_mut(&pair_id) {
            Some(p) if !p.used => {
                p.used = true;
                p.parent
            }
            _ => return,
        };
        let Some(parent_id) = parent else { return };
        let siblings = match self.pairs.get_mut(&parent_id) {
            Some(parent) => {
                parent.refresh_dead = true;
                parent.children.clone()
            }
            None => return,
        };
        for s in siblings.into_iter().filter(|s| *s != pair_id) {
            if let Some(p) = self.pairs.get_mut(&s) {
                p.refresh_dead = true;
            }
        }
    }
}

/// Builds a pipeline with the incoming stage, the given stages and the system statuses 142/143.
pub fn new_pipeline(
    ids: &mut Ids,
    name: &str,
    sort: i64,
    is_main: bool,
    is_unsorted_on: bool,
    stages: &[(&str, &str)],
) -> Pipeline {
    let pid = next(&mut ids.pipeline);
    let mut statuses = vec![Status {
        id: next(&mut ids.status),
        name: "Неразобранное".to_owned(),
        sort: 10,
        color: "#c1c1c1".to_owned(),
        type_: 1,
        is_editable: false,
        pipeline_id: pid,
    }];
    for (i, (stage, color)) in stages.iter().enumerate() {
        statuses.push(Status {
            id: next(&mut ids.status),
            name: (*stage).to_owned(),
            sort: 20 + 10 * i as i64,
            color: (*color).to_owned(),
            type_: 0,
            is_editable: true,
            pipeline_id: pid,
        });
    }
    statuses.extend(system_statuses(pid));
    Pipeline {
        id: pid,
        name: name.to_owned(),
        sort,
        is_main,
        is_unsorted_on,
        is_archive: false,
        statuses,
    }
}

/// Statuses 142 (won) and 143 (lost), present in every pipeline with the same ids.
pub fn system_statuses(pipeline_id: u64) -> [Status; 2] {
    [
        Status {
            id: WON,
            name: "Успешно реализовано".to_owned(),
            sort: 10_000,
            color: "#CCFF66".to_owned(),
            type_: 0,
            is_editable: false,
            pipeline_id,
        },
        Status {
            id: LOST,
            name: "Закрыто и не реализовано".to_owned(),
            sort: 11_000,
            color: "#D5D8DB".to_owned(),
            type_: 0,
            is_editable: false,
            pipeline_id,
        },
    ]
}

impl Account {
    /// Admits a request under the sliding-window limit; `Err(retry_after_secs)` when over it.
    pub fn admit(&mut self, rps: u32, now: Instant) -> Result<(), u64> {
        if rps == 0 {
            return Ok(());
        }
        let window = Duration::from_secs(1);
        while let Some(front) = self.window.front() {
            if now.duration_since(*front) >= window {
                self.window.pop_front();
            } else {
                break;
            }
        }
        if self.window.len() >= rps as usize {
            let oldest = self.window.front().copied().unwrap_or(now);
            let wait = (oldest + window).saturating_duration_since(now);
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(secs.max(1));
        }
        self.window.push_back(now);
        Ok(())
    }

    pub fn main_pipeline(&self) -> Option<&Pipeline> {
        self.pipelines
            .values()
            .find(|p| p.is_main)
            .or_else(|| self.pipelines.values().next())
    }

    /// The pipeline a status belongs to, if only one does (142/143 belong to all: ambiguous).
    pub fn pipeline_of_status(&self, status_id: u64) -> Option<u64> {
        if status_id == WON || status_id == LOST {
            return self.main_pipeline().map(|p| p.id);
        }
        self.pipelines
            .values()
            .find(|p| p.status(status_id).is_some())
            .map(|p| p.id)
    }

    pub fn tag_id(&mut self, ids: &mut Ids, name: &str) -> u64 {
        if let Some(id) = self.tags.get(name) {
            return *id;
        }
        let id = next(&mut ids.tag);
        self.tags.insert(name.to_owned(), id);
        id
    }

    pub fn self_url(&self) -> String {
        format!("https://{}", self.host)
    }

    /// Whether `id` may be made responsible for something: a user of the account who is active.
    pub fn user_ok(&self, id: u64) -> bool {
        self.users.get(&id).is_some_and(|u| u.is_active)
    }

    /// Why `id` cannot be responsible (for a validation error's detail), if it cannot.
    pub fn user_problem(&self, id: u64) -> Option<String> {
        match self.users.get(&id) {
            None => Some(format!("User {id} not found in the account.")),
            Some(u) if !u.is_active => Some(format!("User {id} ({}) is not active.", u.name)),
            Some(_) => None,
        }
    }

    /// The pending unsorted request holding this lead, if any.
    pub fn pending_unsorted_of(&self, lead_id: u64) -> Option<&UnsortedEntry> {
        self.unsorted
            .values()
            .find(|u| u.lead_id == lead_id && u.state == crate::model::UnsortedState::Pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Account {
        let mut st = State::new(7, WebhookFormat::Full, 100, None);
        st.ensure_account("a.amocrm.ru").expect("host");
        st.accounts.remove("a.amocrm.ru").expect("account")
    }

    #[test]
    fn the_window_admits_seven_per_sliding_second_and_refusals_cost_nothing() {
        let mut a = account();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        for i in 0..7 {
            assert_eq!(a.admit(7, ms(i * 100)), Ok(()), "request {i}");
        }
        // 8th at 999 ms: the first slot frees at 1000 ms.
        assert_eq!(a.admit(7, ms(999)), Err(1));
        assert_eq!(
            a.admit(7, ms(999)),
            Err(1),
            "a refusal does not take a slot"
        );
        assert_eq!(a.admit(7, ms(1000)), Ok(()));
        assert_eq!(a.admit(7, ms(1050)), Err(1));
        assert_eq!(a.admit(7, ms(1100)), Ok(()));
        // Exactly at the ceiling forever: one request every 1/7 s is always admitted.
        let mut b = account();
        for i in 0..70u64 {
            assert_eq!(
                b.admit(7, t0 + Duration::from_micros(i * 142_858)),
                Ok(()),
                "paced request {i}"
            );
        }
    }

    #[test]
    fn a_zero_limit_disables_the_window() {
        let mut a = account();
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(a.admit(0, t0), Ok(()));
        }
    }
}
