//! MeshConfig's list fields by their JSON names: how the config stream's resources (one per
//! list element) are turned back into a typed config straight from the JSON they arrived as,
//! and how a few changed elements are edited in without rebuilding the rest.

use serde::de::{DeserializeOwned, Error as _};
use serde::Deserialize;
use serde_json::Value;

use super::MeshConfig;

/// A change to one list element, by its position in key order.
#[derive(Clone, Copy, Debug)]
pub enum ListEdit<'a> {
    Insert(&'a Value),
    Replace(&'a Value),
    Remove,
}

fn edit_vec<T: DeserializeOwned>(
    list: &mut Vec<T>,
    index: usize,
    edit: ListEdit<'_>,
) -> Result<(), serde_json::Error> {
    let out_of_range = || {
        serde_json::Error::custom(format!(
            "position {index} is outside the list of {}",
            list.len()
        ))
    };
    match edit {
        ListEdit::Insert(body) if index <= list.len() => list.insert(index, T::deserialize(body)?),
        ListEdit::Replace(body) if index < list.len() => list[index] = T::deserialize(body)?,
        ListEdit::Remove if index < list.len() => {
            list.remove(index);
        }
        _ => return Err(out_of_range()),
    }
    Ok(())
}

macro_rules! mesh_lists {
    ($($json:literal => $field:ident),* $(,)?) => {
        impl MeshConfig {
            /// JSON names of the list fields (one streamed resource per element).
            pub const LIST_FIELDS: &'static [&'static str] = &[$($json),*];

            /// Replaces the list `kind` with `items`; `Ok(false)` when there is no such list.
            pub fn set_list<'a>(
                &mut self,
                kind: &str,
                items: impl Iterator<Item = &'a Value>,
            ) -> Result<bool, serde_json::Error> {
                match kind {
                    $($json => {
                        self.$field = items.map(Deserialize::deserialize).collect::<Result<_, _>>()?;
                        Ok(true)
                    })*
                    _ => Ok(false),
                }
            }

            /// Edits one element of the list `kind`; `Ok(false)` when there is no such list.
            pub fn edit_list(
                &mut self,
                kind: &str,
                index: usize,
                edit: ListEdit<'_>,
            ) -> Result<bool, serde_json::Error> {
                match kind {
                    $($json => edit_vec(&mut self.$field, index, edit).map(|()| true),)*
                    _ => Ok(false),
                }
            }
        }
    };
}

mesh_lists! {
    "workloads" => workloads,
    "services" => services,
    "policies" => policies,
    "backendPolicies" => backend_policies,
    "routes" => routes,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every field serde knows, from the error deny_unknown_fields gives for an unknown one.
    fn all_fields() -> BTreeSet<String> {
        let err = serde_json::from_str::<MeshConfig>(r#"{"noSuchField": 1}"#)
            .unwrap_err()
            .to_string();
        let expected = err.split("expected one of").nth(1).expect(&err);
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_list_field_is_dispatched_and_nothing_else() {
        let defaults = serde_json::to_value(MeshConfig::default()).unwrap();
        let scalars: BTreeSet<String> = defaults
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| !v.is_array())
            .map(|(k, _)| k.clone())
            .collect();
        let lists: BTreeSet<String> = all_fields().difference(&scalars).cloned().collect();
        let dispatched: BTreeSet<String> = MeshConfig::LIST_FIELDS
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            lists, dispatched,
            "a MeshConfig list is missing from mesh_lists!"
        );
        let mut cfg = MeshConfig::default();
        for kind in MeshConfig::LIST_FIELDS {
            assert!(cfg.set_list(kind, std::iter::empty()).unwrap(), "{kind}");
        }
        assert!(!cfg.set_list("trustDomain", std::iter::empty()).unwrap());
    }

    #[test]
    fn edits_out_of_range_or_of_the_wrong_shape_are_errors() {
        let mut cfg = MeshConfig::default();
        let err = cfg.edit_list("policies", 1, ListEdit::Remove).unwrap_err();
        assert!(
            err.to_string()
                .contains("position 1 is outside the list of 0"),
            "{err}"
        );
        let bad = serde_json::json!({"name": 3});
        assert!(cfg
            .edit_list("policies", 0, ListEdit::Insert(&bad))
            .is_err());
        assert!(cfg.policies.is_empty());
    }
}
