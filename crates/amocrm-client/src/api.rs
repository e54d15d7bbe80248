//! API v4 calls for one account: account, pipelines, custom fields, leads (complex create, search, read, move)
//! and webhook subscriptions here; notes, contacts, companies, lists, links, users, tasks and unsorted requests
//! in its `crm` part. Every request waits for the account's rate-limit slot first.

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

mod crm;

pub use crm::MAX_BATCH;

use crate::client::AmoClient;
use crate::error::{ApiError, classify_status, classify_transport, truncate};
use crate::host::AccountHost;
use crate::models::{
    Account, ComplexLead, ComplexLeadResult, CustomField, Lead, LeadQuery, LeadUpdate,
    NewCustomField, NewPipeline, Pipeline, RawPipeline, UpdatedLead, Webhook,
};

/// Most leads amoCRM accepts in one `leads/complex` call.
pub const MAX_COMPLEX_LEADS: usize = 50;
/// Most leads amoCRM accepts in one `PATCH /api/v4/leads` (it recommends 50).
pub const MAX_PATCH_LEADS: usize = 250;
/// Largest response body read (amoCRM pages hold at most 250 objects).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Safety stop for paged reads.
pub(crate) const MAX_PAGES: u32 = 200;

/// Calls for one account with one access token; borrow it from [`AmoClient::api`].
#[derive(Clone, Copy)]
pub struct AccountApi<'a> {
    client: &'a AmoClient,
    host: &'a AccountHost,
    token: &'a SecretString,
}

impl std::fmt::Debug for AccountApi<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountApi")
            .field("host", &self.host.as_str())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Embedded<T> {
    #[serde(rename = "_embedded")]
    embedded: Option<T>,
    #[serde(rename = "_links", default)]
    links: Option<Links>,
}

#[derive(Deserialize, Default)]
struct Links {
    #[serde(default)]
    next: Option<Value>,
}

#[derive(Deserialize)]
struct Pipelines {
    #[serde(default, deserialize_with = "crate::models::de::null_as_default")]
    pipelines: Vec<RawPipeline>,
}

#[derive(Deserialize)]
struct CustomFields {
    #[serde(default, deserialize_with = "crate::models::de::null_as_default")]
    custom_fields: Vec<CustomField>,
}

#[derive(Deserialize)]
struct Leads<T> {
    #[serde(default = "Vec::new")]
    leads: Vec<T>,
}

#[derive(Deserialize)]
struct Webhooks {
    #[serde(default, deserialize_with = "crate::models::de::null_as_default")]
    webhooks: Vec<Webhook>,
}

impl<'a> AccountApi<'a> {
    pub(crate) fn new(
        client: &'a AmoClient,
        host: &'a AccountHost,
        token: &'a SecretString,
    ) -> Self {
        Self {
            client,
            host,
            token,
        }
    }

    /// `GET /api/v4/account`: confirms which account the token belongs to.
    #[tracing::instrument(skip_all, fields(host = %self.host))]
    pub async fn account(&self) -> Result<Account, ApiError> {
        let body = self.send(Method::GET, "api/v4/account", &[], None).await?;
        decode(&body.ok_or_else(|| ApiError::Decode("empty account response".into()))?)
    }

    /// `GET /api/v4/leads/pipelines`: every pipeline with its statuses (amoCRM does not page this list).
    #[tracing::instrument(skip_all, fields(host = %self.host))]
    pub async fn pipelines(&self) -> Result<Vec<Pipeline>, ApiError> {
        let Some(body) = self
            .send(Method::GET, "api/v4/leads/pipelines", &[], None)
            .await?
        else {
            return Ok(Vec::new());
        };
        let page: Embedded<Pipelines> = decode(&body)?;
        Ok(page
            .embedded
            .map(|e| e.pipelines.into_iter().map(Pipeline::from).collect())
            .unwrap_or_default())
    }

    /// `POST /api/v4/leads/pipelines` with one pipeline; returns it as created (system statuses added).
    #[tracing::instrument(skip_all, fields(host = %self.host))]
    pub async fn create_pipeline(&self, pipeline: &NewPipeline) -> Result<Pipeline, ApiError> {
        let body = json!([pipeline.to_api()]);
        let resp = self
            .send(Method::POST, "api/v4/leads/pipelines", &[], Some(&body))
            .await?
            .ok_or_else(|| ApiError::Decode("empty pipeline create response".into()))?;
        let page: Embedded<Pipelines> = decode(&resp)?;
        page.embedded
            .and_then(|e| e.pipelines.into_iter().next())
            .map(Pipeline::from)
            .ok_or_else(|| ApiError::Decode("pipeline create response lists no pipeline".into()))
    }

    /// `GET /api/v4/leads/pipelines/{id}`; `None` when it no longer exists.
    #[tracing::instrument(skip_all, fields(host = %self.host, pipeline_id = id))]
    pub async fn get_pipeline(&self, id: u64) -> Result<Option<Pipeline>, ApiError> {
        let path = format!("api/v4/leads/pipelines/{id}");
        let raw: Option<RawPipeline> = self.get_one(&path, &[]).await?;
        Ok(raw.map(Pipeline::from))
    }

