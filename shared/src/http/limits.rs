//! A request body's limits, stated once: a field's `#[oai(validator(..))]`
//! puts them in the spec, and [`check`] holds a parsed body to that same
//! schema, naming every field out of its limits at once by its JSON path
//! (`items[1].quantity`). poem-openapi's own checks of them stop at the
//! first failing field and answer in their own words, so they are not run.
//!
//! What is checked: string lengths (in characters) and the `email` format,
//! number bounds, array sizes, through nested objects and arrays. A
//! `multipleOf` (a price's two decimals) is left to the domain, which says
//! it in its own words: in floating point 19.99 is no multiple of 0.01.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, RwLock},
};

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef, Registry},
    types::Type,
};
use serde_json::Value;

use super::{ApiError, FieldError, body::is_deliverable_email};

/// Checks `value`, a body parsed as `T`, against `T`'s schema: every field
/// out of its limits is named in one `validation_failed`.
pub(crate) fn check<T: Type>(value: &Value) -> Result<(), ApiError> {
    let (registry, root) = &*schema_of::<T>();
    let mut fields = Vec::new();
    walk(registry, root, value, "", &mut fields);
    if fields.is_empty() {
        return Ok(());
    }
    fields.sort_by(|a, b| a.field.cmp(&b.field));
    Err(ApiError::validation(fields))
}

type Schema = Arc<(Registry, MetaSchemaRef)>;

/// `T`'s schema and those it refers to, registered once per type (by its
/// name in the spec, which the spec needs unique anyway).
fn schema_of<T: Type>() -> Schema {
    static SCHEMAS: LazyLock<RwLock<HashMap<String, Schema>>> = LazyLock::new(Default::default);
    let id = T::name().into_owned();
    if let Some(schema) = SCHEMAS.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
        return schema.clone();
    }
    let mut registry = Registry::new();
    T::register(&mut registry);
    let schema = Arc::new((registry, T::schema_ref()));
    SCHEMAS
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, schema.clone());
    schema
}

fn walk(
    registry: &Registry,
    schema: &MetaSchemaRef,
    value: &Value,
    path: &str,
    out: &mut Vec<FieldError>,
) {
    let schema: &MetaSchema = match schema {
        MetaSchemaRef::Inline(schema) => schema,
        MetaSchemaRef::Reference(name) => match registry.schemas.get(name) {
            Some(schema) => schema,
            None => return,
        },
    };
    // A field that refers to another schema and adds its own description.
    for part in &schema.all_of {
        walk(registry, part, value, path, out);
    }
    let mut refuse = |message: String| {
        out.push(FieldError {
            field: path.to_string(),
            message,
        })
    };
    match value {
        Value::String(text) => {
            let length = text.chars().count();
            if outside(length, schema.min_length, schema.max_length) {
                refuse(bounds(
                    "length must be",
                    schema.min_length,
                    schema.max_length,
                ));
            }
            if schema.format == Some("email") && !is_deliverable_email(text) {
                refuse("must be an email address".into());
            }
        }
        Value::Number(number) => {
            let number = number.as_f64().unwrap_or(f64::NAN);
            let below = schema.minimum.is_some_and(|min| number < min);
            let above = schema.maximum.is_some_and(|max| number > max);
            if below || above {
                refuse(bounds("must be", schema.minimum, schema.maximum));
            }
        }
        Value::Array(items) => {
            if outside(items.len(), schema.min_items, schema.max_items) {
                refuse(bounds("length must be", schema.min_items, schema.max_items));
            }
            if let Some(item) = &schema.items {
                for (index, value) in items.iter().enumerate() {
                    walk(registry, item, value, &format!("{path}[{index}]"), out);
                }
            }
        }
        Value::Object(map) => {
            for (name, property) in &schema.properties {
                if let Some(value) = map.get(*name) {
                    let path = match path {
                        "" => name.to_string(),
                        _ => format!("{path}.{name}"),
                    };
                    walk(registry, property, value, &path, out);
                }
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

fn outside(n: usize, min: Option<usize>, max: Option<usize>) -> bool {
    min.is_some_and(|min| n < min) || max.is_some_and(|max| n > max)
}

/// "length must be between 1 and 64", "must be at most 10000", ...
fn bounds<N: std::fmt::Display>(what: &str, min: Option<N>, max: Option<N>) -> String {
    match (min, max) {
        (Some(min), Some(max)) => format!("{what} between {min} and {max}"),
        (Some(min), None) => format!("{what} at least {min}"),
        (None, Some(max)) => format!("{what} at most {max}"),
        (None, None) => format!("{what} within its limits"),
    }
}

#[cfg(test)]
mod tests {
    use poem_openapi::Object;

    use super::*;
    use crate::http::EmailAddress;

    /// A line of [`Request`].
    #[derive(Object)]
    struct Line {
        #[oai(validator(minimum(value = "1"), maximum(value = "10")))]
        quantity: u32,
    }

    /// A body with nested limits.
    #[derive(Object)]
    #[oai(rename_all = "camelCase")]
    struct Request {
        #[oai(validator(max_length = 20))]
        customer_email: EmailAddress,
        #[oai(validator(min_items = 1, max_items = 3))]
        items: Vec<Line>,
        #[oai(validator(min_length = 1, max_length = 5))]
        note: Option<String>,
    }

    fn check_json(json: Value) -> Vec<(String, String)> {
        match check::<Request>(&json) {
            Ok(()) => Vec::new(),
            Err(error) => {
                assert_eq!(error.status, poem::http::StatusCode::BAD_REQUEST);
                error
                    .fields
                    .into_iter()
                    .map(|f| (f.field, f.message))
                    .collect()
            }
        }
    }

    fn named(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(f, m)| (f.to_string(), m.to_string()))
            .collect()
    }

    #[test]
    fn a_body_within_its_limits_passes() {
        let body = serde_json::json!({
            "customerEmail": "a@example.com",
            "items": [{ "quantity": 1 }, { "quantity": 10 }],
            "note": null,
        });
        assert_eq!(check_json(body), Vec::new());
    }

    #[test]
    fn every_field_out_of_its_limits_is_named_by_its_json_path() {
        let body = serde_json::json!({
            "customerEmail": "not-an-email",
            "items": [{ "quantity": 1 }, { "quantity": 0 }, { "quantity": 11 }],
            "note": "too long",
        });
        assert_eq!(
            check_json(body),
            named(&[
                ("customerEmail", "must be an email address"),
                ("items[1].quantity", "must be between 1 and 10"),
                ("items[2].quantity", "must be between 1 and 10"),
                ("note", "length must be between 1 and 5"),
            ])
        );
        let body = serde_json::json!({
            "customerEmail": "someone@a-long-domain.example",
            "items": [],
            "note": "",
        });
        assert_eq!(
            check_json(body),
            named(&[
                ("customerEmail", "length must be at most 20"),
                ("items", "length must be between 1 and 3"),
                ("note", "length must be between 1 and 5"),
            ])
        );
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        let body = serde_json::json!({
            "customerEmail": "a@example.com",
            "items": [{ "quantity": 1 }],
            "note": "ééééé",
        });
        assert_eq!(check_json(body), Vec::new());
    }

    #[test]
    fn an_address_that_would_aim_the_relay_inside_is_no_email_address() {
        for internal in ["x@[127.0.0.1]", "x@[IPv6:::1]", "x@mongodb"] {
            let body =
                serde_json::json!({ "customerEmail": internal, "items": [{ "quantity": 1 }] });
            assert_eq!(
                check_json(body),
                named(&[("customerEmail", "must be an email address")]),
                "{internal}"
            );
        }
    }
}
