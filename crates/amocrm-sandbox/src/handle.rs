//! Starting a sandbox and driving it in-process: `Sandbox::start` and the `SandboxHandle` operations
//! (also used by the `/_sandbox` HTTP routes, so both ways behave the same).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context as _, anyhow, bail};

use crate::api::{self, Patch, apply_patch};
use crate::config::{Faults, Integration, Rules, SandboxConfig};
use crate::model::{
    AccountInfo, Catalog, CatalogElement, Company, Contact, ContactChange, ContactSeed, Counters,
    CustomField, Delivery, DeliveryKind, EntityLink, FieldEnum, Lead, LoggedRequest, NewUser, Note,
    Pipeline, Task, TokenPair, UnsortedEntry, User, Webhook,
};
use crate::oauth::{self, AuthorizeParams};
use crate::outbound::{Event, Job, Outbound, jobs_for};
use crate::state::{LOST, State, WON};
use crate::tokens;

/// State shared by the HTTP workers, the delivery thread and the handle.
#[derive(Debug)]
pub struct Shared {
    pub state: Arc<Mutex<State>>,
    pub outbound: Outbound,
    /// Flips to `true` at stop: requests held by `drop_after_write_next` are released.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    pub base_url: String,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the webhooks of `events` (built now, under the caller's view of the state).
    pub fn emit(&self, st: &State, host: &str, events: &[Event]) -> Vec<Job> {
        if events.is_empty() {
            return Vec::new();
        }
        jobs_for(st, host, events)
    }

    pub fn add_account(&self, host: &str) -> anyhow::Result<u64> {
        self.lock()
            .ensure_account(host)
            .ok_or_else(|| anyhow!("invalid account host {host:?}"))
    }

    pub fn accounts(&self) -> Vec<AccountInfo> {
        self.lock()
            .accounts
            .values()
            .map(|a| AccountInfo {
                id: a.id,
                host: a.host.clone(),
                subdomain: a.subdomain.clone(),
                name: a.name.clone(),
            })
            .collect()
    }

    pub fn decide(
        &self,
        authorize: &AuthorizeParams,
        host: &str,
        allow: bool,
    ) -> anyhow::Result<String> {
        let mut st = self.lock();
        Ok(oauth::decide(&mut st, authorize, host, allow)?)
    }

    pub fn issue_tokens(&self, client_id: &str, host: &str) -> TokenPair {
        let mut st = self.lock();
        let host = State::normalize_host(host).unwrap_or_else(|| host.to_owned());
        st.ensure_account(&host);
        let install = st.ensure_install(client_id, &host);
        oauth::mint_pair(&mut st, install, None)
    }

    pub fn add_integration(&self, i: Integration) {
        self.lock().integrations.insert(i.client_id.clone(), i);
    }

    pub fn integrations(&self) -> Vec<Integration> {
        self.lock().integrations.values().cloned().collect()
    }

    pub fn set_faults(&self, host: &str, f: Faults) -> anyhow::Result<()> {
        let mut st = self.lock();
        let acc = account_mut(&mut st, host)?;
        acc.faults = f;
        Ok(())
    }

    pub fn faults(&self, host: &str) -> Faults {
        self.with_account(host, |a| a.faults.clone())
            .unwrap_or_default()
    }

    pub fn counters(&self, host: &str) -> Counters {
        self.with_account(host, |a| a.counters.clone())
            .unwrap_or_default()
    }

    pub fn total_counters(&self) -> Counters {
        let st = self.lock();
        let mut total = Counters::default();
        for a in st.accounts.values() {
            total.add(&a.counters);
        }
        total
    }

    pub fn with_account<T>(
        &self,
        host: &str,
        f: impl FnOnce(&crate::state::Account) -> T,
    ) -> Option<T> {
        let st = self.lock();
        st.accounts.get(&norm(host)).map(f)
    }

    pub fn move_lead(
        &self,
        host: &str,
        lead_id: u64,
        pipeline_id: u64,
        status_id: u64,
    ) -> anyhow::Result<()> {
        let host = norm(host);
        self.change(&host, |acc, _, now| {
            if !acc.leads.contains_key(&lead_id) {
                bail!("no lead {lead_id} in {host}");
            }
            let pipeline = acc
                .pipelines
                .get(&pipeline_id)
                .with_context(|| format!("no pipeline {pipeline_id} in {host}"))?;
            let status = pipeline
                .status(status_id)
                .with_context(|| format!("status {status_id} is not in pipeline {pipeline_id}"))?;
            if status.type_ == 1 {
                bail!("a lead cannot be moved into the incoming stage");
            }
            if let Some(u) = acc.pending_unsorted_of(lead_id) {
                bail!(
                    "lead {lead_id} waits in incoming leads ({}): accept or decline it first",
                    u.uid
                );
            }
            let events = apply_patch(
                acc,
                lead_id,
                Patch::move_to(pipeline_id, status_id, None),
                now,
            );
            Ok(((), events))
        })
    }