    /// `GET /api/v4/leads/custom_fields`, following pages until the last one.
    #[tracing::instrument(skip_all, fields(host = %self.host))]
    pub async fn lead_custom_fields(&self) -> Result<Vec<CustomField>, ApiError> {
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let query = [
                ("page".to_owned(), page.to_string()),
                ("limit".to_owned(), "250".to_owned()),
            ];
            let Some(body) = self
                .send(Method::GET, "api/v4/leads/custom_fields", &query, None)
                .await?
            else {
                break;
            };
            let resp: Embedded<CustomFields> = decode(&body)?;
            let fields = resp.embedded.map(|e| e.custom_fields).unwrap_or_default();
            let has_next = resp
                .links
                .and_then(|l| l.next)
                .is_some_and(|n| !n.is_null());
            if fields.is_empty() {
                break;
            }
            all.extend(fields);
            if !has_next {
                break;
            }
        }
        Ok(all)
    }

    /// `POST /api/v4/leads/custom_fields`; returns the created fields in request order.
    #[tracing::instrument(skip_all, fields(host = %self.host, count = fields.len()))]
    pub async fn create_lead_custom_fields(
        &self,
        fields: &[NewCustomField],
    ) -> Result<Vec<CustomField>, ApiError> {
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let body = serde_json::to_value(fields).map_err(|e| ApiError::Request(e.to_string()))?;
        let resp = self
            .send(Method::POST, "api/v4/leads/custom_fields", &[], Some(&body))
            .await?
            .ok_or_else(|| ApiError::Decode("empty custom field create response".into()))?;
        let page: Embedded<CustomFields> = decode(&resp)?;
        Ok(page.embedded.map(|e| e.custom_fields).unwrap_or_default())
    }

    /// `POST /api/v4/leads/complex` with 1 to 50 leads. On [`ApiError::Ambiguous`] the leads may exist: search
    /// before sending them again.
    #[tracing::instrument(skip_all, fields(host = %self.host, count = leads.len()))]
    pub async fn leads_complex(
        &self,
        leads: &[ComplexLead],
    ) -> Result<Vec<ComplexLeadResult>, ApiError> {
        self.post_complex(leads.iter().map(ComplexLead::to_api).collect())
            .await
    }

    /// `POST /api/v4/leads/complex` with leads already in amoCRM's shape: none is no call, more than
    /// [`MAX_COMPLEX_LEADS`] is refused locally.
    pub(crate) async fn post_complex(
        &self,
        leads: Vec<Value>,
    ) -> Result<Vec<ComplexLeadResult>, ApiError> {
        if leads.is_empty() {
            return Ok(Vec::new());
        }
        check_count("leads/complex", leads.len(), MAX_COMPLEX_LEADS, "leads")?;
        let body = Value::Array(leads);
        let resp = self
            .send(Method::POST, "api/v4/leads/complex", &[], Some(&body))
            .await?
            .ok_or_else(|| ApiError::Decode("empty leads/complex response".into()))?;
        decode(&resp)
    }

    /// `GET` of one entity; `None` when it does not exist (404, or an empty answer).
    pub(crate) async fn get_one<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(String, String)],
    ) -> Result<Option<T>, ApiError> {
        match self.send(Method::GET, path, query, None).await {
            Ok(Some(body)) => Ok(Some(decode(&body)?)),
            Ok(None) | Err(ApiError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /api/v4/leads` with filters; an empty result (204) is an empty list.
    #[tracing::instrument(skip_all, fields(host = %self.host))]
    pub async fn search_leads(&self, query: &LeadQuery) -> Result<Vec<Lead>, ApiError> {
        let Some(body) = self
            .send(Method::GET, "api/v4/leads", &query.to_pairs(), None)
            .await?
        else {
            return Ok(Vec::new());
        };
        let page: Embedded<Leads<Lead>> = decode(&body)?;
        Ok(page.embedded.map(|e| e.leads).unwrap_or_default())
    }

    /// `GET /api/v4/leads/{id}`; `None` when it does not exist (or was deleted).
    #[tracing::instrument(skip_all, fields(host = %self.host, lead_id = id))]
    pub async fn get_lead(&self, id: u64) -> Result<Option<Lead>, ApiError> {
        self.get_one(&format!("api/v4/leads/{id}"), &[]).await
    }

    /// `PATCH /api/v4/leads`: moves leads to the given pipeline and status (send at most 50 at once).
    #[tracing::instrument(skip_all, fields(host = %self.host, count = updates.len()))]
    pub async fn update_leads(&self, updates: &[LeadUpdate]) -> Result<Vec<UpdatedLead>, ApiError> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        check_count("PATCH leads", updates.len(), MAX_PATCH_LEADS, "leads")?;
        let body = serde_json::to_value(updates).map_err(|e| ApiError::Request(e.to_string()))?;
        let Some(resp) = self
            .send(Method::PATCH, "api/v4/leads", &[], Some(&body))
            .await?
        else {
            return Ok(Vec::new());
        };
        let page: Embedded<Leads<UpdatedLead>> = decode(&resp)?;
        Ok(page.embedded.map(|e| e.leads).unwrap_or_default())
    }

    /// `GET /api/v4/webhooks`: the account's subscriptions, with `disabled` for those amoCRM gave up on.
    #[tracing::instrument(skip_all, fields(host = %self.host))]
    pub async fn webhooks(&self) -> Result<Vec<Webhook>, ApiError> {
        let Some(body) = self.send(Method::GET, "api/v4/webhooks", &[], None).await? else {
            return Ok(Vec::new());
        };
        let page: Embedded<Webhooks> = decode(&body)?;
        Ok(page.embedded.map(|e| e.webhooks).unwrap_or_default())
    }

    /// `POST /api/v4/webhooks`: subscribes `destination` to events such as `add_lead`, `status_lead`.
    /// Subscribing an existing destination again updates its settings (and re-enables it).
    #[tracing::instrument(skip_all, fields(host = %self.host))]
    pub async fn subscribe_webhook<S: AsRef<str>>(
        &self,
        destination: &str,
        settings: &[S],
    ) -> Result<Webhook, ApiError> {
        let settings: Vec<&str> = settings.iter().map(AsRef::as_ref).collect();
        let body = json!({ "destination": destination, "settings": settings, "sort": 10 });
        let resp = self
            .send(Method::POST, "api/v4/webhooks", &[], Some(&body))
            .await?
            .ok_or_else(|| ApiError::Decode("empty webhook subscribe response".into()))?;
        decode(&resp)
    }

    /// `DELETE /api/v4/webhooks` for `destination` (amoCRM answers 204).
    #[tracing::instrument(skip_all, fields(host = %self.host))]
    pub async fn unsubscribe_webhook(&self, destination: &str) -> Result<(), ApiError> {
        let body = json!({ "destination": destination });
        self.send(Method::DELETE, "api/v4/webhooks", &[], Some(&body))
            .await
            .map(|_| ())
    }

    /// Sends one request after taking a rate-limit slot. `Ok(None)` is a 204 or an empty 2xx body.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let cfg = self.client.config();
        let mut url = cfg
            .account_url(self.host, path)
            .map_err(|e| ApiError::Request(format!("bad account URL: {e}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut req = self
            .client
            .http()
            .request(method.clone(), url)
            .bearer_auth(self.token.expose_secret())
            .header("X-Client-UUID", cfg.client_id.as_str())
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            req = req.json(body);
        }
        let slot = self.client.admit(self.host).await;
        let started = std::time::Instant::now();
        let observe = |outcome| self.client.observe(method.as_str(), path, outcome, started);
        let sent = req.send().await;
        // Answered (or given up): the request has reached amoCRM if it ever will; its slot counts from now.
        drop(slot);
        let mut resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                let err = classify_transport(&e);
                observe(transport_outcome(&e));
                tracing::warn!(%method, path, error = %err, "amoCRM request failed");
                return Err(err);
            }
        };
        let status = resp.status();
        let request_id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(|s| truncate(s, 64));
        let headers = resp.headers().clone();
        let mut bytes = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Err(ApiError::Decode("response body too large".into()));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    let err = classify_transport(&e);
                    observe(transport_outcome(&e));
                    tracing::warn!(%method, path, status = status.as_u16(), error = %err, "amoCRM response cut off");
                    return Err(err);
                }
            }
        }
        observe(crate::observe::CallOutcome::Status(status.as_u16()));
        if status.is_success() {
            tracing::debug!(%method, path, status = status.as_u16(), request_id, "amoCRM request done");
            if status == reqwest::StatusCode::NO_CONTENT
                || bytes.iter().all(u8::is_ascii_whitespace)
            {
                return Ok(None);
            }
            return Ok(Some(bytes));
        }
        let err = classify_status(status, &headers, &bytes);
        tracing::warn!(%method, path, status = status.as_u16(), request_id, error = %err, "amoCRM request refused");
        Err(err)
    }
}

/// The observer's class of a transport failure.
pub(crate) fn transport_outcome(e: &reqwest::Error) -> crate::observe::CallOutcome {
    if e.is_timeout() {
        crate::observe::CallOutcome::Timeout
    } else if e.is_builder() {
        crate::observe::CallOutcome::Other
    } else {
        crate::observe::CallOutcome::Network
    }
}

/// Refuses locally a batch of `n` when amoCRM takes at most `max` in one call (`unit`: "leads", "at once").
fn check_count(what: &str, n: usize, max: usize, unit: &str) -> Result<(), ApiError> {
    if n > max {
        return Err(ApiError::Request(format!(
            "{what} takes at most {max} {unit}, got {n}"
        )));
    }
    Ok(())
}

pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Decode(truncate(&e.to_string(), 300)))
}
