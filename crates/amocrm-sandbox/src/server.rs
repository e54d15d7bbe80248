//! The HTTP face of the sandbox: the route table, the per-account pipeline (rate limit, faults, logging,
//! token endpoint, API), the consent page, the `/_sandbox` control routes and the board page.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use askama::Template;
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use crate::api::{self, ApiRequest};
use crate::config::{Faults, Integration, Rules};
use crate::handle::Shared;
use crate::model::{ContactChange, ContactSeed, LoggedRequest, NewUser};
use crate::oauth::{self, AuthorizeParams, Grant, TokenRequest};
use crate::outbound::jobs_for;
use crate::problem;
use crate::state::State;

type Data = web::Data<Shared>;

/// Builds and runs the actix server on its own thread (own actix system), returning its handle.
pub async fn spawn(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    workers: usize,
) -> anyhow::Result<actix_web::dev::ServerHandle> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("amocrm-sandbox-http".to_owned())
        .spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let data = web::Data::from(shared);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                        .configure(routes)
                })
                .workers(workers)
                .disable_signals()
                .shutdown_timeout(1)
                .listen(listener);
                match server {
                    Ok(s) => {
                        let running = s.run();
                        let _ = tx.send(Ok(running.handle()));
                        let _ = running.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(anyhow::Error::from(e)));
                    }
                }
            });
        })?;
    rx.await
        .map_err(|_| anyhow::anyhow!("sandbox server thread ended early"))?
}

/// The route table.
fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(board))
        .route("/oauth", web::get().to(consent_page))
        .route("/oauth/", web::get().to(consent_page))
        .route("/oauth", web::post().to(consent_submit))
        .route("/oauth/", web::post().to(consent_submit))
        .service(
            web::scope("/_sandbox")
                .route("", web::get().to(board))
                .route("/ui", web::get().to(board))
                .route("/ui/move", web::post().to(board_move))
                .route("/ui/lead", web::post().to(board_new_lead))
                .route("/ui/unsorted", web::post().to(board_unsorted))
                .route("/approve", web::get().to(scripted_approve))
                .route("/accounts", web::get().to(accounts_list))
                .route("/accounts", web::post().to(accounts_add))
                .route("/accounts/{host}", web::get().to(account_summary))
                .route("/accounts/{host}/counters", web::get().to(account_counters))
                .route("/accounts/{host}/faults", web::get().to(faults_get))
                .route("/accounts/{host}/faults", web::put().to(faults_put))
                .route("/accounts/{host}/clock", web::post().to(clock_advance))
                .route("/accounts/{host}/rename", web::post().to(account_rename))
                .route(
                    "/accounts/{host}/api_domain",
                    web::put().to(account_api_domain),
                )
                .route("/accounts/{host}/state", web::put().to(account_state))
                .route("/accounts/{host}/leads", web::get().to(account_leads))
                .route(
                    "/accounts/{host}/leads",
                    web::post().to(account_lead_create),
                )
                .route(
                    "/accounts/{host}/leads/{id}/move",
                    web::post().to(lead_move),
                )
                .route("/accounts/{host}/leads/{id}", web::delete().to(lead_delete))
                .route("/accounts/{host}/contacts", web::get().to(account_contacts))
                .route("/accounts/{host}/contacts", web::post().to(contact_add))
                .route(
                    "/accounts/{host}/contacts/{id}",
                    web::patch().to(contact_update),
                )
                .route(
                    "/accounts/{host}/contacts/{id}",
                    web::delete().to(contact_delete),
                )
                .route("/accounts/{host}/users", web::get().to(account_users))
                .route("/accounts/{host}/users", web::post().to(user_add))
                .route("/accounts/{host}/users/{id}", web::patch().to(user_update))
                .route("/accounts/{host}/users/{id}", web::delete().to(user_delete))
                .route(
                    "/accounts/{host}/connecting_user",
                    web::put().to(connecting_user_put),
                )
                .route("/accounts/{host}/products", web::post().to(products_enable))
                .route("/accounts/{host}/catalogs", web::get().to(account_catalogs))
                .route("/accounts/{host}/catalogs", web::post().to(catalog_add))
                .route("/accounts/{host}/elements", web::get().to(account_elements))
                .route("/accounts/{host}/links", web::get().to(account_links))
                .route("/accounts/{host}/notes", web::get().to(account_notes))
                .route("/accounts/{host}/tasks", web::get().to(account_tasks))
                .route("/accounts/{host}/unsorted", web::get().to(account_unsorted))
                .route(
                    "/accounts/{host}/unsorted/{uid}/accept",
                    web::post().to(unsorted_accept),
                )
                .route(
                    "/accounts/{host}/unsorted/{uid}/decline",
                    web::post().to(unsorted_decline),
                )
                .route(
                    "/accounts/{host}/companies",
                    web::get().to(account_companies),
                )
                .route(
                    "/accounts/{host}/pipelines",
                    web::get().to(account_pipelines),
                )
                .route(
                    "/accounts/{host}/pipelines/{id}",
                    web::delete().to(pipeline_delete),
                )
                .route(
                    "/accounts/{host}/custom_fields",
                    web::get().to(account_fields),
                )
                .route("/accounts/{host}/custom_fields", web::post().to(field_add))
                .route(
                    "/accounts/{host}/custom_fields/{id}",
                    web::delete().to(field_delete),
                )
                .route("/accounts/{host}/webhooks", web::get().to(account_webhooks))
                .route("/accounts/{host}/revoke", web::post().to(grant_revoke))
                .route(
                    "/accounts/{host}/widget_install",
                    web::post().to(widget_install),
                )
                .route("/counters", web::get().to(total_counters))
                .route("/tokens", web::post().to(tokens_issue))
                .route("/integrations", web::get().to(integrations_list))
                .route("/integrations", web::post().to(integrations_add))
                .route("/log", web::get().to(log_get))
                .route("/log", web::delete().to(log_clear))
                .route("/deliveries", web::get().to(deliveries_get))
                .route("/deliveries/idle", web::get().to(deliveries_idle))
                .route("/rate_limit", web::put().to(rate_limit_put))
                .route("/rules", web::get().to(rules_get))
                .route("/rules", web::put().to(rules_put)),
        )
        .default_service(web::to(account_entry));
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn log_entry(
    method: &str,
    path: &str,
    host: Option<&str>,
    grant_type: Option<String>,
    status: u16,
    dropped: bool,
) -> LoggedRequest {
    LoggedRequest {
        seq: 0,
        method: method.to_owned(),
        path: path.to_owned(),
        host: host.map(str::to_owned),
        grant_type,
        status,
        dropped,
        at: Utc::now(),
    }
}