    /// Creates a lead as a person would in the UI (first stage of the pipeline, or the given stage).
    pub fn create_lead(
        &self,
        host: &str,
        name: &str,
        price: i64,
        stage: Option<(u64, u64)>,
    ) -> anyhow::Result<u64> {
        self.change(host, |acc, ids, now| {
            let (pid, sid) = match stage {
                Some((p, s)) => {
                    let ok = acc
                        .pipelines
                        .get(&p)
                        .and_then(|pl| pl.status(s))
                        .is_some_and(|s| s.type_ == 0);
                    if !ok {
                        bail!("status {s} is not a stage of pipeline {p}");
                    }
                    (p, s)
                }
                None => {
                    let p = acc.main_pipeline().context("account has no pipeline")?;
                    let mut stages: Vec<_> = p.statuses.iter().filter(|s| s.type_ == 0).collect();
                    stages.sort_by_key(|s| (s.sort, s.id));
                    (p.id, stages.first().map(|s| s.id).unwrap_or(WON))
                }
            };
            let id = crate::state::next(&mut ids.lead);
            let user = acc.user_id;
            acc.leads.insert(
                id,
                Lead {
                    id,
                    name: if name.is_empty() {
                        format!("Сделка #{id}")
                    } else {
                        name.to_owned()
                    },
                    price,
                    pipeline_id: pid,
                    status_id: sid,
                    responsible_user_id: user,
                    created_by: user,
                    updated_by: user,
                    created_at: now,
                    updated_at: now,
                    closed_at: (sid == WON || sid == LOST).then_some(now),
                    custom_fields_values: Vec::new(),
                    tags: Vec::new(),
                    contact_ids: Vec::new(),
                    company_id: None,
                    request_id: None,
                },
            );
            acc.counters.leads_created += 1;
            Ok((id, vec![Event::LeadAdded(id)]))
        })
    }

    pub fn delete_lead(&self, host: &str, lead_id: u64) -> anyhow::Result<()> {
        let host = norm(host);
        self.change(&host, |acc, _, _| {
            let events = remove_lead(acc, lead_id)
                .with_context(|| format!("no lead {lead_id} in {host}"))?;
            Ok(((), events))
        })
    }

    /// Deletes a pipeline as an admin would in the UI, with its leads (each sends `delete_lead`).
    pub fn delete_pipeline(&self, host: &str, pipeline_id: u64) -> anyhow::Result<()> {
        let host = norm(host);
        self.change(&host, |acc, _, _| {
            if !acc.pipelines.contains_key(&pipeline_id) {
                bail!("no pipeline {pipeline_id} in {host}");
            }
            if acc.pipelines.len() == 1 {
                bail!("the last pipeline of an account cannot be deleted");
            }
            let ids: Vec<u64> = acc
                .leads
                .values()
                .filter(|l| l.pipeline_id == pipeline_id)
                .map(|l| l.id)
                .collect();
            let mut events = Vec::new();
            for id in ids {
                events.extend(remove_lead(acc, id).unwrap_or_default());
            }
            let was_main = acc
                .pipelines
                .remove(&pipeline_id)
                .is_some_and(|p| p.is_main);
            if was_main && let Some(first) = acc.pipelines.values_mut().next() {
                first.is_main = true;
            }
            Ok(((), events))
        })
    }

    pub fn delete_custom_field(&self, host: &str, field_id: u64) -> anyhow::Result<()> {
        let mut st = self.lock();
        let acc = account_mut(&mut st, host)?;
        if acc.lead_fields.remove(&field_id).is_none() {
            bail!("no lead custom field {field_id} in {host}");
        }
        for l in acc.leads.values_mut() {
            l.custom_fields_values.retain(|f| f.field_id != field_id);
        }
        Ok(())
    }

    pub fn rename_account(
        &self,
        from: &str,
        to: &str,
        old_host_answers: u16,
    ) -> anyhow::Result<()> {
        self.lock()
            .rename_account(from, to, old_host_answers)
            .map_err(|e| anyhow!(e))
    }

    pub fn set_api_domain(&self, host: &str, api_domain: &str) -> anyhow::Result<()> {
        let api_domain = State::normalize_host(api_domain)
            .with_context(|| format!("invalid API host {api_domain:?}"))?;
        let mut st = self.lock();
        account_mut(&mut st, host)?.api_domain = api_domain;
        Ok(())
    }

    pub fn set_block(&self, host: &str, status: Option<u16>) -> anyhow::Result<()> {
        if status.is_some_and(|s| !matches!(s, 402 | 403)) {
            bail!("an account can be put in 402 (payment required) or 403 (blocked) only");
        }
        let mut st = self.lock();
        account_mut(&mut st, host)?.block = status;
        Ok(())
    }

