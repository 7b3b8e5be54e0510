//! [`TokenReviewer`] over the Kubernetes TokenReview API (`authentication.k8s.io/v1`).

use ambit_core::certs::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use kube::api::PostParams;
use kube::{Api, Client};

use super::auth::{Caller, ReviewError, TokenReviewer};

/// `user.extra` keys the API server sets for pod-bound projected tokens.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// Asks the API server whether a token is valid and whose it is. Needs RBAC `create` on
/// `tokenreviews` (the operator's ClusterRole grants it).
pub struct KubeTokenReviewer {
    client: Client,
    /// Audiences the token must carry (empty: the API server's default audience).
    audiences: Vec<String>,
}

impl KubeTokenReviewer {
    pub fn new(client: Client, audiences: Vec<String>) -> Self {
        Self { client, audiences }
    }
}

fn first_extra(user: &UserInfo, key: &str) -> Option<String> {
    user.extra
        .as_ref()
        .and_then(|e| e.get(key))
        .and_then(|v| v.first())
        .cloned()
}

/// Reads the API server's answer.
pub fn caller_of(review: &TokenReview) -> Result<Caller, ReviewError> {
    let status = review
        .status
        .as_ref()
        .ok_or_else(|| ReviewError::Unavailable("TokenReview came back without status".into()))?;
    if status.authenticated != Some(true) {
        return Err(ReviewError::Invalid(status.error.clone().unwrap_or_else(
            || "the API server did not authenticate it".into(),
        )));
    }
    let user = status
        .user
        .as_ref()
        .ok_or_else(|| ReviewError::Invalid("authenticated without a user".into()))?;
    let username = user.username.as_deref().unwrap_or_default();
    Caller::from_username(
        username,
        first_extra(user, EXTRA_POD_NAME),
        first_extra(user, EXTRA_NODE_NAME),
    )
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, ReviewError>> {
        Box::pin(async move {
            let api: Api<TokenReview> = Api::all(self.client.clone());
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_string()),
                    audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
                },
                ..Default::default()
            };
            let answer = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| ReviewError::Unavailable(format!("TokenReview create: {e}")))?;
            caller_of(&answer)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::TokenReviewStatus;
    use std::collections::BTreeMap;

    fn review(authenticated: bool, username: &str, node: Option<&str>) -> TokenReview {
        let mut extra = BTreeMap::new();
        if let Some(n) = node {
            extra.insert(EXTRA_NODE_NAME.to_string(), vec![n.to_string()]);
            extra.insert(EXTRA_POD_NAME.to_string(), vec!["ztunnel-abc".to_string()]);
        }
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                error: (!authenticated).then(|| "token expired".to_string()),
                user: Some(UserInfo {
                    username: Some(username.into()),
                    extra: Some(extra),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn reads_pod_bound_service_account_tokens() {
        let c = caller_of(&review(
            true,
            "system:serviceaccount:ambit-system:ztunnel",
            Some("node-1"),
        ))
        .unwrap();
        assert_eq!(c.node.as_deref(), Some("node-1"));
        assert_eq!(c.pod.as_deref(), Some("ztunnel-abc"));
        assert_eq!(c.service_account, "ztunnel");
        let err = caller_of(&review(false, "x", None)).unwrap_err();
        assert_eq!(err, ReviewError::Invalid("token expired".into()));
        assert!(caller_of(&review(true, "kubernetes-admin", None)).is_err());
    }
}