/// Every request addressed to an account: `/{host}/oauth2/access_token`, `/{host}/api/v4/…`.
async fn account_entry(req: HttpRequest, body: web::Bytes, sh: Data) -> HttpResponse {
    let method = req.method().as_str().to_owned();
    let full = req.path().trim_start_matches('/');
    let (raw_host, rest) = full.split_once('/').unwrap_or((full, ""));
    let host = percent_decode(raw_host).to_ascii_lowercase();
    let path = format!("/{}", rest.trim_end_matches('/'));
    let is_token = path == "/oauth2/access_token";
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let token_req = is_token.then(|| TokenRequest::parse(&content_type, &body));
    let grant_type = token_req.as_ref().and_then(|t| t.grant_type.clone());
    if let Some(resp) = host_level(&req, &sh, &host, &path, grant_type.clone()) {
        return resp;
    }
    if method == "GET"
        && let Some(id) = path.strip_prefix("/leads/detail/")
    {
        return lead_card(&sh, &host, id);
    }

    // Admission: unknown account, forced 429, the sliding-window limit.
    let latency = {
        let mut st = sh.lock();
        // Token requests skip the window when `Rules::rate_limit_token_endpoint` is off.
        let rps = if is_token && !st.rules.rate_limit_token_endpoint {
            0
        } else {
            st.rate_limit_rps
        };
        let Some(acc) = st.accounts.get_mut(&host) else {
            st.push_log(log_entry(
                &method,
                &path,
                Some(&host),
                grant_type,
                404,
                false,
            ));
            return problem::not_found(&method, &format!("https://{host}{path}"));
        };
        acc.counters.requests += 1;
        if let Some(api_path) = path.strip_prefix("/api/v4/") {
            acc.counters
                .endpoints
                .bump(api::family(&method, api_path, req.query_string()));
        }
        let refused = if acc.faults.force_429_next > 0 {
            acc.faults.force_429_next -= 1;
            Some(acc.faults.force_429_retry_after_secs.max(1))
        } else {
            acc.admit(rps, Instant::now()).err()
        };
        if let Some(retry_after) = refused {
            acc.counters.rate_limited += 1;
            st.push_log(log_entry(
                &method,
                &path,
                Some(&host),
                grant_type,
                429,
                false,
            ));
            return problem::too_many(retry_after);
        }
        acc.counters.admitted += 1;
        acc.faults.latency_ms
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }

    // Faults, then the request itself, atomically under the lock.
    let (resp, dropped, jobs) = {
        let mut st = sh.lock();
        let Some(acc) = st.accounts.get_mut(&host) else {
            return problem::not_found(&method, &format!("https://{host}{path}"));
        };
        // An unpaid account still issues tokens; a blocked one refuses everything.
        if let Some(code) = acc.block.filter(|c| !is_token || *c == 403) {
            st.push_log(log_entry(
                &method,
                &path,
                Some(&host),
                grant_type,
                code,
                false,
            ));
            return account_blocked(code);
        }
        if acc.faults.fail_next > 0 {
            acc.faults.fail_next -= 1;
            acc.counters.injected_failures += 1;
            st.push_log(log_entry(
                &method,
                &path,
                Some(&host),
                grant_type,
                500,
                false,
            ));
            return problem::internal_error();
        }
        let dropped = acc.faults.drop_after_write_next > 0;
        if dropped {
            acc.faults.drop_after_write_next -= 1;
            acc.counters.dropped += 1;
        }
        let (resp, events) = if let Some(tr) = &token_req {
            if method != "POST" {
                (
                    problem::not_found(&method, &format!("https://{host}{path}")),
                    Vec::new(),
                )
            } else {
                (token_endpoint(&mut st, &host, tr), Vec::new())
            }
        } else if let Some(api_path) = path.strip_prefix("/api/v4/") {
            let bearer = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
                .unwrap_or("");
            if bearer.is_empty() || oauth::authenticate(&mut st, &host, bearer).is_none() {
                if let Some(acc) = st.accounts.get_mut(&host) {
                    acc.counters.unauthorized += 1;
                }
                (problem::unauthorized(), Vec::new())
            } else {
                let user = oauth::token_user(&st, bearer);
                api::handle_as(
                    &mut st,
                    &host,
                    &ApiRequest {
                        method: &method,
                        path: api_path,
                        query: req.query_string(),
                        body: &body,
                    },
                    user,
                )
            }
        } else {
            (
                problem::not_found(&method, &format!("https://{host}{path}")),
                Vec::new(),
            )
        };
        let jobs = if events.is_empty() {
            Vec::new()
        } else {
            jobs_for(&st, &host, &events)
        };
        st.push_log(log_entry(
            &method,
            &path,
            Some(&host),
            grant_type,
            resp.status().as_u16(),
            dropped,
        ));
        (resp, dropped, jobs)
    };
    sh.outbound.send(jobs);
    if dropped {
        // Applied, never answered: hold the connection until the client gives up or we stop.
        let mut rx = sh.shutdown.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
        return HttpResponse::ServiceUnavailable()
            .insert_header((header::CONNECTION, "close"))
            .finish();
    }
    resp
}