    /// Disables the integration in the account: tokens die, the uninstall hook is sent if configured.
    pub fn revoke_grant(&self, host: &str, client_id: &str) -> bool {
        let host = norm(host);
        let job = {
            let mut st = self.lock();
            if !oauth::revoke(&mut st, &host, client_id) {
                return false;
            }
            let account_id = st.accounts.get(&host).map(|a| a.id).unwrap_or(0);
            st.integrations.get(client_id).and_then(|i| {
                let url = i.disconnect_url.as_ref()?;
                let signature =
                    tokens::disconnect_signature(client_id, &i.client_secret, account_id);
                let query = serde_urlencoded::to_string([
                    ("client_uuid", client_id.to_owned()),
                    ("account_id", account_id.to_string()),
                    ("signature", signature),
                ])
                .ok()?;
                let sep = if url.contains('?') { '&' } else { '?' };
                Some(Job {
                    kind: DeliveryKind::Uninstall,
                    host: host.clone(),
                    webhook_id: None,
                    url: format!("{url}{sep}{query}"),
                    body: None,
                })
            })
        };
        self.outbound.send(job.into_iter().collect());
        true
    }
}

impl Shared {
    /// Runs `f` on the account with the sandbox clock and id sequences, then sends the events it returns.
    fn change<T>(
        &self,
        host: &str,
        f: impl FnOnce(
            &mut crate::state::Account,
            &mut crate::state::Ids,
            i64,
        ) -> anyhow::Result<(T, Vec<Event>)>,
    ) -> anyhow::Result<T> {
        let host = norm(host);
        let (out, jobs) = {
            let mut st = self.lock();
            let now = st.now(&host);
            let State { accounts, ids, .. } = &mut *st;
            let acc = accounts
                .get_mut(&host)
                .with_context(|| format!("unknown account {host}"))?;
            let (out, events) = f(acc, ids, now)?;
            let jobs = self.emit(&st, &host, &events);
            (out, jobs)
        };
        self.outbound.send(jobs);
        Ok(out)
    }

    pub fn add_user(&self, host: &str, user: &NewUser) -> anyhow::Result<User> {
        self.change(host, |acc, ids, _| {
            let id = crate::state::next(&mut ids.user);
            let name = if user.name.trim().is_empty() {
                format!("Менеджер {id}")
            } else {
                user.name.clone()
            };
            let email = if user.email.trim().is_empty() {
                format!("user{id}@{}.example", acc.subdomain)
            } else {
                user.email.clone()
            };
            let u = User {
                id,
                name,
                email,
                is_admin: user.is_admin,
                is_active: true,
            };
            acc.users.insert(id, u.clone());
            Ok((u, Vec::new()))
        })
    }

    pub fn update_user(
        &self,
        host: &str,
        id: u64,
        is_active: Option<bool>,
        is_admin: Option<bool>,
    ) -> anyhow::Result<User> {
        self.change(host, |acc, _, _| {
            let u = acc
                .users
                .get_mut(&id)
                .with_context(|| format!("no user {id}"))?;
            if let Some(a) = is_active {
                u.is_active = a;
            }
            if let Some(a) = is_admin {
                u.is_admin = a;
            }
            Ok((u.clone(), Vec::new()))
        })
    }

    pub fn delete_user(&self, host: &str, id: u64) -> anyhow::Result<()> {
        self.change(host, |acc, _, _| {
            if id == acc.user_id {
                bail!("the account's default user {id} cannot be deleted (deactivate it instead)");
            }
            acc.users
                .remove(&id)
                .with_context(|| format!("no user {id}"))?;
            if acc.token_user_id == id {
                acc.token_user_id = acc.user_id;
            }
            Ok(((), Vec::new()))
        })
    }

    pub fn set_connecting_user(&self, host: &str, id: u64) -> anyhow::Result<()> {
        self.change(host, |acc, _, _| {
            if !acc.users.contains_key(&id) {
                bail!("no user {id}");
            }
            acc.token_user_id = id;
            Ok(((), Vec::new()))
        })
    }

    pub fn set_connecting_user_admin(&self, host: &str, admin: bool) -> anyhow::Result<()> {
        self.change(host, |acc, _, _| {
            let id = acc.token_user_id;
            let u = acc
                .users
                .get_mut(&id)
                .with_context(|| format!("no user {id}"))?;
            u.is_admin = admin;
            Ok(((), Vec::new()))
        })
    }

    pub fn add_contact(&self, host: &str, seed: &ContactSeed) -> anyhow::Result<u64> {
        self.change(host, |acc, ids, now| {
            api::create_contact(acc, ids, now, seed).map_err(|e| anyhow!(e))
        })
    }

    pub fn update_contact(
        &self,
        host: &str,
        id: u64,
        change: &ContactChange,
    ) -> anyhow::Result<()> {
        self.change(host, |acc, _, now| {
            let events = api::change_contact(acc, id, change, now).map_err(|e| anyhow!(e))?;
            Ok(((), events))
        })
    }

