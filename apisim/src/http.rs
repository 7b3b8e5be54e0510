//! Request routing: discovery, resource verbs, subresources, tokens.

use crate::apply::Part;
use crate::delete::{DeleteOptions, Propagation};
use crate::discovery;
use crate::error::ApiError;
use crate::patching::PatchKind;
use crate::render::{render_list, render_object, Accept};
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::Shared;
use crate::state::WatchFilter;
use crate::util::Query;
use crate::watch::watch_response;
use crate::write::obj_key;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;

pub type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

pub enum Reply {
    Json(StatusCode, Value),
    Text(&'static str),
    Stream(http::Response<Body>),
}

pub struct Req<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Query,
    pub accept: Accept,
    pub content_type: &'a str,
    pub body: &'a Bytes,
}

struct Target<'a> {
    ns: Option<&'a str>,
    plural: &'a str,
    name: Option<&'a str>,
    sub: Option<&'a str>,
}

fn parse_target<'a>(rest: &[&'a str]) -> Option<Target<'a>> {
    let t = |ns, plural, name, sub| {
        Some(Target {
            ns,
            plural,
            name,
            sub,
        })
    };
    match *rest {
        ["namespaces", ns, plural] if !matches!(plural, "status" | "finalize") => {
            t(Some(ns), plural, None, None)
        }
        ["namespaces", ns, plural, name] => t(Some(ns), plural, Some(name), None),
        ["namespaces", ns, plural, name, sub] => t(Some(ns), plural, Some(name), Some(sub)),
        [plural] => t(None, plural, None, None),
        [plural, name] => t(None, plural, Some(name), None),
        [plural, name, sub] => t(None, plural, Some(name), Some(sub)),
        _ => None,
    }
}

pub fn route(shared: &Arc<Shared>, req: &Req) -> Result<Reply, ApiError> {
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let ok = |v: Value| Ok(Reply::Json(StatusCode::OK, v));
    let get_only = || {
        if req.method != Method::GET {
            return Err(ApiError::method_not_allowed(format!(
                "{} is not allowed on {}",
                req.method, req.path
            )));
        }
        Ok(())
    };
    match segs.as_slice() {
        ["version"] => get_only().and_then(|_| ok(discovery::version())),
        ["healthz" | "readyz" | "livez"] => Ok(Reply::Text("ok")),
        ["api"] | ["apis"] => {
            get_only()?;
            let core = segs[0] == "api";
            let st = shared.lock();
            if req.accept == Accept::AggregatedDiscovery {
                ok(discovery::aggregated(&st.registry, core))
            } else if core {
                ok(discovery::core_versions())
            } else {
                ok(discovery::group_list(&st.registry))
            }
        }
        ["apis", g] => {
            get_only()?;
            discovery::group(&shared.lock().registry, g)
                .map_or_else(|| Err(ApiError::path_not_found()), ok)
        }
        ["api", v] => get_only().and_then(|_| {
            discovery::resource_list(&shared.lock().registry, "", v)
                .map_or_else(|| Err(ApiError::path_not_found()), ok)
        }),
        ["apis", g, v] => get_only().and_then(|_| {
            discovery::resource_list(&shared.lock().registry, g, v)
                .map_or_else(|| Err(ApiError::path_not_found()), ok)
        }),
        ["api", v, rest @ ..] => resource(shared, req, "", v, rest),
        ["apis", g, v, rest @ ..] => resource(shared, req, g, v, rest),
        _ => Err(ApiError::path_not_found()),
    }
}

fn json_body(req: &Req, what: &str) -> Result<Value, ApiError> {
    if !req.content_type.is_empty()
        && !req.content_type.starts_with("application/json")
        && !req.content_type.contains("yaml")
    {
        return Err(ApiError::unsupported_media_type(format!(
            "the body of {what} has Content-Type {:?}; apisim accepts application/json only",
            req.content_type
        )));
    }
    serde_json::from_slice(req.body)
        .map_err(|e| ApiError::bad_request(format!("the body of {what} is not valid JSON: {e}")))
}