/// What a host answers before any account is looked at: an API host's subdomain lookup
/// (`/oauth2/account/current/subdomain`), and a renamed account's old host (401 or 404 to everything).
/// Both are logged with their host, so tests can see every host a client contacted.
fn host_level(
    req: &HttpRequest,
    sh: &Shared,
    host: &str,
    path: &str,
    grant_type: Option<String>,
) -> Option<HttpResponse> {
    let method = req.method().as_str();
    let mut st = sh.lock();
    let resp = if path == "/oauth2/account/current/subdomain" && !st.accounts.contains_key(host) {
        let refresh = req
            .headers()
            .get("x-refresh-token")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or("");
        match (method, oauth::subdomain_lookup(&st, host, refresh)) {
            ("GET", Ok(body)) => problem::hal(body),
            ("GET", Err(StatusCode::NOT_FOUND)) => {
                problem::not_found(method, &format!("https://{host}{path}"))
            }
            ("GET", Err(_)) => {
                problem::problem(StatusCode::UNAUTHORIZED, "Refresh token is invalid")
            }
            _ => problem::not_found(method, &format!("https://{host}{path}")),
        }
    } else if let Some(renamed) = st.renamed.get(host) {
        match renamed.status {
            401 => problem::unauthorized(),
            _ => problem::not_found(method, &format!("https://{host}{path}")),
        }
    } else {
        return None;
    };
    st.push_log(log_entry(
        method,
        path,
        Some(host),
        grant_type,
        resp.status().as_u16(),
        false,
    ));
    Some(resp)
}

/// amoCRM's answer to every call of an unpaid (402) or blocked (403) account.
fn account_blocked(code: u16) -> HttpResponse {
    match code {
        402 => problem::problem(StatusCode::PAYMENT_REQUIRED, "Payment required"),
        _ => problem::problem(StatusCode::FORBIDDEN, "Account is blocked"),
    }
}

fn token_endpoint(st: &mut State, host: &str, tr: &TokenRequest) -> HttpResponse {
    let (grant, result) = oauth::token_grant(st, host, tr);
    let Some(acc) = st.accounts.get_mut(host) else {
        return problem::not_found("POST", host);
    };
    match result {
        Ok(pair) => {
            match grant {
                Grant::Code => acc.counters.code_exchanges += 1,
                Grant::Refresh => acc.counters.refreshes += 1,
                Grant::Other => {}
            }
            let body = json!({
                "token_type": pair.token_type,
                "expires_in": pair.expires_in,
                "access_token": pair.access_token,
                "refresh_token": pair.refresh_token,
                "server_time": pair.server_time,
            });
            HttpResponse::Ok()
                .content_type("application/json")
                .body(body.to_string())
        }
        Err(e) => {
            match grant {
                Grant::Code => acc.counters.rejected_code_exchanges += 1,
                Grant::Refresh => acc.counters.rejected_refreshes += 1,
                Grant::Other => {}
            }
            problem::oauth_error(e.status, e.hint)
        }
    }
}

// ---- consent page ---------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "consent.html")]
struct ConsentPage {
    client_id: String,
    state: String,
    mode: String,
    redirect_uri: String,
    accounts: Vec<String>,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    title: String,
    message: String,
}

#[derive(Template)]
#[template(path = "lead.html")]
struct LeadCard {
    host: String,
    id: u64,
    name: String,
    stage: String,
    price: i64,
    tags: String,
}