    pub fn delete_contact(&self, host: &str, id: u64) -> anyhow::Result<()> {
        self.change(host, |acc, _, _| {
            let events =
                api::remove_contact(acc, id).with_context(|| format!("no contact {id}"))?;
            Ok(((), events))
        })
    }

    pub fn add_catalog(&self, host: &str, name: &str, type_: &str) -> anyhow::Result<Catalog> {
        self.change(host, |acc, ids, now| {
            let c = api::add_catalog(acc, ids, now, name, type_).map_err(|e| anyhow!(e))?;
            Ok((c, Vec::new()))
        })
    }

    pub fn accept_unsorted(
        &self,
        host: &str,
        uid: &str,
        user_id: Option<u64>,
        status_id: Option<u64>,
    ) -> anyhow::Result<()> {
        self.change(host, |acc, _, now| {
            let events = api::accept_unsorted(acc, uid, user_id, status_id, now)
                .map_err(|e| anyhow!(e.to_string()))?;
            Ok(((), events))
        })
    }

    pub fn decline_unsorted(&self, host: &str, uid: &str) -> anyhow::Result<()> {
        self.change(host, |acc, _, now| {
            let events =
                api::decline_unsorted(acc, uid, None, now).map_err(|e| anyhow!(e.to_string()))?;
            Ok(((), events))
        })
    }

    pub fn add_lead_field(
        &self,
        host: &str,
        name: &str,
        type_: &str,
        enums: &[String],
    ) -> anyhow::Result<CustomField> {
        self.change(host, |acc, ids, _| {
            if name.trim().is_empty() {
                bail!("a custom field needs a name");
            }
            if !crate::fields::FIELD_TYPES.contains(&type_) || type_ == "multitext" {
                bail!("lead fields cannot be of type {type_:?}");
            }
            let selects = ["select", "multiselect", "radiobutton", "category"];
            if selects.contains(&type_) && enums.is_empty() {
                bail!("a {type_} field needs at least one option");
            }
            let id = crate::state::next(&mut ids.field);
            let f = CustomField {
                id,
                name: name.to_owned(),
                type_: type_.to_owned(),
                code: None,
                sort: 500,
                is_api_only: false,
                enums: enums
                    .iter()
                    .enumerate()
                    .map(|(i, v)| FieldEnum {
                        id: crate::state::next(&mut ids.enum_),
                        value: v.clone(),
                        sort: 500 + i as i64,
                    })
                    .collect(),
                entity_type: "leads".to_owned(),
            };
            acc.lead_fields.insert(id, f.clone());
            Ok((f, Vec::new()))
        })
    }

    /// An install from amoCRM's widget catalogue: a code is sent to the redirect URI with
    /// `from_widget=1` and no `state` (server to server, not through the user's browser).
    pub fn widget_install(&self, client_id: &str, host: &str) -> anyhow::Result<String> {
        let host = norm(host);
        let url = {
            let mut st = self.lock();
            let redirect = st
                .integrations
                .get(client_id)
                .map(|i| i.redirect_uri.clone())
                .with_context(|| format!("unknown client_id {client_id:?}"))?;
            st.ensure_account(&host)
                .with_context(|| format!("invalid account host {host:?}"))?;
            let code = oauth::mint_code(&mut st, client_id, &host);
            let query = serde_urlencoded::to_string([
                ("code", code.as_str()),
                ("platform", crate::state::platform_of(&host)),
                ("referer", host.as_str()),
                ("client_id", client_id),
                ("from_widget", "1"),
            ])?;
            let sep = if redirect.contains('?') { '&' } else { '?' };
            format!("{redirect}{sep}{query}")
        };
        self.outbound.send(vec![Job {
            kind: DeliveryKind::WidgetInstall,
            host,
            webhook_id: None,
            url: url.clone(),
            body: None,
        }]);
        Ok(url)
    }
}

/// Removes a lead and unlinks it; returns the `delete_lead` event.
fn remove_lead(acc: &mut crate::state::Account, lead_id: u64) -> Option<Vec<Event>> {
    let lead = acc.leads.remove(&lead_id)?;
    for c in acc.contacts.values_mut() {
        c.lead_ids.retain(|l| *l != lead_id);
    }
    for c in acc.companies.values_mut() {
        c.lead_ids.retain(|l| *l != lead_id);
    }
    Some(vec![Event::LeadDeleted(Box::new(lead))])
}

fn norm(host: &str) -> String {
    State::normalize_host(host).unwrap_or_else(|| host.to_owned())
}

fn account_mut<'a>(st: &'a mut State, host: &str) -> anyhow::Result<&'a mut crate::state::Account> {
    st.accounts
        .get_mut(&norm(host))
        .with_context(|| format!("unknown account {host}"))
}

