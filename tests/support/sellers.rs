//! Sellers and their connections without the consent flow: rows as a first connect stores them
//! (`NewConnection::connected`), a real sandbox grant, and the connect flow's own provisioning.

use std::collections::HashMap;
use std::time::Duration;

use amocrm_client::{AccountApi, AccountHost, ComplexLead, FieldValue};
use amocrm_connector::domain::ids::random_token;
use amocrm_connector::domain::status::{ConnectionStatus, ProvisioningState};
use amocrm_connector::services::ingest::AMOCRM_WEBHOOK_SETTINGS;
use amocrm_connector::services::provisioning;
use amocrm_connector::storage::connections::{
    ConnectedAccount, Connection, NewConnection, seal_tokens,
};
use amocrm_sandbox::SandboxHandle;
use chrono::NaiveDateTime;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::app::TestApp;

/// The row a first connect stores (`NewConnection::connected`): active, the pair `tokens` (access,
/// refresh) sealed for `seller`'s row, valid until `expires_at`, provisioning still to do.
pub fn connection_row(
    app: &TestApp,
    seller: &str,
    host: &str,
    account_id: i64,
    (access, refresh): (&str, &str),
    expires_at: NaiveDateTime,
) -> NewConnection {
    let (access_token_enc, refresh_token_enc) =
        seal_tokens(&app.state.keys, seller, access, refresh);
    let account = ConnectedAccount {
        seller_id: seller.to_owned(),
        account_id,
        host: host.to_owned(),
        subdomain: host.split('.').next().unwrap_or(host).to_owned(),
        api_domain: None,
        access_token_enc,
        refresh_token_enc,
        expires_at,
    };
    NewConnection::connected(&account, random_token(40), amocrm_connector::storage::now())
}

/// Stores rows made by [`connection_row`] (the repository's `insert_many`, one transaction).
pub async fn insert_connections(app: &TestApp, rows: Vec<NewConnection>) {
    app.db
        .connections()
        .insert_many(rows)
        .await
        .expect("connections stored");
}

/// The row of an active connection to the sandbox account `host` holding a real grant.
fn granted_row(app: &TestApp, seller: &str, host: &str) -> NewConnection {
    let account_id = app.sandbox.add_account(host);
    let pair = app.sandbox.issue_tokens(&app.env["AMOCRM_CLIENT_ID"], host);
    let expires_at = amocrm_connector::storage::now() + chrono::Duration::seconds(pair.expires_in);
    connection_row(
        app,
        seller,
        host,
        i64::try_from(account_id).expect("an account id"),
        (&pair.access_token, &pair.refresh_token),
        expires_at,
    )
}

/// An active connection of `seller` to the sandbox account `host` with a real grant and nothing to
/// provision (no consent flow, nothing set up in amoCRM), for refresh tests; the stored row.
pub async fn seed_connection(app: &TestApp, seller: &str, host: &str) -> Connection {
    let mut row = granted_row(app, seller, host);
    row.provisioning_state = ProvisioningState::Complete;
    insert_connections(app, vec![row]).await;
    connection(app, seller).await.expect("stored")
}

/// The seller's connection as stored, whatever its status.
pub async fn connection(app: &TestApp, seller: &str) -> Option<Connection> {
    app.db
        .connections()
        .by_seller(seller)
        .await
        .expect("connection read")
}

/// The status of the seller's connection (which must exist).
pub async fn status_of(app: &TestApp, seller: &str) -> ConnectionStatus {
    connection(app, seller).await.expect("a connection").status
}

/// Sets a connection's status directly (what refresh failures, revocations and reconnects do).
pub async fn set_connection_status(app: &TestApp, seller: &str, status: &'static str) {
    use amocrm_connector::storage::schema::amocrm_connections as c;
    use diesel::prelude::*;
    app.update(
        c::table.filter(c::seller_id.eq(seller.to_owned())),
        c::status.eq(status),
    )
    .await;
}

/// How many events `name` were recorded for `seller`.
pub async fn event_count(app: &TestApp, seller: &str, name: &str) -> i64 {
    let (seller, name) = (seller.to_owned(), name.to_owned());
    app.db
        .run(move |c| amocrm_connector::storage::events::count_by_name(c, &seller, &name))
        .await
        .expect("events counted")
}

/// A seller connected to a sandbox account with our pipeline, fields and amoCRM webhook provisioned.
pub struct Seller {
    pub seller_id: String,
    pub host: String,
    /// `host` as the amoCRM client takes it.
    pub account: AccountHost,
    pub account_id: i64,
    pub webhook_token: String,
    pub pipeline_id: u64,
    /// Stage ids by order status (`pending`, `awaiting_payment`, `paid`, `shipping`, `completed`,
    /// `cancelled`).
    pub stages: HashMap<&'static str, u64>,
    pub field_number: u64,
    pub field_link: u64,
    /// The access token stored for the connection.
    pub token: SecretString,
}