/// `GET /{host}/leads/detail/{id}`: the lead's card in the account's web interface (amoCRM's own URL for a
/// lead), so links into amoCRM can be followed; a browser page, so outside the API's rate limit.
fn lead_card(sh: &Shared, host: &str, id: &str) -> HttpResponse {
    let st = sh.lock();
    let found = st.accounts.get(host).and_then(|acc| {
        let lead = acc.leads.get(&id.parse::<u64>().ok()?)?;
        let pipeline = acc.pipelines.get(&lead.pipeline_id);
        let stage = pipeline
            .and_then(|p| {
                let s = p.statuses.iter().find(|s| s.id == lead.status_id)?;
                Some(format!("{} / {}", p.name, s.name))
            })
            .unwrap_or_else(|| lead.status_id.to_string());
        Some(LeadCard {
            host: host.to_owned(),
            id: lead.id,
            name: lead.name.clone(),
            stage,
            price: lead.price,
            tags: lead
                .tags
                .iter()
                .map(|t| t.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
        })
    });
    drop(st);
    match found {
        Some(card) => html(StatusCode::OK, card.render()),
        None => message(
            StatusCode::NOT_FOUND,
            "Not found",
            "No such lead in this account.",
        ),
    }
}

fn html(status: StatusCode, body: Result<String, askama::Error>) -> HttpResponse {
    match body {
        Ok(b) => HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .body(b),
        Err(_) => HttpResponse::InternalServerError().body("template error"),
    }
}

fn message(status: StatusCode, title: &str, msg: &str) -> HttpResponse {
    html(
        status,
        MessagePage {
            title: title.to_owned(),
            message: msg.to_owned(),
        }
        .render(),
    )
}

async fn consent_page(req: HttpRequest, sh: Data) -> HttpResponse {
    let params = AuthorizeParams::from_pairs(&oauth::form_pairs(req.query_string()));
    let (known, redirect_ok, accounts) = {
        let mut st = sh.lock();
        let integration = st.integrations.get(&params.client_id).cloned();
        let redirect_ok = match (&integration, &params.redirect_uri) {
            (Some(i), Some(r)) => &i.redirect_uri == r,
            _ => true,
        };
        let accounts: Vec<String> = st.accounts.keys().cloned().collect();
        let status = if integration.is_none() || !redirect_ok {
            400
        } else {
            200
        };
        st.push_log(log_entry("GET", req.path(), None, None, status, false));
        (integration.is_some(), redirect_ok, accounts)
    };
    if !known {
        return message(
            StatusCode::BAD_REQUEST,
            "Интеграция не найдена",
            "Unknown client_id: the integration is not registered in this sandbox.",
        );
    }
    if !redirect_ok {
        return message(
            StatusCode::BAD_REQUEST,
            "Неверный redirect_uri",
            "Redirect URI is not associated with client.",
        );
    }
    html(
        StatusCode::OK,
        ConsentPage {
            client_id: params.client_id,
            state: params.state.unwrap_or_default(),
            mode: params.mode.unwrap_or_else(|| "popup".to_owned()),
            redirect_uri: params.redirect_uri.unwrap_or_default(),
            accounts,
        }
        .render(),
    )
}

fn redirect(location: &str) -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, location))
        .finish()
}

async fn consent_submit(req: HttpRequest, body: web::Bytes, sh: Data) -> HttpResponse {
    let form = oauth::form_pairs(std::str::from_utf8(&body).unwrap_or(""));
    decide_and_redirect(&req, &form, &sh)
}

fn decide_and_redirect(
    req: &HttpRequest,
    form: &HashMap<String, String>,
    sh: &Shared,
) -> HttpResponse {
    let params = AuthorizeParams::from_pairs(form);
    let host = form.get("account").cloned().unwrap_or_default();
    let allow = form.get("decision").map(String::as_str) != Some("deny");
    let result = sh.decide(&params, &host, allow);
    let status = if result.is_ok() { 302 } else { 400 };
    sh.lock().push_log(log_entry(
        req.method().as_str(),
        req.path(),
        None,
        None,
        status,
        false,
    ));
    match result {
        Ok(url) => redirect(&url),
        Err(e) => message(StatusCode::BAD_REQUEST, "Ошибка", &e.to_string()),
    }
}

/// `GET /_sandbox/approve?<authorize params>&account=HOST&decision=allow|deny` → 302.
async fn scripted_approve(req: HttpRequest, sh: Data) -> HttpResponse {
    let form = oauth::form_pairs(req.query_string());
    let params = AuthorizeParams::from_pairs(&form);
    let host = form.get("account").cloned().unwrap_or_default();
    let allow = form.get("decision").map(String::as_str) != Some("deny");
    match sh.decide(&params, &host, allow) {
        Ok(url) => redirect(&url),
        Err(e) => HttpResponse::BadRequest().json(json!({"error": e.to_string()})),
    }
}

// ---- board page -----------------------------------------------------------------------------------

struct BoardLead {
    id: u64,
    name: String,
    price: i64,
    /// The pending unsorted request holding the lead (empty: none): Accept / Decline instead of Move.
    unsorted_uid: String,
}

struct BoardStatus {
    name: String,
    color: String,
    leads: Vec<BoardLead>,
}

struct BoardPipeline {
    id: u64,
    name: String,
    is_main: bool,
    statuses: Vec<BoardStatus>,
    targets: Vec<(String, String)>,
}

struct BoardAccount {
    host: String,
    id: u64,
    pipelines: Vec<BoardPipeline>,
    webhooks: Vec<(String, bool, String)>,
    requests: u64,
    rate_limited: u64,
}

#[derive(Template)]
#[template(path = "board.html")]
struct BoardPage {
    accounts: Vec<BoardAccount>,
}