/// Entry point: `Sandbox::start(config)`.
pub struct Sandbox;

impl Sandbox {
    /// Binds, seeds the accounts, starts serving (on its own thread) and returns the handle.
    pub async fn start(cfg: SandboxConfig) -> anyhow::Result<SandboxHandle> {
        let mut st = State::new(
            cfg.rate_limit_rps,
            cfg.webhook_format,
            cfg.webhook_disable_after,
            cfg.now,
        );
        st.rules = cfg.rules;
        for host in &cfg.accounts {
            st.ensure_account(host)
                .with_context(|| format!("invalid account host {host:?}"))?;
        }
        for i in &cfg.integrations {
            st.integrations.insert(i.client_id.clone(), i.clone());
        }
        let state = Arc::new(Mutex::new(st));
        let outbound = Outbound::start(state.clone(), cfg.webhook_timeout)?;
        let listener = std::net::TcpListener::bind(cfg.listen)
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state,
            outbound,
            shutdown: tokio::sync::watch::channel(false).0,
            base_url: format!("http://{addr}"),
        });
        let server = crate::server::spawn(shared.clone(), listener, cfg.workers.max(1)).await?;
        Ok(SandboxHandle {
            shared,
            server: Some(server),
            addr,
        })
    }
}

/// A running sandbox. Dropping it stops the server too; `stop` waits for that.
pub struct SandboxHandle {
    shared: Arc<Shared>,
    server: Option<actix_web::dev::ServerHandle>,
    addr: SocketAddr,
}

impl std::fmt::Debug for SandboxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