/// Connects `seller_id` to the sandbox account `host` the way the connect flow leaves it: the token pair
/// stored encrypted, then the connect flow's own provisioning (pipeline, fields, webhook subscription).
pub async fn connect_seller(app: &TestApp, seller_id: &str, host: &str) -> Seller {
    insert_connections(app, vec![granted_row(app, seller_id, host)]).await;
    match provisioning::provision(&app.state, seller_id).await {
        Ok(report) => assert!(report.complete, "{report:?}"),
        // With the workers running, the connect worker may have taken the new row first: its run finishes.
        Err(provisioning::ProvisionError::Busy) => {
            super::wait::wait_until(Duration::from_secs(30), "provisioned by the worker", || async {
                let row = app.state.db.connections().by_seller(seller_id).await;
                matches!(row, Ok(Some(r)) if r.provisioning_state == ProvisioningState::Complete)
            })
            .await
            .expect("provisioned");
        }
        Err(e) => panic!("provisioned: {e:?}"),
    }
    Seller::of(app, seller_id).await
}

impl Seller {
    /// What the connection row says about the seller's pipeline, stages and fields now.
    pub async fn of(app: &TestApp, seller_id: &str) -> Seller {
        let row = connection(app, seller_id).await.expect("connection");
        let id = |v: Option<i64>| u64::try_from(v.expect("provisioned id")).expect("an id");
        let stages = HashMap::from([
            ("pending", id(row.stage_pending)),
            ("awaiting_payment", id(row.stage_awaiting_payment)),
            ("paid", id(row.stage_paid)),
            ("shipping", id(row.stage_shipping)),
            ("completed", id(row.stage_completed)),
            ("cancelled", id(row.stage_cancelled)),
        ]);
        let token = row
            .access_token(&app.state.keys)
            .expect("the token opens")
            .expect("a token");
        Seller {
            seller_id: seller_id.to_owned(),
            host: row.host.clone(),
            account: AccountHost::parse(&row.host, &app.state.amo.config().allowed_domains)
                .expect("a host"),
            account_id: row.account_id,
            webhook_token: row.webhook_token.clone(),
            pipeline_id: id(row.pipeline_id),
            stages,
            field_number: id(row.field_order_number_id),
            field_link: id(row.field_order_link_id),
            token: SecretString::from(token.expose_secret().to_owned()),
        }
    }

    /// Where amoCRM sends this connection's webhooks.
    pub fn intake_url(&self, app: &TestApp) -> String {
        app.url(&format!("/webhooks/amocrm/{}", self.webhook_token))
    }

    /// The seller's amoCRM API with the stored token, as the service calls it.
    pub fn api<'a>(&'a self, app: &'a TestApp) -> AccountApi<'a> {
        app.state.amo.api(&self.account, &self.token)
    }

    /// Creates a lead through the API as the order push does, with the order number in its field.
    pub async fn push_lead(&self, app: &TestApp, order_number: &str, price: i64) -> u64 {
        let lead = ComplexLead {
            name: format!("Buyurtma #{order_number}"),
            price,
            pipeline_id: self.pipeline_id,
            status_id: self.stages["pending"],
            request_id: format!("req-{order_number}"),
            custom_fields_values: vec![FieldValue::text(self.field_number, order_number)],
            tags: vec![],
            contact: None,
            company: None,
        };
        let res = self.api(app).leads_complex(&[lead]).await;
        res.expect("lead created")[0].id
    }

    /// A lead a manager makes in amoCRM, in our pipeline's first stage; its id.
    pub fn manager_lead(&self, app: &TestApp, name: &str, price: i64) -> u64 {
        let first_stage = Some((self.pipeline_id, self.stages["pending"]));
        app.sandbox
            .create_lead(&self.host, name, price, first_stage)
            .expect("lead made")
    }

    /// A manager moves `lead` to the stage of our pipeline mapped to `status` (`paid`, `completed`, …).
    pub fn move_to(&self, app: &TestApp, lead: u64, status: &str) {
        app.sandbox
            .move_lead(&self.host, lead, self.pipeline_id, self.stages[status])
            .expect("lead moved");
    }

    /// Points amoCRM's webhook for this account at `destination`.
    pub async fn subscribe_amocrm(&self, app: &TestApp, destination: &str) {
        let api = self.api(app);
        let subscribed = api.subscribe_webhook(destination, &AMOCRM_WEBHOOK_SETTINGS);
        subscribed.await.expect("subscribed");
    }

