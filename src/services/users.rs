//! The seller's amoCRM users: who may be made responsible for an order. amoCRM lists users to admins only;
//! for anyone else the list is unknown rather than an error.

use amocrm_client::ApiError;

use crate::services::Context;
use crate::services::tokens::{self, TokenError};

/// `(id, name, active)` of every user, or `None` when the connecting user may not list them.
pub async fn list(
    state: &Context,
    seller_id: &str,
) -> Result<Option<Vec<(i64, String, bool)>>, TokenError> {
    // Only administrators may list users: a 403 here is about the user's rights, not a blocked account.
    let how = tokens::Calling {
        forbidden_is_rights: true,
        ..tokens::Calling::default()
    };
    let users = tokens::with_api_as(state, seller_id, how, |amo| async move {
        amo.api().users().await
    })
    .await;
    match users {
        Ok(users) => Ok(Some(
            users
                .into_iter()
                .filter_map(|u| Some((i64::try_from(u.id).ok()?, u.name, u.rights.is_active)))
                .collect(),
        )),
        Err(TokenError::Api(ApiError::Forbidden { .. })) => Ok(None),
        Err(e) => Err(e),
    }
}