impl SandboxHandle {
    /// A copy of one of the account's collections, in id order; empty for an unknown account.
    fn values<K, T: Clone>(
        &self,
        host: &str,
        pick: impl FnOnce(&crate::state::Account) -> &std::collections::BTreeMap<K, T>,
    ) -> Vec<T> {
        self.shared
            .with_account(host, |a| pick(a).values().cloned().collect())
            .unwrap_or_default()
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// `http://127.0.0.1:PORT/{host}`: the value for `AMOCRM_ACCOUNT_URL_TEMPLATE`.
    pub fn account_url_template(&self) -> String {
        format!("{}/{{host}}", self.shared.base_url)
    }

    /// The base URL of one account (`http://127.0.0.1:PORT/sellerone.amocrm.ru`).
    pub fn account_url(&self, host: &str) -> String {
        format!("{}/{}", self.shared.base_url, norm(host))
    }

    /// `http://127.0.0.1:PORT/oauth`: the value for `AMOCRM_AUTHORIZE_URL`.
    pub fn authorize_url(&self) -> String {
        format!("{}/oauth", self.shared.base_url)
    }

    /// Creates the account (or finds it) and returns its id. Panics only on a string that cannot be a
    /// host at all (empty, or with characters other than letters, digits, `.`, `-`, `:`); use
    /// `try_add_account` for untrusted input.
    pub fn add_account(&self, host: &str) -> u64 {
        match self.shared.add_account(host) {
            Ok(id) => id,
            Err(e) => panic!("{e}"),
        }
    }

    /// Creates the account (or finds it) and returns its id; an error for a string that cannot be a host.
    pub fn try_add_account(&self, host: &str) -> anyhow::Result<u64> {
        self.shared.add_account(host)
    }

    /// All accounts.
    pub fn accounts(&self) -> Vec<AccountInfo> {
        self.shared.accounts()
    }

    /// The account id of `host`, if it exists.
    pub fn account_id(&self, host: &str) -> Option<u64> {
        self.shared.with_account(host, |a| a.id)
    }

    /// Registers (or replaces) an integration at run time.
    pub fn add_integration(&self, integration: Integration) {
        self.shared.add_integration(integration);
    }

    /// Sets the uninstall hook URL of an integration.
    pub fn set_disconnect_url(&self, client_id: &str, url: Option<&str>) -> anyhow::Result<()> {
        let mut st = self.shared.lock();
        let i = st
            .integrations
            .get_mut(client_id)
            .with_context(|| format!("unknown client_id {client_id:?}"))?;
        i.disconnect_url = url.map(str::to_owned);
        Ok(())
    }

    /// Scripted consent: the user picks account `host` and clicks Allow. `authorize` is the full
    /// authorize URL or its query. Returns the redirect URL (`…?code=…&state=…&referer=…&client_id=…`).
    pub fn approve(&self, authorize: &str, host: &str) -> anyhow::Result<String> {
        self.shared
            .decide(&AuthorizeParams::parse(authorize), host, true)
    }

    /// Scripted consent: the user clicks Deny. Returns `…?error=access_denied&client_id=…&state=…`.
    pub fn deny(&self, authorize: &str, host: &str) -> anyhow::Result<String> {
        self.shared
            .decide(&AuthorizeParams::parse(authorize), host, false)
    }

    /// An install from amoCRM's widget catalogue: sends `GET {redirect_uri}?code=…&referer=…&client_id=…&from_widget=1`
    /// (no `state`) to the integration and returns that URL.
    pub fn widget_install(&self, client_id: &str, host: &str) -> anyhow::Result<String> {
        self.shared.widget_install(client_id, host)
    }

    /// Mints a grant and a token pair without consent (benchmarks, fixtures).
    pub fn issue_tokens(&self, client_id: &str, host: &str) -> TokenPair {
        self.shared.issue_tokens(client_id, host)
    }

    /// Replaces the fault switches of an account (unknown account: ignored).
    pub fn set_faults(&self, host: &str, f: Faults) {
        let _ = self.shared.set_faults(host, f);
    }

    /// Current fault switches (remaining counts).
    pub fn faults(&self, host: &str) -> Faults {
        self.shared.faults(host)
    }

    /// Renames an account as its admin would in amoCRM's settings: it is served at `to` from now on, with
    /// its grants and tokens (its webhooks carry the new `account[subdomain]`); the old host answers
    /// `old_host_answers` (401 or 404) to the token endpoint and the API. Tokens issued before still name
    /// the account's API host, where `GET /oauth2/account/current/subdomain` tells the new host.
    pub fn rename_account(
        &self,
        from: &str,
        to: &str,
        old_host_answers: u16,
    ) -> anyhow::Result<()> {
        self.shared.rename_account(from, to, old_host_answers)
    }

    /// Sets the `api_domain` claim of the account's tokens issued from now on (the host that answers its
    /// subdomain lookup), e.g. a host outside amoCRM's to test that clients refuse to go there.
    pub fn set_api_domain(&self, host: &str, api_domain: &str) -> anyhow::Result<()> {
        self.shared.set_api_domain(host, api_domain)
    }

    /// The `api_domain` claim of the account's tokens.
    pub fn api_domain(&self, host: &str) -> Option<String> {
        self.shared.with_account(host, |a| a.api_domain.clone())
    }

    /// The account's paid period ended: every API call answers 402 (the token endpoint still works) until
    /// [`SandboxHandle::clear_block`].
    pub fn require_payment(&self, host: &str) -> anyhow::Result<()> {
        self.shared.set_block(host, Some(402))
    }

    /// The account (or this integration's IP) is blocked: every API call and the token endpoint answer 403
    /// until [`SandboxHandle::clear_block`].
    pub fn block(&self, host: &str) -> anyhow::Result<()> {
        self.shared.set_block(host, Some(403))
    }

    /// Paid again, or unblocked: the account answers normally.
    pub fn clear_block(&self, host: &str) -> anyhow::Result<()> {
        self.shared.set_block(host, None)
    }

    /// Moves this account's clock forward by `secs` more seconds.
    pub fn advance_clock(&self, host: &str, secs: i64) {
        let mut f = self.faults(host);
        f.clock_offset_secs += secs;
        self.set_faults(host, f);
    }

    /// Changes the per-account limit at run time (0 disables it).
    pub fn set_rate_limit_rps(&self, rps: u32) {
        self.shared.lock().rate_limit_rps = rps;
    }

    /// The unsourced rules in force.
    pub fn rules(&self) -> Rules {
        self.shared.lock().rules
    }

    /// Turns unsourced rules on or off at run time.
    pub fn set_rules(&self, rules: Rules) {
        self.shared.lock().rules = rules;
    }

    /// Every request received so far (oldest first).
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.shared.lock().log.clone()
    }

    /// Forgets the request log.
    pub fn clear_log(&self) {
        self.shared.lock().log.clear();
    }

    /// Request and outcome counters of one account.
    pub fn counters(&self, host: &str) -> Counters {
        self.shared.counters(host)
    }

    /// The counters summed over every account (benchmarks over many accounts).
    pub fn total_counters(&self) -> Counters {
        self.shared.total_counters()
    }

    /// Every `leads/complex` lead handled since the last call, over all accounts: its `request_id` and
    /// when its call was handled (after any injected latency). Taking them keeps the log from growing.
    pub fn take_complex_arrivals(&self) -> Vec<(String, std::time::Instant)> {
        let mut st = self.shared.lock();
        let mut out = Vec::new();
        for acc in st.accounts.values_mut() {
            for (at, ids) in acc.complex_arrivals.drain(..) {
                out.extend(ids.into_iter().map(|id| (id, at)));
            }
        }
        out
    }

    /// The account's leads.
    pub fn leads(&self, host: &str) -> Vec<Lead> {
        self.values(host, |a| &a.leads)
    }

    /// One lead, if it exists.
    pub fn lead(&self, host: &str, id: u64) -> Option<Lead> {
        self.shared
            .with_account(host, |a| a.leads.get(&id).cloned())
            .flatten()
    }

    /// The account's contacts.
    pub fn contacts(&self, host: &str) -> Vec<Contact> {
        self.values(host, |a| &a.contacts)
    }

