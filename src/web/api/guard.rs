//! Authentication, `X-API-Version` and per-key hourly rate limits for every `/api/v1` request.
//!
//! Two kinds of bearer token are accepted: marketplace API keys and operator access tokens. Viewers are
//! refused any method that could change something here, centrally, so no handler can forget to check.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, ResponseError, web};

use crate::services::Context;
use crate::services::api_keys::{self, RateDecision, Scope, Tier};
use crate::services::operators::{self, Role};
use crate::web::error::{ApiError, ErrorCode};

/// Who is calling: the marketplace backend with an API key, or a signed-in operator.
#[derive(Debug, Clone)]
pub enum Caller {
    ApiKey {
        id: i64,
        name: String,
        tier: Tier,
        scope: Scope,
    },
    Operator {
        id: i64,
        role: Role,
    },
}

impl Caller {
    /// Viewers may read but not change anything. The guard already refuses their writes; handlers call
    /// this too, as a second line.
    pub fn require_write(&self) -> Result<(), ApiError> {
        if self.can_write() {
            Ok(())
        } else {
            Err(viewer_forbidden())
        }
    }

    pub fn can_write(&self) -> bool {
        match self {
            Caller::ApiKey { scope, .. } => *scope != Scope::Read,
            Caller::Operator { role, .. } => role.can_write(),
        }
    }

    /// Whether this caller may make this request at all (viewers and `read` keys: safe methods only;
    /// `orders` keys: orders and connect sessions only).
    fn may(&self, req: &ServiceRequest) -> bool {
        let safe = req.method().is_safe();
        match self {
            Caller::ApiKey { scope, .. } => scope.allows(safe, req.path()),
            Caller::Operator { role, .. } => safe || role.can_write(),
        }
    }
}

fn viewer_forbidden() -> ApiError {
    ApiError::forbidden("this account may view but not change anything")
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(
            req.extensions()
                .get::<Caller>()
                .cloned()
                .ok_or_else(|| ApiError::unauthorized("missing credentials")),
        )
    }
}

fn bearer(req: &ServiceRequest) -> Option<String> {
    let v = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn reject(req: ServiceRequest, e: ApiError) -> ServiceResponse<BoxBody> {
    let resp = e.error_response();
    req.into_response(resp)
}

/// Middleware for the `/api/v1` scope.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if let Some(v) = req.headers().get("x-api-version")
        && v.as_bytes() != b"v1"
    {
        let e = ApiError::new(
            ErrorCode::InvalidApiVersion,
            "unsupported X-API-Version; this service speaks v1",
        );
        return Ok(reject(req, e));
    }
    let Some(state) = req.app_data::<web::Data<Context>>().cloned() else {
        return Ok(reject(req, ApiError::internal("application state missing")));
    };
    let Some(token) = bearer(&req) else {
        return Ok(reject(req, ApiError::unauthorized("missing Bearer token")));
    };
    let (caller, decision): (Caller, Option<RateDecision>) =
        match authenticate(&state, &token).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                return Ok(reject(
                    req,
                    ApiError::unauthorized("invalid or revoked token"),
                ));
            }
            Err(e) => return Ok(reject(req, e)),
        };
    if !caller.may(&req) {
        let e = match caller {
            Caller::ApiKey { scope, .. } => ApiError::forbidden(format!(
                "this API key's scope ({}) does not allow this request",
                scope.as_str()
            )),
            Caller::Operator { .. } => viewer_forbidden(),
        };
        return Ok(reject(req, e));
    }
    if let Some(d) = decision.filter(|d| !d.allowed) {
        let retry = (d.reset - chrono::Utc::now().timestamp()).max(1) as u64;
        let mut res = reject(req, ApiError::rate_limited(retry));
        add_rate_headers(&mut res, &d);
        return Ok(res);
    }
    req.extensions_mut().insert(caller);
    let mut res = next.call(req).await?.map_into_boxed_body();
    if let Some(d) = decision {
        add_rate_headers(&mut res, &d);
    }
    res.headers_mut().insert(
        HeaderName::from_static("x-api-version"),
        HeaderValue::from_static("v1"),
    );
    Ok(res)
}

async fn authenticate(
    state: &Context,
    token: &str,
) -> Result<Option<(Caller, Option<RateDecision>)>, ApiError> {
    if operators::is_access_token(token) {
        // Operators are people at a dashboard: no hourly budget, and login itself is throttled.
        return Ok(operators::authenticate_access(&state.db, token)
            .await?
            .map(|op| {
                (
                    Caller::Operator {
                        id: op.id,
                        role: op.role,
                    },
                    None,
                )
            }));
    }
    if let Some((key, tier, decision)) = api_keys::authenticate_and_count(&state.db, token).await? {
        return Ok(Some((
            Caller::ApiKey {
                id: key.id,
                scope: api_keys::scope_of(&key.scope),
                name: key.name,
                tier,
            },
            decision,
        )));
    }
    Ok(None)
}

fn add_rate_headers(res: &mut ServiceResponse<BoxBody>, d: &RateDecision) {
    let h = res.headers_mut();
    h.insert(
        HeaderName::from_static("x-ratelimit-limit"),
        HeaderValue::from(d.limit),
    );
    h.insert(
        HeaderName::from_static("x-ratelimit-remaining"),
        HeaderValue::from(d.remaining),
    );
    h.insert(
        HeaderName::from_static("x-ratelimit-reset"),
        HeaderValue::from(d.reset),
    );
}