async fn board(sh: Data) -> HttpResponse {
    let accounts = {
        let st = sh.lock();
        st.accounts
            .values()
            .map(|a| {
                let mut pipelines: Vec<_> = a.pipelines.values().collect();
                pipelines.sort_by_key(|p| (p.sort, p.id));
                BoardAccount {
                    host: a.host.clone(),
                    id: a.id,
                    requests: a.counters.requests,
                    rate_limited: a.counters.rate_limited,
                    webhooks: a
                        .webhooks
                        .iter()
                        .map(|w| {
                            (
                                w.hook.destination.clone(),
                                w.hook.disabled,
                                w.hook.settings.join(", "),
                            )
                        })
                        .collect(),
                    pipelines: pipelines
                        .iter()
                        .map(|p| {
                            let mut statuses: Vec<_> = p.statuses.iter().collect();
                            statuses.sort_by_key(|s| (s.sort, s.id));
                            BoardPipeline {
                                id: p.id,
                                name: p.name.clone(),
                                is_main: p.is_main,
                                targets: statuses
                                    .iter()
                                    .filter(|s| s.type_ == 0)
                                    .map(|s| {
                                        (
                                            format!("{}:{}", p.id, s.id),
                                            format!("{} / {}", p.name, s.name),
                                        )
                                    })
                                    .collect(),
                                statuses: statuses
                                    .iter()
                                    .map(|s| BoardStatus {
                                        name: s.name.clone(),
                                        color: s.color.clone(),
                                        leads: a
                                            .leads
                                            .values()
                                            .filter(|l| {
                                                l.pipeline_id == p.id && l.status_id == s.id
                                            })
                                            .map(|l| BoardLead {
                                                id: l.id,
                                                name: l.name.clone(),
                                                price: l.price,
                                                unsorted_uid: a
                                                    .pending_unsorted_of(l.id)
                                                    .map(|u| u.uid.clone())
                                                    .unwrap_or_default(),
                                            })
                                            .collect(),
                                    })
                                    .collect(),
                            }
                        })
                        .collect(),
                }
            })
            .collect()
    };
    html(StatusCode::OK, BoardPage { accounts }.render())
}

fn see_board(host: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("/_sandbox/ui#{host}")))
        .finish()
}

async fn board_move(body: web::Bytes, sh: Data) -> HttpResponse {
    let form = oauth::form_pairs(std::str::from_utf8(&body).unwrap_or(""));
    let host = form.get("host").cloned().unwrap_or_default();
    let lead: Option<u64> = form.get("lead_id").and_then(|v| v.parse().ok());
    let target = form.get("target").and_then(|t| {
        let (p, s) = t.split_once(':')?;
        Some((p.parse::<u64>().ok()?, s.parse::<u64>().ok()?))
    });
    let (Some(lead), Some((p, s))) = (lead, target) else {
        return message(
            StatusCode::BAD_REQUEST,
            "Ошибка",
            "lead_id and target are required",
        );
    };
    match sh.move_lead(&host, lead, p, s) {
        Ok(()) => see_board(&host),
        Err(e) => message(StatusCode::BAD_REQUEST, "Ошибка", &e.to_string()),
    }
}

async fn board_new_lead(body: web::Bytes, sh: Data) -> HttpResponse {
    let form = oauth::form_pairs(std::str::from_utf8(&body).unwrap_or(""));
    let host = form.get("host").cloned().unwrap_or_default();
    let name = form.get("name").cloned().unwrap_or_default();
    let price = form
        .get("price")
        .and_then(|p| p.trim().parse::<i64>().ok())
        .unwrap_or(0);
    match sh.create_lead(&host, &name, price, None) {
        Ok(_) => see_board(&host),
        Err(e) => message(StatusCode::BAD_REQUEST, "Ошибка", &e.to_string()),
    }
}

// ---- /_sandbox JSON control routes ----------------------------------------------------------------

fn not_found_json(what: &str) -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": what}))
}

fn bad_json(e: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": e.to_string()}))
}

/// 204 when the change was made, else 400 with the reason.
fn no_content_or_bad(r: anyhow::Result<()>) -> HttpResponse {
    match r {
        Ok(()) => HttpResponse::NoContent().finish(),
        Err(e) => bad_json(e),
    }
}

/// The result as JSON, else 400 with the reason.
fn json_or_bad<T: serde::Serialize>(r: anyhow::Result<T>) -> HttpResponse {
    match r {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => bad_json(e),
    }
}

/// A copy of one of the account's collections (in id order) as JSON; 404 for an unknown account.
fn account_values<K, T: serde::Serialize + Clone>(
    sh: &Shared,
    host: &str,
    pick: impl FnOnce(&crate::state::Account) -> &std::collections::BTreeMap<K, T>,
) -> HttpResponse {
    with_account(sh, host, |a| pick(a).values().cloned().collect::<Vec<_>>())
}

fn with_account<T: serde::Serialize>(
    sh: &Shared,
    host: &str,
    f: impl FnOnce(&crate::state::Account) -> T,
) -> HttpResponse {
    match sh.with_account(host, f) {
        Some(v) => HttpResponse::Ok().json(v),
        None => not_found_json("unknown account"),
    }
}

async fn accounts_list(sh: Data) -> HttpResponse {
    HttpResponse::Ok().json(sh.accounts())
}

#[derive(Deserialize)]
struct HostBody {
    host: String,
}

async fn accounts_add(body: web::Json<HostBody>, sh: Data) -> HttpResponse {
    match sh.add_account(&body.host) {
        Ok(id) => {
            HttpResponse::Ok().json(json!({"id": id, "host": State::normalize_host(&body.host)}))
        }
        Err(e) => bad_json(e),
    }
}