    /// The account's companies.
    pub fn companies(&self, host: &str) -> Vec<Company> {
        self.values(host, |a| &a.companies)
    }

    /// The account's pipelines with their stages.
    pub fn pipelines(&self, host: &str) -> Vec<Pipeline> {
        self.values(host, |a| &a.pipelines)
    }

    /// Lead custom fields.
    pub fn custom_fields(&self, host: &str) -> Vec<CustomField> {
        self.values(host, |a| &a.lead_fields)
    }

    /// Webhook subscriptions (with `disabled`).
    pub fn webhooks(&self, host: &str) -> Vec<Webhook> {
        self.shared
            .with_account(host, |a| {
                a.webhooks.iter().map(|w| w.hook.clone()).collect()
            })
            .unwrap_or_default()
    }

    /// The account's users (the default admin first); deleted ones are gone.
    pub fn users(&self, host: &str) -> Vec<User> {
        self.values(host, |a| &a.users)
    }

    /// The account's default user: its admin, responsible for what is created without one.
    pub fn default_user_id(&self, host: &str) -> Option<u64> {
        self.shared.with_account(host, |a| a.user_id)
    }

    /// Adds a user (active; `is_admin` as given).
    pub fn add_user(&self, host: &str, user: NewUser) -> anyhow::Result<User> {
        self.shared.add_user(host, &user)
    }

    /// Deactivates or reactivates a user. Tokens of an inactive user get 403 on every API call, and an
    /// inactive user cannot be made responsible.
    pub fn set_user_active(&self, host: &str, user_id: u64, active: bool) -> anyhow::Result<User> {
        self.shared.update_user(host, user_id, Some(active), None)
    }

    /// Gives or takes a user's admin rights (checked on every call, so existing tokens follow).
    pub fn set_user_admin(&self, host: &str, user_id: u64, admin: bool) -> anyhow::Result<User> {
        self.shared.update_user(host, user_id, None, Some(admin))
    }

    /// Deletes a user (not the default one): it disappears from `GET users` and is refused as responsible.
    pub fn delete_user(&self, host: &str, user_id: u64) -> anyhow::Result<()> {
        self.shared.delete_user(host, user_id)
    }

    /// Whether the user who connects (tokens are issued for) is an admin; by default they are. A
    /// non-admin's token gets 403 on `GET users`, `POST/DELETE webhooks` and pipeline changes.
    pub fn set_connecting_user_admin(&self, host: &str, admin: bool) -> anyhow::Result<()> {
        self.shared.set_connecting_user_admin(host, admin)
    }

    /// Tokens issued from now on (consent, `issue_tokens`, refreshes) act as this user.
    pub fn set_connecting_user(&self, host: &str, user_id: u64) -> anyhow::Result<()> {
        self.shared.set_connecting_user(host, user_id)
    }

    /// Creates a contact as a manager would (sends `add_contact`).
    pub fn add_contact(&self, host: &str, seed: ContactSeed) -> anyhow::Result<u64> {
        self.shared.add_contact(host, &seed)
    }

    /// Edits a contact as a manager would (sends `update_contact` when something changed).
    pub fn update_contact(&self, host: &str, id: u64, change: ContactChange) -> anyhow::Result<()> {
        self.shared.update_contact(host, id, &change)
    }

    /// Deletes a contact as a manager would (sends `delete_contact`).
    pub fn delete_contact(&self, host: &str, id: u64) -> anyhow::Result<()> {
        self.shared.delete_contact(host, id)
    }

    /// Turns Products on: the account gets its `products` list (named `name`, default "Товары") with the
    /// `SKU`, `PRICE` and `DESCRIPTION` fields. Returns the existing one when already on.
    pub fn enable_products(&self, host: &str, name: Option<&str>) -> anyhow::Result<Catalog> {
        self.shared
            .add_catalog(host, name.unwrap_or_default(), "products")
    }

    /// Adds a list of type `regular` or `invoices` (or `products`, as `enable_products`).
    pub fn add_catalog(&self, host: &str, name: &str, type_: &str) -> anyhow::Result<Catalog> {
        self.shared.add_catalog(host, name, type_)
    }

    /// Adds a lead custom field of the seller's own (`text`, `select` with `options`, `url`, …).
    pub fn add_lead_field(
        &self,
        host: &str,
        name: &str,
        type_: &str,
        options: &[&str],
    ) -> anyhow::Result<CustomField> {
        let options: Vec<String> = options.iter().map(|o| (*o).to_owned()).collect();
        self.shared.add_lead_field(host, name, type_, &options)
    }

    /// The account's lists (catalogs), Products included when on.
    pub fn catalogs(&self, host: &str) -> Vec<Catalog> {
        self.values(host, |a| &a.catalogs)
    }

