//! Reading manifests (`-f FILE|DIR|-`, multi-document YAML or JSON) and checking Ambit
//! objects client-side before anything is sent.

use std::io::Read;
use std::path::Path;

use ambit_operator::crd::{self, Validate};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{failed, usage, Result};

/// One document of one file.
#[derive(Clone, Debug)]
pub struct Doc {
    pub file: String,
    /// 1-based position of the document in its file.
    pub index: usize,
    /// First line of the document in the file (1-based), for error messages.
    pub line: usize,
    pub text: String,
    pub value: Value,
}

impl Doc {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    pub fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or("")
    }
    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub fn namespace(&self) -> Option<&str> {
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
    }
    pub fn place(&self) -> String {
        format!("{} document {}", self.file, self.index)
    }
}

/// Loads every document from the given files, directories (their `.yaml`, `.yml`, `.json`
/// files, sorted) or `-` (stdin).
pub fn load(inputs: &[String]) -> Result<Vec<Doc>> {
    let mut docs = vec![];
    for input in inputs {
        if input == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| usage(format!("reading stdin: {e}")))?;
            docs.extend(split("<stdin>", &text)?);
            continue;
        }
        let path = Path::new(input);
        let files = if path.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(path)
                .map_err(|e| usage(format!("reading directory {input}: {e}")))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        for f in files {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| usage(format!("reading {}: {e}", f.display())))?;
            docs.extend(split(&f.display().to_string(), &text)?);
        }
    }
    Ok(docs)
}

/// Splits multi-document YAML at `---` lines and parses each non-empty document.
pub fn split(file: &str, text: &str) -> Result<Vec<Doc>> {
    let mut chunks: Vec<(usize, String)> = vec![(1, String::new())];
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") || t.starts_with("---#") {
            chunks.push((i + 2, String::new()));
            continue;
        }
        let cur = &mut chunks.last_mut().expect("one chunk at least").1;
        cur.push_str(line);
        cur.push('\n');
    }
    let mut docs = vec![];
    for (n, (line, text)) in chunks.into_iter().enumerate() {
        let value: Value = serde_yaml::from_str(&text).map_err(|e| {
            failed(format!(
                "{file} document {}: not valid YAML: {}",
                n + 1,
                relocate(&e, line)
            ))
        })?;
        if value.is_null() {
            continue;
        }
        if !value.is_object() {
            return Err(failed(format!(
                "{file} document {}: expected an object with apiVersion and kind",
                n + 1
            )));
        }
        docs.push(Doc {
            file: file.to_string(),
            index: n + 1,
            line,
            text,
            value,
        });
    }
    Ok(docs)
}

/// serde_yaml's message with its line made absolute within the file.
fn relocate(e: &serde_yaml::Error, first_line: usize) -> String {
    let msg = e.to_string();
    match (e.location(), msg.rfind(" at line ")) {
        (Some(loc), Some(at)) => format!(
            "{} (line {} column {})",
            &msg[..at],
            loc.line() + first_line - 1,
            loc.column()
        ),
        _ => msg,
    }
}

fn typed<T>(doc: &Doc) -> std::result::Result<Vec<String>, String>
where
    T: DeserializeOwned + HasSpec,
{
    let obj: T = serde_yaml::from_str(&doc.text).map_err(|e| relocate(&e, doc.line))?;
    Ok(obj.problems())
}

/// The spec's cross-field rules, as `field: message` strings.
trait HasSpec {
    fn problems(&self) -> Vec<String>;
}

macro_rules! has_spec {
    ($($t:ty),*) => {$(
        impl HasSpec for $t {
            fn problems(&self) -> Vec<String> {
                self.spec.validate().iter().map(ToString::to_string).collect()
            }
        }
    )*};
}
has_spec!(
    crd::Mesh,
    crd::Waypoint,
    crd::TrafficRoute,
    crd::BackendPolicy,
    crd::AuthorizationPolicy,
    crd::PeerAuthentication
);

/// Every problem found in `docs`, each naming file, document index, object and field.
pub fn validate(docs: &[Doc]) -> Vec<String> {
    let mut out = vec![];
    for d in docs {
        let what = format!("{} ({}/{})", d.place(), d.kind(), d.name());
        if d.api_version().is_empty() || d.kind().is_empty() {
            out.push(format!("{}: apiVersion and kind are required", d.place()));
            continue;
        }
        if d.name().is_empty() {
            out.push(format!("{what}: metadata.name: required"));
            continue;
        }
        if d.api_version() != format!("{}/{}", crd::GROUP, crd::VERSION) {
            if d.api_version().starts_with("ambit.dev/") {
                out.push(format!(
                    "{what}: apiVersion: {} is not served; use {}/{}",
                    d.api_version(),
                    crd::GROUP,
                    crd::VERSION
                ));
            }
            continue;
        }
        let res = match d.kind() {
            "Mesh" => typed::<crd::Mesh>(d),
            "Waypoint" => typed::<crd::Waypoint>(d),
            "TrafficRoute" => typed::<crd::TrafficRoute>(d),
            "BackendPolicy" => typed::<crd::BackendPolicy>(d),
            "AuthorizationPolicy" => typed::<crd::AuthorizationPolicy>(d),
            "PeerAuthentication" => typed::<crd::PeerAuthentication>(d),
            other => Err(format!(
                "kind: {other} is not an ambit.dev kind (Mesh, Waypoint, TrafficRoute, BackendPolicy, AuthorizationPolicy, PeerAuthentication)"
            )),
        };
        match res {
            Ok(problems) => out.extend(problems.into_iter().map(|p| format!("{what}: {p}"))),
            Err(e) => out.push(format!("{what}: {e}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "apiVersion: ambit.dev/v1alpha1\nkind: TrafficRoute\nmetadata: {name: r, namespace: ns}\nspec:\n  targetRef: {name: reviews}\n  rules:\n    - backends:\n        - subset: {version: v1}\n          weight: 0\n";

    #[test]
    fn splits_documents_and_skips_empty_ones() {
        let text = format!("# comment only\n---\n{ROUTE}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: x}}\n---\n");
        let docs = split("f.yaml", &text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (docs[0].index, docs[0].line, docs[0].kind()),
            (2, 3, "TrafficRoute")
        );
        assert_eq!((docs[1].index, docs[1].name()), (3, "x"));
    }

    #[test]
    fn validation_names_file_document_and_field() {
        let docs = split("routes.yaml", &format!("---\n{ROUTE}")).unwrap();
        let errs = validate(&docs);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("routes.yaml document 2 (TrafficRoute/r): spec.rules[0]"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn schema_errors_carry_the_field_path_and_file_line() {
        let bad = ROUTE.replace("weight: 0", "weight: lots");
        let docs = split("r.yaml", &format!("---\n{bad}")).unwrap();
        let errs = validate(&docs);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("weight"), "{}", errs[0]);
        assert!(errs[0].contains("line 10"), "{}", errs[0]);
        let docs = split(
            "v.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
        )
        .unwrap();
        assert!(
            validate(&docs).is_empty(),
            "non-Ambit kinds are left to the server"
        );
    }
}