async fn account_summary(path: web::Path<String>, sh: Data) -> HttpResponse {
    with_account(&sh, &path, |a| {
        json!({
            "id": a.id,
            "host": a.host,
            "subdomain": a.subdomain,
            "name": a.name,
            "api_domain": a.api_domain,
            "state": a.block,
            "user_id": a.user_id,
            "counters": a.counters,
            "faults": a.faults,
            "pipelines": a.pipelines.len(),
            "leads": a.leads.len(),
            "contacts": a.contacts.len(),
            "companies": a.companies.len(),
            "webhooks": a.webhooks.len(),
            "users": a.users.len(),
            "notes": a.notes.len(),
            "tasks": a.tasks.len(),
            "catalogs": a.catalogs.len(),
            "elements": a.elements.len(),
            "links": a.links.len(),
            "unsorted": a.unsorted.len(),
        })
    })
}

async fn account_counters(path: web::Path<String>, sh: Data) -> HttpResponse {
    with_account(&sh, &path, |a| a.counters.clone())
}

async fn total_counters(sh: Data) -> HttpResponse {
    HttpResponse::Ok().json(sh.total_counters())
}

async fn faults_get(path: web::Path<String>, sh: Data) -> HttpResponse {
    with_account(&sh, &path, |a| a.faults.clone())
}

async fn faults_put(path: web::Path<String>, body: web::Json<Faults>, sh: Data) -> HttpResponse {
    set_faults(&sh, &path, body.into_inner())
}

/// Replaces the account's fault switches and answers them; 404 for an unknown account.
fn set_faults(sh: &Shared, host: &str, f: Faults) -> HttpResponse {
    match sh.set_faults(host, f) {
        Ok(()) => HttpResponse::Ok().json(sh.faults(host)),
        Err(e) => not_found_json(&e.to_string()),
    }
}

#[derive(Deserialize)]
struct ClockBody {
    advance_secs: i64,
}

async fn clock_advance(
    path: web::Path<String>,
    body: web::Json<ClockBody>,
    sh: Data,
) -> HttpResponse {
    let mut f = sh.faults(&path);
    f.clock_offset_secs += body.advance_secs;
    set_faults(&sh, &path, f)
}

#[derive(Deserialize)]
struct RenameBody {
    to: String,
    /// What the old host answers from now on: 401 (default) or 404.
    #[serde(default = "default_rename_status")]
    old_host_answers: u16,
}

fn default_rename_status() -> u16 {
    401
}

async fn account_rename(
    path: web::Path<String>,
    body: web::Json<RenameBody>,
    sh: Data,
) -> HttpResponse {
    match sh.rename_account(&path, &body.to, body.old_host_answers) {
        Ok(()) => with_account(&sh, &body.to, |a| json!({"id": a.id, "host": a.host})),
        Err(e) => bad_json(e),
    }
}

#[derive(Deserialize)]
struct ApiDomainBody {
    api_domain: String,
}

async fn account_api_domain(
    path: web::Path<String>,
    body: web::Json<ApiDomainBody>,
    sh: Data,
) -> HttpResponse {
    match sh.set_api_domain(&path, &body.api_domain) {
        Ok(()) => with_account(&sh, &path, |a| json!({"api_domain": a.api_domain})),
        Err(e) => bad_json(e),
    }
}

#[derive(Deserialize)]
struct StateBody {
    /// 402 (payment required), 403 (blocked) or null (answering normally).
    status: Option<u16>,
}

async fn account_state(
    path: web::Path<String>,
    body: web::Json<StateBody>,
    sh: Data,
) -> HttpResponse {
    match sh.set_block(&path, body.status) {
        Ok(()) => with_account(&sh, &path, |a| json!({"status": a.block})),
        Err(e) => bad_json(e),
    }
}

async fn account_leads(path: web::Path<String>, sh: Data) -> HttpResponse {
    account_values(&sh, &path, |a| &a.leads)
}

#[derive(Deserialize)]
struct NewLeadBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    price: i64,
    pipeline_id: Option<u64>,
    status_id: Option<u64>,
}

async fn account_lead_create(
    path: web::Path<String>,
    body: web::Json<NewLeadBody>,
    sh: Data,
) -> HttpResponse {
    let stage = body.pipeline_id.zip(body.status_id);
    json_or_bad(
        sh.create_lead(&path, &body.name, body.price, stage)
            .map(|id| json!({"id": id})),
    )
}

#[derive(Deserialize)]
struct MoveBody {
    pipeline_id: u64,
    status_id: u64,
}

async fn lead_move(
    path: web::Path<(String, u64)>,
    body: web::Json<MoveBody>,
    sh: Data,
) -> HttpResponse {
    let (host, id) = path.into_inner();
    no_content_or_bad(sh.move_lead(&host, id, body.pipeline_id, body.status_id))
}

async fn lead_delete(path: web::Path<(String, u64)>, sh: Data) -> HttpResponse {
    let (host, id) = path.into_inner();
    no_content_or_bad(sh.delete_lead(&host, id))
}

async fn account_contacts(path: web::Path<String>, sh: Data) -> HttpResponse {
    account_values(&sh, &path, |a| &a.contacts)
}

async fn account_companies(path: web::Path<String>, sh: Data) -> HttpResponse {
    account_values(&sh, &path, |a| &a.companies)
}

async fn account_pipelines(path: web::Path<String>, sh: Data) -> HttpResponse {
    account_values(&sh, &path, |a| &a.pipelines)
}

