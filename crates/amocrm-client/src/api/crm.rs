//! Calls that complete a deal around its lead: notes, contacts and companies, lists and their elements, entity
//! links, users, tasks and unsorted requests. Batches are refused locally above amoCRM's 250; a 204 is an
//! empty result, never an error.

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{AccountApi, Links, MAX_PAGES, check_count, decode};
use crate::entities::{
    Catalog, CatalogElement, Company, ComplexLeadItem, Contact, ContactCreate, ContactUpdate,
    ContactsPage, CreatedContact, CreatedNote, CreatedTask, EntityLink, LeadProducts,
    NewCatalogElement, NewLink, NewNote, NewTask, NewUnsortedForm, Note, RawLeadProducts, Task,
    Unsorted, UpdatedContact, User,
};
use crate::error::ApiError;
use crate::models::ComplexLeadResult;

/// Most entities amoCRM takes or returns in one request.
pub const MAX_BATCH: usize = 250;
/// Ids per filtered read: a whole batch (about 6 KB of query string for 250 lead ids, inside the 8 KB most
/// servers take), so reading back a batch of notes or links costs one request.
const IDS_PER_READ: usize = 250;

/// A HAL page: one list under a named key in `_embedded`, and whether `_links.next` is set.
#[derive(Deserialize)]
struct AnyPage {
    #[serde(rename = "_embedded", default)]
    embedded: Option<Map<String, Value>>,
    #[serde(rename = "_links", default)]
    links: Option<Links>,
}

/// The list under `key` of a page body (`None`: a 204) and whether another page follows.
fn list_of<T: DeserializeOwned>(
    body: Option<Vec<u8>>,
    key: &str,
) -> Result<(Vec<T>, bool), ApiError> {
    let Some(body) = body else {
        return Ok((Vec::new(), false));
    };
    let page: AnyPage = decode(&body)?;
    let next = page
        .links
        .and_then(|l| l.next)
        .is_some_and(|n| !n.is_null());
    let items = match page.embedded.and_then(|mut e| e.remove(key)) {
        None | Some(Value::Null) => return Ok((Vec::new(), next)),
        Some(v) => v,
    };
    let items = serde_json::from_value(items)
        .map_err(|e| ApiError::Decode(crate::error::truncate(&e.to_string(), 300)))?;
    Ok((items, next))
}

fn check_batch(what: &str, n: usize) -> Result<(), ApiError> {
    check_count(what, n, MAX_BATCH, "at once")
}

/// The body of a batch write: `None` for an empty batch (nothing to send), an error above [`MAX_BATCH`].
fn batch_body<T: Serialize>(what: &str, items: &[T]) -> Result<Option<Value>, ApiError> {
    check_batch(what, items.len())?;
    if items.is_empty() {
        return Ok(None);
    }
    serde_json::to_value(items)
        .map(Some)
        .map_err(|e| ApiError::Request(e.to_string()))
}

fn pair(k: &str, v: impl ToString) -> (String, String) {
    (k.to_owned(), v.to_string())
}

fn id_filter(key: &str, ids: &[u64]) -> Vec<(String, String)> {
    ids.iter()
        .map(|id| (format!("filter[{key}][]"), id.to_string()))
        .collect()
}

/// An unsorted uid goes into a path: only the characters amoCRM's uids use.
fn check_uid(uid: &str) -> Result<(), ApiError> {
    let ok = !uid.is_empty()
        && uid.len() <= 128
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::Request(format!("not an unsorted uid: {uid:?}")))
    }
}