    /// Elements of every list.
    pub fn elements(&self, host: &str) -> Vec<CatalogElement> {
        self.values(host, |a| &a.elements)
    }

    /// Lead → list element links (with quantities); contacts linked to leads are in `Lead::contact_ids`.
    pub fn links(&self, host: &str) -> Vec<EntityLink> {
        self.shared
            .with_account(host, |a| a.links.clone())
            .unwrap_or_default()
    }

    /// The account's notes.
    pub fn notes(&self, host: &str) -> Vec<Note> {
        self.values(host, |a| &a.notes)
    }

    /// The account's tasks.
    pub fn tasks(&self, host: &str) -> Vec<Task> {
        self.values(host, |a| &a.tasks)
    }

    /// Unsorted requests, pending and done (`state`).
    pub fn unsorted(&self, host: &str) -> Vec<UnsortedEntry> {
        self.values(host, |a| &a.unsorted)
    }

    /// A manager accepts an unsorted request (into `status_id`, or the pipeline's first stage).
    pub fn accept_unsorted(
        &self,
        host: &str,
        uid: &str,
        status_id: Option<u64>,
    ) -> anyhow::Result<()> {
        self.shared.accept_unsorted(host, uid, None, status_id)
    }

    /// A manager declines an unsorted request: its lead is closed as lost (143).
    pub fn decline_unsorted(&self, host: &str, uid: &str) -> anyhow::Result<()> {
        self.shared.decline_unsorted(host, uid)
    }

    /// Moves a lead as a person in the UI would; sends `status_lead` / `update_lead` webhooks.
    pub fn move_lead(
        &self,
        host: &str,
        lead_id: u64,
        pipeline_id: u64,
        status_id: u64,
    ) -> anyhow::Result<()> {
        self.shared.move_lead(host, lead_id, pipeline_id, status_id)
    }

    /// Creates a lead as a person in the UI would (sends `add_lead`); `stage` = `(pipeline_id, status_id)`.
    pub fn create_lead(
        &self,
        host: &str,
        name: &str,
        price: i64,
        stage: Option<(u64, u64)>,
    ) -> anyhow::Result<u64> {
        self.shared.create_lead(host, name, price, stage)
    }

    /// Deletes a lead as a person in the UI would (sends `delete_lead`).
    pub fn delete_lead(&self, host: &str, lead_id: u64) -> anyhow::Result<()> {
        self.shared.delete_lead(host, lead_id)
    }

    /// Deletes a pipeline and its leads, as an admin in the UI would.
    pub fn delete_pipeline(&self, host: &str, pipeline_id: u64) -> anyhow::Result<()> {
        self.shared.delete_pipeline(host, pipeline_id)
    }

    /// Deletes a lead custom field (and its values), as an admin in the UI would.
    pub fn delete_custom_field(&self, host: &str, field_id: u64) -> anyhow::Result<()> {
        self.shared.delete_custom_field(host, field_id)
    }

    /// The admin disabled the integration: its tokens are revoked (API → 401, refresh refused) and the
    /// uninstall hook is sent when configured. Returns whether a grant existed.
    pub fn revoke_grant(&self, host: &str, client_id: &str) -> bool {
        self.shared.revoke_grant(host, client_id)
    }

    /// Every outgoing webhook and uninstall hook finished so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.lock().deliveries.clone()
    }

    /// Outgoing requests queued or in flight.
    pub fn deliveries_in_flight(&self) -> usize {
        self.shared.outbound.inflight.current()
    }

    /// Resolves when every queued webhook / uninstall hook has been delivered or has failed.
    pub async fn webhooks_idle(&self) {
        self.shared.outbound.inflight.idle().await;
    }

    /// Stops serving (held connections are released) and waits for the server to finish.
    pub async fn stop(mut self) {
        let _ = self.shared.shutdown.send(true);
        if let Some(server) = self.server.take() {
            server.stop(false).await;
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        let _ = self.shared.shutdown.send(true);
        if let Some(server) = self.server.take() {
            // The stop command is sent when `stop` is called; the returned future only awaits it.
            drop(server.stop(false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handle_can_be_shared_across_threads_and_tasks() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<SandboxHandle>();
    }

    #[actix_web::test]
    async fn it_runs_under_the_actix_runtime_too() -> anyhow::Result<()> {
        let sb = Sandbox::start(SandboxConfig::default()).await?;
        let resp = reqwest::get(format!("{}/_sandbox/accounts", sb.base_url())).await?;
        assert_eq!(resp.status(), 200);
        sb.stop().await;
        Ok(())
    }

    #[test]
    fn it_starts_from_a_plain_thread_with_a_throwaway_runtime() -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let sb = rt.block_on(Sandbox::start(SandboxConfig::default()))?;
        let id = sb.add_account("extra.amocrm.ru");
        assert_eq!(sb.account_id("extra.amocrm.ru"), Some(id));
        drop(sb);
        Ok(())
    }
}