async fn pipeline_delete(path: web::Path<(String, u64)>, sh: Data) -> HttpResponse {
    let (host, id) = path.into_inner();
    no_content_or_bad(sh.delete_pipeline(&host, id))
}

async fn account_fields(path: web::Path<String>, sh: Data) -> HttpResponse {
    account_values(&sh, &path, |a| &a.lead_fields)
}

async fn field_delete(path: web::Path<(String, u64)>, sh: Data) -> HttpResponse {
    let (host, id) = path.into_inner();
    no_content_or_bad(sh.delete_custom_field(&host, id))
}

async fn account_webhooks(path: web::Path<String>, sh: Data) -> HttpResponse {
    with_account(&sh, &path, |a| {
        a.webhooks
            .iter()
            .map(|w| w.hook.clone())
            .collect::<Vec<_>>()
    })
}

#[derive(Deserialize)]
struct ClientBody {
    client_id: String,
}

async fn grant_revoke(
    path: web::Path<String>,
    body: web::Json<ClientBody>,
    sh: Data,
) -> HttpResponse {
    let revoked = sh.revoke_grant(&path, &body.client_id);
    HttpResponse::Ok().json(json!({"revoked": revoked}))
}

async fn widget_install(
    path: web::Path<String>,
    body: web::Json<ClientBody>,
    sh: Data,
) -> HttpResponse {
    match sh.widget_install(&body.client_id, &path) {
        Ok(url) => HttpResponse::Ok().json(json!({"url": url})),
        Err(e) => bad_json(e),
    }
}

#[derive(Deserialize)]
struct TokensBody {
    client_id: String,
    host: String,
}

async fn tokens_issue(body: web::Json<TokensBody>, sh: Data) -> HttpResponse {
    if State::normalize_host(&body.host).is_none() {
        return bad_json("invalid account host");
    }
    HttpResponse::Ok().json(sh.issue_tokens(&body.client_id, &body.host))
}

/// Integrations without their secrets.
async fn integrations_list(sh: Data) -> HttpResponse {
    let list: Vec<_> = sh
        .integrations()
        .into_iter()
        .map(|i| json!({"client_id": i.client_id, "redirect_uri": i.redirect_uri, "disconnect_url": i.disconnect_url}))
        .collect();
    HttpResponse::Ok().json(list)
}

async fn integrations_add(body: web::Json<Integration>, sh: Data) -> HttpResponse {
    sh.add_integration(body.into_inner());
    HttpResponse::NoContent().finish()
}

#[derive(Deserialize)]
struct LogQuery {
    host: Option<String>,
    since: Option<u64>,
}

async fn log_get(q: web::Query<LogQuery>, sh: Data) -> HttpResponse {
    let st = sh.lock();
    let list: Vec<_> = st
        .log
        .iter()
        .filter(|e| q.since.is_none_or(|s| e.seq > s))
        .filter(|e| {
            q.host
                .as_deref()
                .is_none_or(|h| e.host.as_deref() == Some(h))
        })
        .collect();
    HttpResponse::Ok().json(list)
}

async fn log_clear(sh: Data) -> HttpResponse {
    sh.lock().log.clear();
    HttpResponse::NoContent().finish()
}

async fn deliveries_get(sh: Data) -> HttpResponse {
    HttpResponse::Ok().json(&sh.lock().deliveries)
}

#[derive(Deserialize)]
struct IdleQuery {
    timeout_ms: Option<u64>,
}

/// Waits (up to `timeout_ms`, default 10 s) until no delivery is queued or in flight.
async fn deliveries_idle(q: web::Query<IdleQuery>, sh: Data) -> HttpResponse {
    let limit = Duration::from_millis(q.timeout_ms.unwrap_or(10_000));
    let idle = tokio::time::timeout(limit, sh.outbound.inflight.idle())
        .await
        .is_ok();
    HttpResponse::Ok().json(json!({"idle": idle, "in_flight": sh.outbound.inflight.current()}))
}

#[derive(Deserialize)]
struct RateBody {
    rps: u32,
}

async fn rate_limit_put(body: web::Json<RateBody>, sh: Data) -> HttpResponse {
    sh.lock().rate_limit_rps = body.rps;
    HttpResponse::Ok().json(json!({"rps": body.rps}))
}

async fn rules_get(sh: Data) -> HttpResponse {
    HttpResponse::Ok().json(sh.lock().rules)
}

async fn rules_put(body: web::Json<Rules>, sh: Data) -> HttpResponse {
    let rules = body.into_inner();
    sh.lock().rules = rules;
    HttpResponse::Ok().json(rules)
}

// ---- users, contacts, lists, unsorted: what a manager or admin does in the UI ----------------------

async fn account_users(path: web::Path<String>, sh: Data) -> HttpResponse {
    account_values(&sh, &path, |a| &a.users)
}

async fn user_add(path: web::Path<String>, body: web::Json<NewUser>, sh: Data) -> HttpResponse {
    json_or_bad(sh.add_user(&path, &body))
}

#[derive(Deserialize)]
struct UserChange {
    is_active: Option<bool>,
    is_admin: Option<bool>,
}

async fn user_update(
    path: web::Path<(String, u64)>,
    body: web::Json<UserChange>,
    sh: Data,
) -> HttpResponse {
    let (host, id) = path.into_inner();
    json_or_bad(sh.update_user(&host, id, body.is_active, body.is_admin))
}