    /// Stops amoCRM's webhook for this account to `destination`.
    pub async fn unsubscribe_amocrm(&self, app: &TestApp, destination: &str) {
        let api = self.api(app);
        api.unsubscribe_webhook(destination)
            .await
            .expect("unsubscribed");
    }
}

/// A marketplace order of `seller_id` numbered `number`: two items, a buyer with a company, a link, a tag.
pub fn order_body(seller_id: &str, number: &str) -> Value {
    json!({
        "seller_id": seller_id,
        "order_number": number,
        "total_amount": 150000,
        "currency": "UZS",
        "items": [{"product_id": "sku-1", "name": "Choynak", "quantity": 2, "price": 75000}],
        "customer": {
            "name": "Ali Valiyev",
            "phone": "+998901234567",
            "email": "ali@example.com",
            "company": "Vali Savdo"
        },
        "url": format!("https://market.example/orders/{number}"),
        "tags": ["marketplace"]
    })
}

/// Places `order_body(seller_id, number)` through the API and pushes until nothing is left: the order's id.
pub async fn order_pushed(app: &TestApp, seller_id: &str, number: &str) -> String {
    let resp = app
        .api_post("/api/v1/sales/orders", &order_body(seller_id, number))
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    let order: Value = resp.json().await.expect("the order");
    let order_id = order["data"]["id"].as_str().expect("its id").to_owned();
    let (report, drained) = amocrm_connector::workers::push::drain(&app.state, 2_000)
        .await
        .expect("push");
    assert!(drained, "the push queue did not drain: {report:?}");
    order_id
}

/// Each lead of account `host` with the order number it carries in field `field` (empty without one).
pub fn lead_numbers(app: &TestApp, host: &str, field: u64) -> Vec<(String, amocrm_sandbox::Lead)> {
    app.sandbox
        .leads(host)
        .into_iter()
        .map(|lead| {
            let number = lead
                .custom_fields_values
                .iter()
                .find(|f| f.field_id == field)
                .and_then(|f| f.values.first())
                .map(|v| v.as_text())
                .unwrap_or_default();
            (number, lead)
        })
        .collect()
}

/// The leads of account `host` keyed by their order number (field `field`); panics on a duplicate.
pub fn leads_by_number(
    app: &TestApp,
    host: &str,
    field: u64,
) -> HashMap<String, amocrm_sandbox::Lead> {
    let mut map = HashMap::new();
    for (number, lead) in lead_numbers(app, host, field) {
        assert!(
            map.insert(number.clone(), lead).is_none(),
            "two leads carry order number {number}"
        );
    }
    map
}

/// The SKUs of the catalog elements in account `host`, sorted: a SKU made twice shows twice.
pub fn skus_made(sandbox: &SandboxHandle, host: &str) -> Vec<String> {
    let mut skus: Vec<String> = sandbox
        .elements(host)
        .iter()
        .flat_map(|e| e.values_of("SKU"))
        .collect();
    skus.sort();
    skus
}

/// The catalog items linked to each lead of account `host`: per lead id, its (SKU, quantity) pairs, sorted.
pub fn linked_items(sandbox: &SandboxHandle, host: &str) -> HashMap<u64, Vec<(String, i64)>> {
    let sku_of: HashMap<u64, String> = sandbox
        .elements(host)
        .iter()
        .filter_map(|e| Some((e.id, e.values_of("SKU").into_iter().next()?)))
        .collect();
    let mut linked: HashMap<u64, Vec<(String, i64)>> = HashMap::new();
    for l in sandbox
        .links(host)
        .iter()
        .filter(|l| l.to_entity_type == "catalog_elements")
    {
        let sku = sku_of.get(&l.to_entity_id).cloned().unwrap_or_default();
        linked
            .entry(l.lead_id)
            .or_default()
            .push((sku, l.quantity.unwrap_or(0.0) as i64));
    }
    for items in linked.values_mut() {
        items.sort();
    }
    linked
}

/// `seller`'s connection refreshed now through the API (`POST …/refresh`, 200): the answer's body.
pub async fn refresh_now(app: &TestApp, seller: &str) -> Value {
    let resp = app
        .api_post_empty(&format!("/api/v1/connections/{seller}/refresh"))
        .await;
    assert_eq!(resp.status().as_u16(), 200, "refresh of {seller}");
    resp.json().await.unwrap()
}

/// `PUT /api/v1/connections/{seller}/settings` with `body`, which must be answered 200: the settings as
/// stored.
pub async fn save_settings(app: &TestApp, seller: &str, body: Value) -> Value {
    let resp = app
        .api(
            reqwest::Method::PUT,
            &format!("/api/v1/connections/{seller}/settings"),
            Some(&body),
        )
        .await;
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.expect("json");
    assert_eq!(status, 200, "{v}");
    v
}
