//! Client-side mirror of the TrafficRoute schema's ranges and CEL rules.

use super::{HeaderMatchType, PathMatchType, RetryOn, RouteBackend, RouteRule, TrafficRouteSpec};
use crate::crd::common::Duration;
use crate::crd::{Validate, ValidationError};

impl Validate for TrafficRouteSpec {
    fn validate(&self) -> Vec<ValidationError> {
        let mut errs = Vec::new();
        if self.rules.is_empty() {
            errs.push(ValidationError::new(
                "spec.rules",
                "needs at least one rule",
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            validate_rule(rule, &format!("spec.rules[{i}]"), &mut errs);
        }
        errs
    }
}

fn validate_rule(rule: &RouteRule, at: &str, errs: &mut Vec<ValidationError>) {
    if rule.backends.is_empty() {
        errs.push(ValidationError::new(
            format!("{at}.backends"),
            "needs at least one backend",
        ));
    } else if !rule.backends.iter().any(|b| b.weight > 0) {
        errs.push(ValidationError::new(
            format!("{at}.backends"),
            "at least one backend needs a weight above 0 (the weights must sum to more than 0)",
        ));
    }
    for (j, b) in rule.backends.iter().enumerate() {
        validate_backend(b, &format!("{at}.backends[{j}]"), errs);
    }
    for (j, m) in rule.matches.iter().enumerate() {
        if let Some(p) = &m.path {
            if p.type_ != PathMatchType::RegularExpression && !p.value.starts_with('/') {
                errs.push(ValidationError::new(
                    format!("{at}.matches[{j}].path"),
                    "an Exact or PathPrefix path must start with '/'",
                ));
            }
        }
        for (k, h) in m.headers.iter().enumerate() {
            if (h.type_ == HeaderMatchType::Present) == h.value.is_some() {
                errs.push(ValidationError::new(
                    format!("{at}.matches[{j}].headers[{k}]"),
                    "value is required, except for type Present where it must be unset",
                ));
            }
        }
    }
    duration(rule.timeout.as_ref(), &format!("{at}.timeout"), errs);
    if let Some(r) = &rule.retries {
        let at = format!("{at}.retries");
        if !(0..=10).contains(&r.attempts) {
            errs.push(ValidationError::new(
                format!("{at}.attempts"),
                format!("{} is out of range: use 0 to 10", r.attempts),
            ));
        }
        duration(
            r.per_try_timeout.as_ref(),
            &format!("{at}.perTryTimeout"),
            errs,
        );
        if r.retry_on.contains(&RetryOn::RetriableStatusCodes)
            && r.retriable_status_codes.is_empty()
        {
            errs.push(ValidationError::new(
                at.clone(),
                "retryOn has retriable-status-codes: list the codes in retriableStatusCodes",
            ));
        }
        for code in &r.retriable_status_codes {
            if !(100..=599).contains(code) {
                errs.push(ValidationError::new(
                    format!("{at}.retriableStatusCodes"),
                    format!("{code} is not an HTTP status (100 to 599)"),
                ));
            }
        }
        if let Some(b) = &r.backoff {
            let base = b.base_interval.parse(&format!("{at}.backoff.baseInterval"));
            let max = b
                .max_interval
                .as_ref()
                .map(|m| m.parse(&format!("{at}.backoff.maxInterval")))
                .transpose();
            match (base, max) {
                (Ok(base), Ok(Some(max))) if max < base => errs.push(ValidationError::new(
                    format!("{at}.backoff"),
                    "maxInterval must not be shorter than baseInterval",
                )),
                (base, max) => errs.extend(base.err().into_iter().chain(max.err())),
            }
        }
    }
    if let Some(f) = &rule.fault {
        let at = format!("{at}.fault");
        if f.delay.is_none() && f.abort.is_none() {
            errs.push(ValidationError::new(
                at.clone(),
                "a fault needs delay, abort or both",
            ));
        }
        if let Some(d) = &f.delay {
            duration(
                Some(&d.fixed_delay),
                &format!("{at}.delay.fixedDelay"),
                errs,
            );
            percentage(d.percentage, &format!("{at}.delay.percentage"), errs);
        }
        if let Some(a) = &f.abort {
            if !(200..=599).contains(&a.http_status) {
                errs.push(ValidationError::new(
                    format!("{at}.abort.httpStatus"),
                    format!("{} is out of range: use 200 to 599", a.http_status),
                ));
            }
            percentage(a.percentage, &format!("{at}.abort.percentage"), errs);
        }
    }
    if let Some(m) = &rule.mirror {
        port(m.port, &format!("{at}.mirror.port"), errs);
        percentage(m.percentage, &format!("{at}.mirror.percentage"), errs);
    }
}

fn validate_backend(b: &RouteBackend, at: &str, errs: &mut Vec<ValidationError>) {
    if b.service.is_some() == b.subset.is_some() {
        errs.push(ValidationError::new(
            at,
            "a backend names exactly one of service or subset",
        ));
    }
    if b.service.is_some() != b.port.is_some() {
        errs.push(ValidationError::new(
            at,
            "port is required with service, and only with service",
        ));
    }
    if b.subset.as_ref().is_some_and(|s| s.is_empty()) {
        errs.push(ValidationError::new(at, "subset needs at least one label"));
    }
    if let Some(p) = b.port {
        port(p, &format!("{at}.port"), errs);
    }
    if !(0..=1000).contains(&b.weight) {
        errs.push(ValidationError::new(
            format!("{at}.weight"),
            format!("{} is out of range: use 0 to 1000", b.weight),
        ));
    }
}

fn duration(d: Option<&Duration>, at: &str, errs: &mut Vec<ValidationError>) {
    if let Some(Err(e)) = d.map(|d| d.parse(at)) {
        errs.push(e);
    }
}

fn percentage(p: f64, at: &str, errs: &mut Vec<ValidationError>) {
    if !(0.0..=100.0).contains(&p) {
        errs.push(ValidationError::new(
            at,
            format!("{p} is out of range: use 0 to 100"),
        ));
    }
}

fn port(p: i32, at: &str, errs: &mut Vec<ValidationError>) {
    if !(1..=65535).contains(&p) {
        errs.push(ValidationError::new(
            at,
            format!("{p} is not a port (1 to 65535)"),
        ));
    }
}
