//! A small Prometheus / OpenMetrics text-format parser and PromQL-style helpers for `top`.
//!
//! Only what scraping the mesh's own proxies needs: samples with labels (escaped quotes,
//! backslashes and newlines in values), comments skipped, `# EOF` honoured, optional
//! timestamps ignored.

use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("metrics line {line}: {message}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
    pub text: String,
}

pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = vec![];
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            if line == "# EOF" {
                break;
            }
            continue;
        }
        let err = |m: &str| ParseError {
            line: i + 1,
            message: m.to_string(),
            text: raw.to_string(),
        };
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| err("no value"))?;
        let name = line[..name_end].to_string();
        let mut rest = &line[name_end..];
        let mut labels = Labels::new();
        if rest.starts_with('{') {
            let (l, after) = parse_labels(&rest[1..]).map_err(|m| err(&m))?;
            labels = l;
            rest = after;
        }
        let value_txt = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| err("no value"))?;
        let value = parse_value(value_txt).ok_or_else(|| err("value is not a number"))?;
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok(out)
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        s => s.parse().ok(),
    }
}

/// Parses `k="v",k2="v2"}` (after the `{`); returns the labels and the text after `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start();
        let body = s.strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = body.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated escape".into()),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.insert(key, value);
        s = &body[end + 1..];
    }
}

/// Sum of `name` samples, grouped by the values of `by` (missing labels group as "").
pub fn sum_by(samples: &[Sample], name: &str, by: &[&str]) -> BTreeMap<Vec<String>, f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        let key = by
            .iter()
            .map(|l| s.labels.get(*l).cloned().unwrap_or_default())
            .collect();
        *out.entry(key).or_insert(0.0) += s.value;
    }
    out
}

/// Cumulative histogram buckets `(le, count)` grouped by `by`, summed over other labels.
pub fn buckets_by(
    samples: &[Sample],
    histogram: &str,
    by: &[&str],
) -> BTreeMap<Vec<String>, Vec<(f64, f64)>> {
    let bucket_name = format!("{histogram}_bucket");
    let mut acc: BTreeMap<Vec<String>, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == bucket_name) {
        let Some(le) = s.labels.get("le").and_then(|l| parse_value(l)) else {
            continue;
        };
        let key: Vec<String> = by
            .iter()
            .map(|l| s.labels.get(*l).cloned().unwrap_or_default())
            .collect();
        // Order buckets by bound: f64 bits order positive floats correctly.
        let e = acc
            .entry(key)
            .or_default()
            .entry(le.to_bits())
            .or_insert((le, 0.0));
        e.1 += s.value;
    }
    acc.into_iter()
        .map(|(k, b)| (k, b.into_values().collect()))
        .collect()
}

/// PromQL's `histogram_quantile`: `buckets` are cumulative `(upper bound, count)` sorted by
/// bound and ending with `+Inf`. Linear interpolation inside the bucket holding the rank; the
/// first bucket's lower bound is 0; a rank in the `+Inf` bucket yields the highest finite
/// bound. `None` without observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 || !buckets.last()?.0.is_infinite() {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut prev = (0.0, 0.0);
    for (i, &(le, count)) in buckets.iter().enumerate() {
        if count >= rank {
            if le.is_infinite() {
                return Some(if i > 0 { buckets[i - 1].0 } else { 0.0 });
            }
            let (lower, below) = prev;
            let in_bucket = count - below;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(lower + (le - lower) * (rank - below) / in_bucket);
        }
        prev = (le, count);
    }
    None
}

/// Per-bucket increase between two scrapes of the same cumulative histogram (a counter reset
/// counts from zero, as PromQL's `increase` does).
pub fn bucket_delta(before: Option<&Vec<(f64, f64)>>, after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, c)| {
            let old = before
                .and_then(|b| b.iter().find(|(l, _)| *l == le))
                .map_or(0.0, |x| x.1);
            (le, if c >= old { c - old } else { c })
        })
        .collect()
}

#[cfg(test)]
mod tests;