impl AccountApi<'_> {
    /// Writes a batch of up to [`MAX_BATCH`] items (`what` names it in the local refusal) and returns the
    /// list under `key` of the answer; an empty batch is not sent.
    async fn write_batch<T: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        what: &str,
        items: &[T],
        key: &str,
    ) -> Result<Vec<R>, ApiError> {
        let Some(body) = batch_body(what, items)? else {
            return Ok(Vec::new());
        };
        let resp = self.send(method, path, &[], Some(&body)).await?;
        Ok(list_of(resp, key)?.0)
    }

    /// Reads every page of a list (`limit=250`), `base` query included in each request.
    async fn all_pages<T: DeserializeOwned>(
        &self,
        path: &str,
        base: &[(String, String)],
        key: &str,
    ) -> Result<Vec<T>, ApiError> {
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let mut q = base.to_vec();
            q.push(pair("limit", MAX_BATCH));
            q.push(pair("page", page));
            let (items, next) = list_of::<T>(self.send(Method::GET, path, &q, None).await?, key)?;
            let empty = items.is_empty();
            out.extend(items);
            if !next || empty {
                break;
            }
        }
        Ok(out)
    }

    /// `POST /api/v4/leads/complex` with the options [`ComplexLeadItem`] adds (existing contact or company by
    /// id, responsible users, unsorted metadata); 1 to 50 leads.
    #[tracing::instrument(skip_all, fields(host = %self.host, count = items.len()))]
    pub async fn leads_complex_items(
        &self,
        items: &[ComplexLeadItem],
    ) -> Result<Vec<ComplexLeadResult>, ApiError> {
        self.post_complex(items.iter().map(ComplexLeadItem::to_api).collect())
            .await
    }

    /// `PATCH /api/v4/leads/pipelines/{id}` with `is_unsorted_on`: unsorted requests need it on.
    #[tracing::instrument(skip_all, fields(host = %self.host, pipeline_id))]
    pub async fn set_pipeline_unsorted(&self, pipeline_id: u64, on: bool) -> Result<(), ApiError> {
        let path = format!("api/v4/leads/pipelines/{pipeline_id}");
        self.send(
            Method::PATCH,
            &path,
            &[],
            Some(&json!({ "is_unsorted_on": on })),
        )
        .await
        .map(|_| ())
    }

    /// `POST /api/v4/leads/notes`: notes naming their leads, up to 250. There is no idempotency key: on
    /// [`ApiError::Ambiguous`] read the leads' notes before writing again.
    #[tracing::instrument(skip_all, fields(host = %self.host, count = notes.len()))]
    pub async fn create_lead_notes(&self, notes: &[NewNote]) -> Result<Vec<CreatedNote>, ApiError> {
        let items: Vec<Value> = notes.iter().map(|n| n.to_api(true)).collect();
        self.write_batch(
            Method::POST,
            "api/v4/leads/notes",
            "leads/notes",
            &items,
            "notes",
        )
        .await
    }

    /// `POST /api/v4/leads/{id}/notes`: notes on one lead (their `lead_id` is not sent), up to 250.
    #[tracing::instrument(skip_all, fields(host = %self.host, lead_id, count = notes.len()))]
    pub async fn create_notes_for_lead(
        &self,
        lead_id: u64,
        notes: &[NewNote],
    ) -> Result<Vec<CreatedNote>, ApiError> {
        let items: Vec<Value> = notes.iter().map(|n| n.to_api(false)).collect();
        let path = format!("api/v4/leads/{lead_id}/notes");
        self.write_batch(Method::POST, &path, "leads/{id}/notes", &items, "notes")
            .await
    }

    /// The notes of these leads (`GET /api/v4/leads/notes?filter[entity_id][]=…`), of one type if given, every
    /// page, asked 50 leads at a time.
    #[tracing::instrument(skip_all, fields(host = %self.host, count = lead_ids.len()))]
    pub async fn lead_notes(
        &self,
        lead_ids: &[u64],
        note_type: Option<&str>,
    ) -> Result<Vec<Note>, ApiError> {
        let mut out = Vec::new();
        for chunk in lead_ids.chunks(IDS_PER_READ) {
            let mut q = id_filter("entity_id", chunk);
            if let Some(t) = note_type {
                q.push(pair("filter[note_type]", t));
            }
            out.extend(self.all_pages("api/v4/leads/notes", &q, "notes").await?);
        }
        Ok(out)
    }

    /// The notes of one lead (`GET /api/v4/leads/{id}/notes`), of one type if given.
    #[tracing::instrument(skip_all, fields(host = %self.host, lead_id))]
    pub async fn notes_of_lead(
        &self,
        lead_id: u64,
        note_type: Option<&str>,
    ) -> Result<Vec<Note>, ApiError> {
        let q: Vec<_> = note_type
            .map(|t| pair("filter[note_type]", t))
            .into_iter()
            .collect();
        self.all_pages(&format!("api/v4/leads/{lead_id}/notes"), &q, "notes")
            .await
    }

    /// `GET /api/v4/contacts?query=` (every filled field, as substrings): check the hit's `PHONE` or `EMAIL`
    /// really equals the buyer's. One page of at most `limit` (1 to 250).
    #[tracing::instrument(skip_all, fields(host = %self.host))]
    pub async fn search_contacts(&self, query: &str, limit: u32) -> Result<Vec<Contact>, ApiError> {
        let q = vec![pair("query", query), pair("limit", limit.clamp(1, 250))];
        let resp = self.send(Method::GET, "api/v4/contacts", &q, None).await?;
        Ok(list_of(resp, "contacts")?.0)
    }

    /// One page of all contacts (`page` from 1, `limit` 1 to 250) and whether another follows.
    #[tracing::instrument(skip_all, fields(host = %self.host, page))]
    pub async fn contacts_page(&self, page: u32, limit: u32) -> Result<ContactsPage, ApiError> {
        let q = vec![
            pair("page", page.max(1)),
            pair("limit", limit.clamp(1, 250)),
        ];
        let resp = self.send(Method::GET, "api/v4/contacts", &q, None).await?;
        let (contacts, has_next) = list_of(resp, "contacts")?;
        Ok(ContactsPage { contacts, has_next })
    }

    /// `GET /api/v4/contacts/{id}?with=leads`; `None` when it does not exist.
    #[tracing::instrument(skip_all, fields(host = %self.host, contact_id = id))]
    pub async fn get_contact(&self, id: u64) -> Result<Option<Contact>, ApiError> {
        let path = format!("api/v4/contacts/{id}");
        self.get_one(&path, &[pair("with", "leads")]).await
    }

    /// `POST /api/v4/contacts`, up to 250.
    #[tracing::instrument(skip_all, fields(host = %self.host, count = contacts.len()))]
    pub async fn create_contacts(
        &self,
        contacts: &[ContactCreate],
    ) -> Result<Vec<CreatedContact>, ApiError> {
        self.write_batch(
            Method::POST,
            "api/v4/contacts",
            "POST contacts",
            contacts,
            "contacts",
        )
        .await
    }

    /// `PATCH /api/v4/contacts`, up to 250. Every field sent replaces that field's whole value list.
    #[tracing::instrument(skip_all, fields(host = %self.host, count = updates.len()))]
    pub async fn update_contacts(
        &self,
        updates: &[ContactUpdate],
    ) -> Result<Vec<UpdatedContact>, ApiError> {
        self.write_batch(
            Method::PATCH,
            "api/v4/contacts",
            "PATCH contacts",
            updates,
            "contacts",
        )
        .await
    }

    /// `GET /api/v4/companies?query=` (up to 50 candidates; compare names exactly).
    #[tracing::instrument(skip_all, fields(host = %self.host))]
    pub async fn search_companies(&self, query: &str) -> Result<Vec<Company>, ApiError> {
        let q = vec![pair("query", query), pair("limit", 50)];
        let resp = self.send(Method::GET, "api/v4/companies", &q, None).await?;
        Ok(list_of(resp, "companies")?.0)
    }

    /// `GET /api/v4/companies/{id}`; `None` when it does not exist.
    #[tracing::instrument(skip_all, fields(host = %self.host, company_id = id))]
    pub async fn get_company(&self, id: u64) -> Result<Option<Company>, ApiError> {
        self.get_one(&format!("api/v4/companies/{id}"), &[]).await
    }

    /// `GET /api/v4/catalogs`: every list of the account.
    #[tracing::instrument(skip_all, fields(host = %self.host))]
    pub async fn catalogs(&self) -> Result<Vec<Catalog>, ApiError> {
        self.all_pages("api/v4/catalogs", &[], "catalogs").await
    }

    /// The products list, found by type (its name is localised); `None` when Products is off.
    #[tracing::instrument(skip_all, fields(host = %self.host))]
    pub async fn products_catalog(&self) -> Result<Option<Catalog>, ApiError> {
        Ok(self
            .catalogs()
            .await?
            .into_iter()
            .find(Catalog::is_products))
    }

    /// `GET /api/v4/catalogs/{id}/elements?query=` (name and field values as substrings: compare the `SKU`
    /// exactly). One page of at most `limit` (1 to 250).
    #[tracing::instrument(skip_all, fields(host = %self.host, catalog_id))]
    pub async fn search_catalog_elements(
        &self,
        catalog_id: u64,
        query: &str,
        limit: u32,
    ) -> Result<Vec<CatalogElement>, ApiError> {
        let q = vec![pair("query", query), pair("limit", limit.clamp(1, 250))];
        let path = format!("api/v4/catalogs/{catalog_id}/elements");
        let resp = self.send(Method::GET, &path, &q, None).await?;
        Ok(list_of(resp, "elements")?.0)
    }

    /// `POST /api/v4/catalogs/{id}/elements`, up to 250; the created elements in request order.
    #[tracing::instrument(skip_all, fields(host = %self.host, catalog_id, count = elements.len()))]
    pub async fn create_catalog_elements(
        &self,
        catalog_id: u64,
        elements: &[NewCatalogElement],
    ) -> Result<Vec<CatalogElement>, ApiError> {
        let path = format!("api/v4/catalogs/{catalog_id}/elements");
        self.write_batch(
            Method::POST,
            &path,
            "catalog elements",
            elements,
            "elements",
        )
        .await
    }

    /// `POST /api/v4/leads/link`, up to 250. Linking an element again sets its quantity. amoCRM was seen to
    /// answer 200 while leaving links out: read them back ([`Self::lead_links`],
    /// [`crate::unconfirmed_links`]).
    #[tracing::instrument(skip_all, fields(host = %self.host, count = links.len()))]
    pub async fn link_leads(&self, links: &[NewLink]) -> Result<Vec<EntityLink>, ApiError> {
        let items: Vec<Value> = links.iter().map(NewLink::to_api).collect();
        self.write_batch(
            Method::POST,
            "api/v4/leads/link",
            "leads/link",
            &items,
            "links",
        )
        .await
    }

    /// `POST /api/v4/leads/unlink`, up to 250.
    #[tracing::instrument(skip_all, fields(host = %self.host, count = links.len()))]
    pub async fn unlink_leads(&self, links: &[NewLink]) -> Result<(), ApiError> {
        let items: Vec<Value> = links.iter().map(NewLink::to_api).collect();
        let Some(body) = batch_body("leads/unlink", &items)? else {
            return Ok(());
        };
        self.send(Method::POST, "api/v4/leads/unlink", &[], Some(&body))
            .await
            .map(|_| ())
    }

    /// `GET /api/v4/leads/{id}/links`: the lead's contacts, company and list elements.
    #[tracing::instrument(skip_all, fields(host = %self.host, lead_id))]
    pub async fn lead_links(&self, lead_id: u64) -> Result<Vec<EntityLink>, ApiError> {
        let path = format!("api/v4/leads/{lead_id}/links");
        let resp = self.send(Method::GET, &path, &[], None).await?;
        Ok(list_of(resp, "links")?.0)
    }

    /// The products on these leads (`GET /api/v4/leads?filter[id][]=…&with=catalog_elements`), 50 leads a
    /// request. Leads that no longer exist are absent.
    #[tracing::instrument(skip_all, fields(host = %self.host, count = lead_ids.len()))]
    pub async fn leads_catalog_elements(
        &self,
        lead_ids: &[u64],
    ) -> Result<Vec<LeadProducts>, ApiError> {
        let mut out = Vec::new();
        for chunk in lead_ids.chunks(IDS_PER_READ) {
            let mut q = id_filter("id", chunk);
            q.push(pair("with", "catalog_elements"));
            let leads: Vec<RawLeadProducts> = self.all_pages("api/v4/leads", &q, "leads").await?;
            out.extend(leads.into_iter().map(LeadProducts::from));
        }
        Ok(out)
    }

    /// `GET /api/v4/users?with=role,group`, every page. Administrators only: another user's token gets
    /// [`ApiError::Forbidden`] ([`ApiError::is_forbidden`]).
    #[tracing::instrument(skip_all, fields(host = %self.host))]
    pub async fn users(&self) -> Result<Vec<User>, ApiError> {
        self.all_pages("api/v4/users", &[pair("with", "role,group")], "users")
            .await
    }

    /// `POST /api/v4/tasks`, up to 250.
    #[tracing::instrument(skip_all, fields(host = %self.host, count = tasks.len()))]
    pub async fn create_tasks(&self, tasks: &[NewTask]) -> Result<Vec<CreatedTask>, ApiError> {
        self.write_batch(Method::POST, "api/v4/tasks", "tasks", tasks, "tasks")
            .await
    }

    /// The tasks on these leads (`GET /api/v4/tasks?filter[entity_type]=leads&filter[entity_id][]=…`).
    #[tracing::instrument(skip_all, fields(host = %self.host, count = lead_ids.len()))]
    pub async fn lead_tasks(&self, lead_ids: &[u64]) -> Result<Vec<Task>, ApiError> {
        let mut out = Vec::new();
        for chunk in lead_ids.chunks(IDS_PER_READ) {
            let mut q = id_filter("entity_id", chunk);
            q.push(pair("filter[entity_type]", "leads"));
            out.extend(self.all_pages("api/v4/tasks", &q, "tasks").await?);
        }
        Ok(out)
    }

    /// `POST /api/v4/leads/unsorted/forms`, up to 250 requests; each answer names the uid, lead and contacts.
    #[tracing::instrument(skip_all, fields(host = %self.host, count = forms.len()))]
    pub async fn create_unsorted_forms(
        &self,
        forms: &[NewUnsortedForm],
    ) -> Result<Vec<Unsorted>, ApiError> {
        let items: Vec<Value> = forms.iter().map(NewUnsortedForm::to_api).collect();
        self.write_batch(
            Method::POST,
            "api/v4/leads/unsorted/forms",
            "leads/unsorted/forms",
            &items,
            "unsorted",
        )
        .await
    }

    /// `GET /api/v4/leads/unsorted?filter[uid]=…`: the request while it waits; `None` once accepted or
    /// declined (or unknown).
    #[tracing::instrument(skip_all, fields(host = %self.host))]
    pub async fn get_unsorted(&self, uid: &str) -> Result<Option<Unsorted>, ApiError> {
        check_uid(uid)?;
        let q = vec![pair("filter[uid]", uid)];
        let resp = self
            .send(Method::GET, "api/v4/leads/unsorted", &q, None)
            .await?;
        Ok(list_of::<Unsorted>(resp, "unsorted")?.0.into_iter().next())
    }

    /// `POST /api/v4/leads/unsorted/{uid}/accept`: the lead moves to `status_id` (or its pipeline's first
    /// stage); `user_id` accepts it.
    #[tracing::instrument(skip_all, fields(host = %self.host))]
    pub async fn accept_unsorted(
        &self,
        uid: &str,
        user_id: Option<u64>,
        status_id: Option<u64>,
    ) -> Result<Unsorted, ApiError> {
        check_uid(uid)?;
        let mut body = json!({});
        if let Some(u) = user_id {
            body["user_id"] = json!(u);
        }
        if let Some(s) = status_id {
            body["status_id"] = json!(s);
        }
        let path = format!("api/v4/leads/unsorted/{uid}/accept");
        let resp = self.send(Method::POST, &path, &[], Some(&body)).await?;
        unsorted_answer(resp, uid)
    }

    /// `DELETE /api/v4/leads/unsorted/{uid}/decline`: the lead is closed as lost.
    #[tracing::instrument(skip_all, fields(host = %self.host))]
    pub async fn decline_unsorted(
        &self,
        uid: &str,
        user_id: Option<u64>,
    ) -> Result<Unsorted, ApiError> {
        check_uid(uid)?;
        let body = user_id.map(|u| json!({ "user_id": u }));
        let path = format!("api/v4/leads/unsorted/{uid}/decline");
        let resp = self.send(Method::DELETE, &path, &[], body.as_ref()).await?;
        unsorted_answer(resp, uid)
    }
}