async fn user_delete(path: web::Path<(String, u64)>, sh: Data) -> HttpResponse {
    let (host, id) = path.into_inner();
    no_content_or_bad(sh.delete_user(&host, id))
}

#[derive(Deserialize)]
struct ConnectingUser {
    user_id: Option<u64>,
    is_admin: Option<bool>,
}

/// `{user_id?}` picks who new tokens are issued for; `{is_admin?}` sets that user's admin right.
async fn connecting_user_put(
    path: web::Path<String>,
    body: web::Json<ConnectingUser>,
    sh: Data,
) -> HttpResponse {
    if let Some(id) = body.user_id
        && let Err(e) = sh.set_connecting_user(&path, id)
    {
        return bad_json(e);
    }
    if let Some(admin) = body.is_admin
        && let Err(e) = sh.set_connecting_user_admin(&path, admin)
    {
        return bad_json(e);
    }
    with_account(
        &sh,
        &path,
        |a| json!({"user_id": a.token_user_id, "user": a.users.get(&a.token_user_id)}),
    )
}

async fn contact_add(
    path: web::Path<String>,
    body: web::Json<ContactSeed>,
    sh: Data,
) -> HttpResponse {
    json_or_bad(sh.add_contact(&path, &body).map(|id| json!({"id": id})))
}

async fn contact_update(
    path: web::Path<(String, u64)>,
    body: web::Json<ContactChange>,
    sh: Data,
) -> HttpResponse {
    let (host, id) = path.into_inner();
    no_content_or_bad(sh.update_contact(&host, id, &body))
}

async fn contact_delete(path: web::Path<(String, u64)>, sh: Data) -> HttpResponse {
    let (host, id) = path.into_inner();
    no_content_or_bad(sh.delete_contact(&host, id))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CatalogBody {
    name: String,
    #[serde(rename = "type")]
    type_: Option<String>,
}

async fn products_enable(
    path: web::Path<String>,
    body: Option<web::Json<CatalogBody>>,
    sh: Data,
) -> HttpResponse {
    let name = body.map(|b| b.into_inner().name).unwrap_or_default();
    json_or_bad(sh.add_catalog(&path, &name, "products"))
}

async fn account_catalogs(path: web::Path<String>, sh: Data) -> HttpResponse {
    account_values(&sh, &path, |a| &a.catalogs)
}

async fn catalog_add(
    path: web::Path<String>,
    body: web::Json<CatalogBody>,
    sh: Data,
) -> HttpResponse {
    let type_ = body.type_.clone().unwrap_or_else(|| "regular".to_owned());
    json_or_bad(sh.add_catalog(&path, &body.name, &type_))
}

async fn account_elements(path: web::Path<String>, sh: Data) -> HttpResponse {
    account_values(&sh, &path, |a| &a.elements)
}

async fn account_links(path: web::Path<String>, sh: Data) -> HttpResponse {
    with_account(&sh, &path, |a| a.links.clone())
}

async fn account_notes(path: web::Path<String>, sh: Data) -> HttpResponse {
    account_values(&sh, &path, |a| &a.notes)
}

async fn account_tasks(path: web::Path<String>, sh: Data) -> HttpResponse {
    account_values(&sh, &path, |a| &a.tasks)
}

async fn account_unsorted(path: web::Path<String>, sh: Data) -> HttpResponse {
    account_values(&sh, &path, |a| &a.unsorted)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AcceptBody {
    status_id: Option<u64>,
    user_id: Option<u64>,
}

async fn unsorted_accept(
    path: web::Path<(String, String)>,
    body: Option<web::Json<AcceptBody>>,
    sh: Data,
) -> HttpResponse {
    let (host, uid) = path.into_inner();
    let b = body.map(web::Json::into_inner).unwrap_or_default();
    no_content_or_bad(sh.accept_unsorted(&host, &uid, b.user_id, b.status_id))
}

async fn unsorted_decline(path: web::Path<(String, String)>, sh: Data) -> HttpResponse {
    let (host, uid) = path.into_inner();
    no_content_or_bad(sh.decline_unsorted(&host, &uid))
}

#[derive(Deserialize)]
struct FieldBody {
    name: String,
    #[serde(rename = "type")]
    type_: String,
    #[serde(default)]
    enums: Vec<String>,
}

async fn field_add(path: web::Path<String>, body: web::Json<FieldBody>, sh: Data) -> HttpResponse {
    json_or_bad(sh.add_lead_field(&path, &body.name, &body.type_, &body.enums))
}

/// The board's Accept / Decline buttons of an unsorted lead.
async fn board_unsorted(body: web::Bytes, sh: Data) -> HttpResponse {
    let form = oauth::form_pairs(std::str::from_utf8(&body).unwrap_or(""));
    let host = form.get("host").cloned().unwrap_or_default();
    let uid = form.get("uid").cloned().unwrap_or_default();
    let result = match form.get("decision").map(String::as_str) {
        Some("decline") => sh.decline_unsorted(&host, &uid),
        _ => sh.accept_unsorted(&host, &uid, None, None),
    };
    match result {
        Ok(()) => see_board(&host),
        Err(e) => message(StatusCode::BAD_REQUEST, "Ошибка", &e.to_string()),
    }
}
