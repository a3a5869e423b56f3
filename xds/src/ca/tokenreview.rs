//! Bearer tokens checked by the Kubernetes API's TokenReview, as istiod's
//! `KubeJWTAuthenticator`: the API server says whether the token is valid, for which
//! audiences, and whose it is (`system:serviceaccount:NAMESPACE:NAME`). The token must
//! be meant for one of our audiences (`istio-ca` for Istio's projected `istio-token`),
//! so a token issued to some other service cannot be replayed here.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use kube::Client;

use super::{CaError, TokenReviewer};

/// TokenReview through the Kubernetes client membrane-xds watches the API with.
pub struct KubeTokenReviewer {
    client: Client,
    audiences: Vec<String>,
}

impl KubeTokenReviewer {
    /// Reviews tokens with `client`, accepting those meant for one of `audiences`.
    pub fn new(client: Client, audiences: Vec<String>) -> Self {
        KubeTokenReviewer { client, audiences }
    }
}

/// `(namespace, service account)` of a reviewed token, from the review's answer.
pub fn identity_of(
    review: &TokenReview,
    audiences: &[String],
) -> Result<(String, String), CaError> {
    let Some(status) = &review.status else {
        return Err(CaError::Review(
            "the API server's TokenReview has no status".into(),
        ));
    };
    if let Some(e) = status.error.as_deref().filter(|e| !e.is_empty()) {
        return Err(CaError::Token(format!("the API server says: {e}")));
    }
    if status.authenticated != Some(true) {
        return Err(CaError::Token(
            "the API server does not authenticate it (expired, revoked or not a Kubernetes token)"
                .into(),
        ));
    }
    // The API server answers the audiences of ours the token is valid for; an answer
    // without any means it checked none of them.
    let granted = status.audiences.clone().unwrap_or_default();
    if !audiences.is_empty() && !granted.iter().any(|a| audiences.contains(a)) {
        return Err(CaError::Token(format!(
            "not meant for this CA: its audiences are {granted:?}, expected one of {audiences:?}"
        )));
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.clone())
        .unwrap_or_default();
    let parts: Vec<&str> = username.split(':').collect();
    match parts.as_slice() {
        ["system", "serviceaccount", ns, sa] if !ns.is_empty() && !sa.is_empty() => {
            Ok(((*ns).to_owned(), (*sa).to_owned()))
        }
        _ => Err(CaError::Token(format!(
            "{username:?} is not a service account (system:serviceaccount:NAMESPACE:NAME)"
        ))),
    }
}

#[tonic::async_trait]
impl TokenReviewer for KubeTokenReviewer {
    async fn review(&self, token: &str) -> Result<(String, String), CaError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(self.audiences.clone()).filter(|a| !a.is_empty()),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| CaError::Review(e.to_string()))?;
        identity_of(&answer, &self.audiences)
    }
}
