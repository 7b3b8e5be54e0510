//! ServiceAccount tokens (TokenRequest) and their validation (TokenReview).
//!
//! Tokens are opaque random strings remembered in memory, not JWTs: only this server can
//! validate them, which is all a TokenReview client needs.

use crate::error::ApiError;
use crate::resources::ResourceKey;
use crate::state::{ObjKey, State};
use crate::util::{format_rfc3339, meta_str};
use serde_json::{json, Map, Value};
use std::time::{Duration, SystemTime};

/// The audience of tokens that do not name one (the API server's own).
pub const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
const MIN_EXPIRATION: u64 = 600;
const DEFAULT_EXPIRATION: u64 = 3600;

#[derive(Debug, Clone)]
pub struct TokenInfo {
    namespace: String,
    service_account: String,
    sa_uid: String,
    pod: Option<(String, String)>,
    node: Option<(String, String)>,
    expires: SystemTime,
    audiences: Vec<String>,
}

fn key(plural: &str, ns: &str, name: &str) -> ObjKey {
    ObjKey {
        res: ResourceKey::new("", plural),
        ns: ns.to_string(),
        name: name.to_string(),
    }
}

impl State {
    /// Issues a token for `ns/sa`, optionally bound to a pod (whose node is recorded).
    pub fn mint_token(
        &mut self,
        ns: &str,
        sa: &str,
        bound_pod: Option<(&str, Option<&str>)>,
        ttl: Duration,
        audiences: Vec<String>,
    ) -> Result<(String, SystemTime), ApiError> {
        let sa_obj = self
            .get(&key("serviceaccounts", ns, sa))
            .ok_or_else(|| ApiError::not_found("serviceaccounts", sa))?;
        let sa_uid = meta_str(sa_obj, "uid").unwrap_or("").to_string();
        let (pod, node) = match bound_pod {
            None => (None, None),
            Some((name, uid)) => {
                let p = self
                    .get(&key("pods", ns, name))
                    .ok_or_else(|| ApiError::not_found("pods", name))?;
                let puid = meta_str(p, "uid").unwrap_or("").to_string();
                if uid.is_some_and(|u| u != puid) {
                    return Err(ApiError::conflict(
                        "pods",
                        name,
                        &format!("the UID in the bound object reference ({}) does not match the UID in record ({puid})", uid.unwrap_or("")),
                    ));
                }
                let node = p
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .map(|n| {
                        let nuid = self
                            .get(&key("nodes", "", n))
                            .and_then(|o| meta_str(o, "uid"))
                            .unwrap_or("")
                            .to_string();
                        (n.to_string(), nuid)
                    });
                (Some((name.to_string(), puid)), node)
            }
        };
        let bytes: [u8; 32] = rand::random();
        let token = format!(
            "apisim.{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let expires = SystemTime::now() + ttl;
        let audiences = if audiences.is_empty() {
            vec![DEFAULT_AUDIENCE.to_string()]
        } else {
            audiences
        };
        let info = TokenInfo {
            namespace: ns.into(),
            service_account: sa.into(),
            sa_uid,
            pod,
            node,
            expires,
            audiences,
        };
        self.tokens.insert(token.clone(), info);
        Ok((token, expires))
    }

    /// `POST .../serviceaccounts/{sa}/token` with an authentication.k8s.io/v1 TokenRequest.
    pub fn token_request(&mut self, ns: &str, sa: &str, body: &Value) -> Result<Value, ApiError> {
        let spec = body.get("spec").cloned().unwrap_or(json!({}));
        let secs = spec
            .get("expirationSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_EXPIRATION);
        if secs < MIN_EXPIRATION {
            return Err(ApiError::invalid(
                "TokenRequest",
                sa,
                &format!("spec.expirationSeconds: Invalid value: {secs}: may not specify a duration less than 10 minutes"),
            ));
        }
        let bound = match spec.get("boundObjectRef") {
            None | Some(Value::Null) => None,
            Some(r) => match r.get("kind").and_then(Value::as_str) {
                Some("Pod") => {
                    let name = r.get("name").and_then(Value::as_str).unwrap_or("");
                    Some((name, r.get("uid").and_then(Value::as_str).filter(|u| !u.is_empty())))
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "apisim binds tokens to Pods only, not to {other:?} (TokenRequest for serviceaccount {ns}/{sa})"
                    )))
                }
            },
        };
        let audiences: Vec<String> = spec
            .get("audiences")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let (token, expires) =
            self.mint_token(ns, sa, bound, Duration::from_secs(secs), audiences.clone())?;
        let mut out = body.clone();
        if !out.is_object() {
            out = json!({});
        }
        out["apiVersion"] = json!("authentication.k8s.io/v1");
        out["kind"] = json!("TokenRequest");
        out["metadata"] = json!({"name": sa, "namespace": ns, "creationTimestamp": null});
        out["spec"]["expirationSeconds"] = json!(secs);
        out["spec"]["audiences"] = json!(if audiences.is_empty() {
            vec![DEFAULT_AUDIENCE.to_string()]
        } else {
            audiences
        });
        out["status"] = json!({"token": token, "expirationTimestamp": format_rfc3339(expires)});
        Ok(out)
    }

    /// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
    pub fn token_review(&self, body: &Value) -> Value {
        let token = body
            .pointer("/spec/token")
            .and_then(Value::as_str)
            .unwrap_or("");
        let wanted: Vec<String> = body
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let status = match self.review(token, &wanted) {
            Ok(s) => s,
            Err(e) => json!({"authenticated": false, "user": {}, "error": e}),
        };
        let mut out = body.clone();
        if !out.is_object() {
            out = json!({});
        }
        out["apiVersion"] = json!("authentication.k8s.io/v1");
        out["kind"] = json!("TokenReview");
        out["metadata"] = json!({"creationTimestamp": null});
        out["status"] = status;
        out
    }

    fn review(&self, token: &str, wanted: &[String]) -> Result<Value, String> {
        let info = self
            .tokens
            .get(token)
            .ok_or("invalid bearer token: unknown token")?;
        if SystemTime::now() >= info.expires {
            return Err("invalid bearer token, token has expired".into());
        }
        let wanted = if wanted.is_empty() {
            vec![DEFAULT_AUDIENCE.to_string()]
        } else {
            wanted.to_vec()
        };
        let audiences: Vec<&String> = wanted
            .iter()
            .filter(|a| info.audiences.contains(a))
            .collect();
        if audiences.is_empty() {
            return Err(
                "invalid bearer token, token audiences don't match the requested audiences".into(),
            );
        }
        let sa = self.get(&key(
            "serviceaccounts",
            &info.namespace,
            &info.service_account,
        ));
        if sa.and_then(|s| meta_str(s, "uid")) != Some(info.sa_uid.as_str()) {
            return Err(format!(
                "invalid bearer token, service account {}/{} has been deleted",
                info.namespace, info.service_account
            ));
        }
        let mut extra = Map::new();
        if let Some((pod, uid)) = &info.pod {
            let live = self
                .get(&key("pods", &info.namespace, pod))
                .and_then(|p| meta_str(p, "uid"));
            if live != Some(uid.as_str()) {
                return Err(format!(
                    "invalid bearer token, pod {}/{pod} has been deleted",
                    info.namespace
                ));
            }
            extra.insert("authentication.kubernetes.io/pod-name".into(), json!([pod]));
            extra.insert("authentication.kubernetes.io/pod-uid".into(), json!([uid]));
        }
        if let Some((node, uid)) = &info.node {
            extra.insert(
                "authentication.kubernetes.io/node-name".into(),
                json!([node]),
            );
            if !uid.is_empty() {
                extra.insert("authentication.kubernetes.io/node-uid".into(), json!([uid]));
            }
        }
        Ok(json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{}:{}", info.namespace, info.service_account),
                "uid": info.sa_uid,
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", info.namespace), "system:authenticated"],
                "extra": extra,
            },
            "audiences": audiences,
        }))
    }
}
