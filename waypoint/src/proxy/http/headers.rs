//! Header handling on the way upstream: hop-by-hop removal, a rule's header changes, and the
//! original client in `Forwarded` / `X-Forwarded-For`.

use std::net::SocketAddr;

use ambit_core::meshconfig::route::HeaderChanges;
use http::header::{HeaderName, HeaderValue, CONNECTION};
use http::HeaderMap;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Drops hop-by-hop headers (and those `Connection` names); keeps `te: trailers` (gRPC).
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
    if h.get("te").is_some_and(|v| v != "trailers") {
        h.remove("te");
    }
}

/// Tells the app who the original client was, as Envoy does for a waypoint: appends the
/// caller (from the tunnel's `Forwarded: for=`) to `Forwarded` (RFC 7239) and to
/// `X-Forwarded-For`. The app's TCP peer is the waypoint, so this is all it has.
pub fn add_forwarded(h: &mut HeaderMap, caller: SocketAddr) {
    let append = |h: &mut HeaderMap, name: HeaderName, value: String| {
        let joined = match h.get(&name).and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.is_empty() => format!("{prev}, {value}"),
            _ => value,
        };
        if let Ok(v) = HeaderValue::from_str(&joined) {
            h.insert(name, v);
        }
    };
    append(h, http::header::FORWARDED, format!("for=\"{caller}\""));
    append(
        h,
        HeaderName::from_static("x-forwarded-for"),
        caller.ip().to_string(),
    );
}

pub fn apply_headers(h: &mut HeaderMap, changes: Option<&HeaderChanges>) {
    let Some(c) = changes else { return };
    // Names and values were validated when the route was loaded.
    let pairs = |m: &std::collections::BTreeMap<String, String>| -> Vec<(HeaderName, HeaderValue)> {
        m.iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect()
    };
    for (k, v) in pairs(&c.set) {
        h.insert(k, v);
    }
    for (k, v) in pairs(&c.add) {
        h.append(k, v);
    }
    for k in &c.remove {
        h.remove(k.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_append_the_caller() {
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, "10.0.0.1:4000".parse().unwrap());
        assert_eq!(h["forwarded"], "for=\"10.0.0.1:4000\"");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        add_forwarded(&mut h, "[fd00::2]:80".parse().unwrap());
        assert_eq!(
            h["forwarded"],
            "for=\"10.0.0.1:4000\", for=\"[fd00::2]:80\""
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, fd00::2");
    }
}