/// An accept/decline answer; an empty one still names the uid.
fn unsorted_answer(body: Option<Vec<u8>>, uid: &str) -> Result<Unsorted, ApiError> {
    match body {
        Some(b) => decode(&b),
        None => Ok(Unsorted {
            uid: uid.to_owned(),
            ..Unsorted::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
    use super::*;

    #[test]
    fn lists_are_read_under_their_key_with_the_next_link_and_204_is_empty() {
        let body = br#"{"_page":1,"_links":{"self":{"href":"x"},"next":{"href":"y"}},
            "_embedded":{"notes":[{"id":"5","entity_id":7,"note_type":"common","params":{"text":"hi"}}]}}"#;
        let (notes, next): (Vec<Note>, bool) = list_of(Some(body.to_vec()), "notes").unwrap();
        assert!(next);
        assert_eq!(
            (notes[0].id, notes[0].entity_id, notes[0].text()),
            (5, Some(7), "hi")
        );
        let (none, next): (Vec<Note>, bool) = list_of(None, "notes").unwrap();
        assert!(none.is_empty() && !next);
        let (empty, _): (Vec<Note>, bool) =
            list_of(Some(br#"{"_embedded":{"notes":null}}"#.to_vec()), "notes").unwrap();
        assert!(empty.is_empty());
        assert!(list_of::<Note>(Some(b"<html>".to_vec()), "notes").is_err());
    }

    #[test]
    fn uids_with_path_characters_are_refused_locally() {
        assert!(check_uid("a1fee7c0fc436088e64ba2e8822ba2b3").is_ok());
        assert!(check_uid("../leads").is_err());
        assert!(check_uid("").is_err());
        assert!(check_batch("x", 251).is_err());
        assert!(check_batch("x", 250).is_ok());
    }
}