fn resource(
    shared: &Arc<Shared>,
    req: &Req,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Reply, ApiError> {
    if req.query.get("dryRun").is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::bad_request(
            "apisim does not implement dryRun; send the request without it",
        ));
    }
    let t = parse_target(rest).ok_or_else(ApiError::path_not_found)?;
    let rt = shared
        .lock()
        .registry
        .lookup(group, version, t.plural)
        .cloned()
        .ok_or_else(ApiError::path_not_found)?;
    if (!rt.namespaced && t.ns.is_some()) || (rt.namespaced && t.ns.is_none() && t.name.is_some()) {
        return Err(ApiError::path_not_found());
    }
    let m = req.method;
    if rt.create_only {
        if *m != Method::POST || t.name.is_some() {
            return Err(ApiError::method_not_allowed(format!(
                "{} supports create only",
                rt.qualified()
            )));
        }
        let body = json_body(req, "the TokenReview")?;
        return Ok(Reply::Json(
            StatusCode::CREATED,
            shared.lock().token_review(&body),
        ));
    }
    let Some(name) = t.name else {
        return collection(shared, req, &rt, version, t.ns);
    };
    let part = match t.sub {
        None => Part::Main,
        Some("status") if rt.status => Part::Status,
        Some("token") if rt.group.is_empty() && rt.plural == "serviceaccounts" => {
            if *m != Method::POST {
                return Err(ApiError::method_not_allowed(
                    "serviceaccounts/token supports create only",
                ));
            }
            let body = json_body(req, "the TokenRequest")?;
            let out = shared
                .lock()
                .token_request(t.ns.unwrap_or(""), name, &body)?;
            return Ok(Reply::Json(StatusCode::CREATED, out));
        }
        Some(_) => return Err(ApiError::path_not_found()),
    };
    let render = |v: Value| render_object(v, &rt, version, req.accept);
    let key = obj_key(&rt, t.ns, name);
    match *m {
        Method::GET => {
            let obj = shared.lock().get_or_404(&rt, &key)?;
            Ok(Reply::Json(StatusCode::OK, render(obj)))
        }
        Method::PUT => {
            let body = json_body(req, &format!("the update of {} \"{name}\"", rt.qualified()))?;
            let obj = shared
                .lock()
                .replace(&rt, version, t.ns, name, body, part)?;
            Ok(Reply::Json(StatusCode::OK, render(obj)))
        }
        Method::PATCH => {
            let kind = PatchKind::from_content_type(req.content_type).ok_or_else(|| {
                ApiError::unsupported_media_type(format!(
                    "the body of the request was in an unknown format ({:?}); accepted media types are application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml",
                    req.content_type
                ))
            })?;
            let manager = req.query.get("fieldManager");
            let force = req.query.flag("force");
            let (obj, created) = shared.lock().patch(
                &rt, version, t.ns, name, kind, req.body, part, manager, force,
            )?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(Reply::Json(code, render(obj)))
        }
        Method::DELETE if part == Part::Main => {
            let opts = delete_options(req)?;
            let d = shared.lock().delete(&rt, &key, &opts)?;
            let code = if d.removed {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            Ok(Reply::Json(code, render(d.obj)))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{m} is not allowed on {}",
            req.path
        ))),
    }
}

fn delete_options(req: &Req) -> Result<DeleteOptions, ApiError> {
    let body: Value = if req.body.is_empty() {
        json!({})
    } else {
        json_body(req, "DeleteOptions")?
    };
    let policy = body
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .or(req.query.get("propagationPolicy"))
        .map(Propagation::parse)
        .transpose()?;
    let orphan = body.get("orphanDependents").and_then(Value::as_bool) == Some(true)
        || req.query.flag("orphanDependents");
    let propagation = policy.unwrap_or(if orphan {
        Propagation::Orphan
    } else {
        Propagation::Background
    });
    let pre = |f: &str| {
        body.pointer(&format!("/preconditions/{f}"))
            .and_then(Value::as_str)
            .map(String::from)
    };
    Ok(DeleteOptions {
        propagation,
        precondition_uid: pre("uid"),
        precondition_rv: pre("resourceVersion"),
    })
}

fn selectors(q: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let l = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let f = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    Ok((l, f))
}

fn collection(
    shared: &Arc<Shared>,
    req: &Req,
    rt: &ResourceType,
    version: &str,
    ns: Option<&str>,
) -> Result<Reply, ApiError> {
    match *req.method {
        Method::GET => {
            let (labels, fields) = selectors(&req.query)?;
            if req.query.flag("watch") {
                let filter = WatchFilter {
                    res: rt.key(),
                    ns: ns.map(String::from),
                    labels,
                    fields,
                };
                return watch_response(shared, rt, version, filter, &req.query, req.accept)
                    .map(Reply::Stream);
            }
            let st = shared.lock();
            let items = st.list(&rt.key(), ns, &labels, &fields);
            Ok(Reply::Json(
                StatusCode::OK,
                render_list(items, st.rv(), rt, version, req.accept),
            ))
        }
        Method::POST if rt.namespaced && ns.is_none() => {
            Err(ApiError::method_not_allowed(format!(
                "create {} in a namespace: POST /.../namespaces/{{ns}}/{}",
                rt.qualified(),
                rt.plural
            )))
        }
        Method::POST => {
            let body = json_body(req, &format!("the new {}", rt.kind))?;
            let obj = shared.lock().create(rt, version, ns, body, false)?;
            Ok(Reply::Json(
                StatusCode::CREATED,
                render_object(obj, rt, version, req.accept),
            ))
        }
        Method::DELETE => {
            let (labels, fields) = selectors(&req.query)?;
            let opts = delete_options(req)?;
            let mut st = shared.lock();
            let keys: Vec<_> = st
                .list(&rt.key(), ns, &labels, &fields)
                .iter()
                .filter_map(|o| {
                    crate::util::meta_str(o, "name")
                        .map(|n| obj_key(rt, crate::util::meta_str(o, "namespace"), n))
                })
                .collect();
            let mut items = Vec::new();
            for k in keys {
                if let Ok(d) = st.delete(rt, &k, &opts) {
                    items.push(d.obj);
                }
            }
            let rv = st.rv();
            Ok(Reply::Json(
                StatusCode::OK,
                render_list(items, rv, rt, version, req.accept),
            ))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{} is not allowed on {}",
            req.method, req.path
        ))),
    }
}
