//! The spec as served at `/openapi.json`, with what poem-openapi leaves out,
//! and the `Allow` header of a 405, which the spec also tells.
//!
//! Every request body type denies unknown fields (`deny_unknown_fields` for
//! both poem-openapi and serde), but poem-openapi cannot say so in a schema:
//! `additionalProperties: false` is added here to each object a request body
//! refers to. And a method a path does not have is a 405 that names, in
//! `Allow`, the methods it has (RFC 9110).

use std::{collections::BTreeSet, sync::Arc};

use poem::{
    Endpoint, IntoResponse, Request, Response,
    http::{HeaderValue, StatusCode, header},
};
use poem_openapi::{OpenApi, OpenApiService};
use serde_json::{Map, Value};

use super::error::json_errors;

/// The served spec and, per path of it, the methods it answers.
pub(crate) struct Contract {
    spec: String,
    paths: Vec<(Vec<Segment>, HeaderValue)>,
}

#[derive(Debug, PartialEq)]
enum Segment {
    Literal(String),
    Parameter,
}

impl Contract {
    pub fn of<T: OpenApi, W: poem_openapi::Webhook>(service: &OpenApiService<T, W>) -> Arc<Self> {
        let mut spec: Value =
            serde_json::from_str(&service.spec()).expect("poem-openapi writes its spec as JSON");
        close_request_bodies(&mut spec);
        unwrap_described_refs(&mut spec);
        let paths = spec["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(path, operations)| {
                let mut methods: BTreeSet<String> = operations
                    .as_object()
                    .into_iter()
                    .flat_map(|o| o.keys())
                    .map(|m| m.to_ascii_uppercase())
                    .collect();
                // poem answers HEAD wherever it answers GET.
                if methods.contains("GET") {
                    methods.insert("HEAD".into());
                }
                let allow = methods.into_iter().collect::<Vec<_>>().join(", ");
                (
                    segments(path),
                    HeaderValue::from_str(&allow).expect("method names are ASCII"),
                )
            })
            .collect();
        Arc::new(Contract {
            spec: spec.to_string(),
            paths,
        })
    }

    /// The spec, JSON.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// The methods `path` answers, when it is a path of the spec. A literal
    /// segment beats a parameter (`/api/orders/status/{status}` over
    /// `/api/orders/{order_id}`), as in poem's router.
    fn allowed(&self, path: &str) -> Option<&HeaderValue> {
        let asked: Vec<&str> = path.trim_matches('/').split('/').collect();
        self.paths
            .iter()
            .filter(|(template, _)| {
                template.len() == asked.len()
                    && template.iter().zip(&asked).all(|(t, a)| match t {
                        Segment::Literal(literal) => literal == a,
                        Segment::Parameter => !a.is_empty(),
                    })
            })
            .min_by_key(|(template, _)| {
                template
                    .iter()
                    .map(|s| *s == Segment::Parameter)
                    .collect::<Vec<_>>()
            })
            .map(|(_, allow)| allow)
    }
}

fn segments(template: &str) -> Vec<Segment> {
    template
        .trim_matches('/')
        .split('/')
        .map(|s| {
            if s.starts_with('{') && s.ends_with('}') {
                Segment::Parameter
            } else {
                Segment::Literal(s.to_string())
            }
        })
        .collect()
}

/// The `around` middleware: a 405 gets its `Allow` header.
pub(crate) async fn allow_header<E: Endpoint>(
    contract: Arc<Contract>,
    next: E,
    req: Request,
) -> poem::Result<Response> {
    let path = req.uri().path().to_string();
    match next.call(req).await {
        Err(error) if error.status() == StatusCode::METHOD_NOT_ALLOWED => {
            let Some(allow) = contract.allowed(&path) else {
                return Err(error);
            };
            let mut response = json_errors(error).await;
            response.headers_mut().insert(header::ALLOW, allow.clone());
            Ok(response)
        }
        other => other.map(IntoResponse::into_response),
    }
}

/// `{"$ref": R, "description": D}` for poem-openapi's
/// `{"allOf": [{"$ref": R}, {"description": D}]}`, its way of describing a
/// field whose type is a named schema. Generators take the wrapper for a
/// composition: openapi-python-client 0.29 cannot "take allOf a
/// non-object" (an enum) and drops every model that holds such a field,
/// `OrderView` among them. OpenAPI 3.0 readers ignore a `$ref`'s siblings,
/// so the description stays for those that show it and costs the others
/// nothing.
fn unwrap_described_refs(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if let Some(Value::Array(parts)) = object.get("allOf")
                && let [Value::Object(reference), notes @ ..] = parts.as_slice()
                && reference.len() == 1
                && reference.contains_key("$ref")
                && notes
                    .iter()
                    .all(|note| note.as_object().is_some_and(|n| !n.contains_key("$ref")))
            {
                let mut unwrapped = reference.clone();
                for note in notes.iter().filter_map(Value::as_object) {
                    unwrapped.extend(note.clone());
                }
                object.remove("allOf");
                unwrapped.extend(std::mem::take(object));
                *object = unwrapped;
            }
            object.values_mut().for_each(unwrap_described_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_described_refs),
        _ => {}
    }
}

/// `additionalProperties: false` on every object schema a request body
/// refers to, directly or through its properties and items.
fn close_request_bodies(spec: &mut Value) {
    let mut names = Vec::new();
    for operation in spec["paths"]
        .as_object()
        .into_iter()
        .flat_map(Map::values)
        .filter_map(Value::as_object)
        .flat_map(Map::values)
    {
        for media in operation["requestBody"]["content"]
            .as_object()
            .into_iter()
            .flat_map(Map::values)
        {
            collect_refs(&media["schema"], &mut names);
        }
    }
    let mut closed = BTreeSet::new();
    while let Some(name) = names.pop() {
        if !closed.insert(name.clone()) {
            continue;
        }
        let Some(schema) = spec["components"]["schemas"].get_mut(&name) else {
            continue;
        };
        if schema["type"] == "object" {
            schema["additionalProperties"] = Value::Bool(false);
            for property in schema["properties"]
                .as_object()
                .into_iter()
                .flat_map(Map::values)
            {
                collect_refs(property, &mut names);
            }
        }
    }
}

/// The names of the component schemas `schema` refers to, itself or through
/// `items` and `allOf` (how poem-openapi adds a description to a `$ref`).
fn collect_refs(schema: &Value, names: &mut Vec<String>) {
    if !schema.is_object() {
        return;
    }
    if let Some(name) = schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        names.push(name.to_string());
    }
    collect_refs(&schema["items"], names);
    for part in schema["allOf"].as_array().into_iter().flatten() {
        collect_refs(part, names);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_described_reference_is_a_reference_with_its_description_and_nothing_else_changes() {
        let mut spec = json!({ "components": { "schemas": { "OrderView": {
            "type": "object",
            "properties": {
                "status": { "allOf": [
                    { "$ref": "#/components/schemas/OrderStatus" },
                    { "description": "Where the order is.", "nullable": true }
                ] },
                "both": { "allOf": [
                    { "$ref": "#/components/schemas/A" },
                    { "$ref": "#/components/schemas/B" }
                ] },
                "items": { "type": "array", "items": { "allOf": [
                    { "$ref": "#/components/schemas/Line" }, { "description": "A line." }
                ] } }
            }
        } } } });
        unwrap_described_refs(&mut spec);
        let properties = &spec["components"]["schemas"]["OrderView"]["properties"];
        assert_eq!(
            properties["status"],
            json!({
                "$ref": "#/components/schemas/OrderStatus",
                "description": "Where the order is.",
                "nullable": true
            })
        );
        assert_eq!(
            properties["items"]["items"],
            json!({ "$ref": "#/components/schemas/Line", "description": "A line." })
        );
        assert_eq!(
            properties["both"]["allOf"].as_array().map(Vec::len),
            Some(2),
            "a real composition stays"
        );
    }

    #[test]
    fn objects_reached_from_a_request_body_are_closed_and_others_are_not() {
        let mut spec = json!({
            "paths": { "/api/orders": { "post": {
                "requestBody": { "content": { "application/json; charset=utf-8": {
                    "schema": { "$ref": "#/components/schemas/CreateOrderRequest" }
                } } },
                "responses": {}
            } } },
            "components": { "schemas": {
                "CreateOrderRequest": { "type": "object", "properties": {
                    "items": { "type": "array", "items": { "$ref": "#/components/schemas/OrderLineRequest" } },
                    "status": { "allOf": [{ "$ref": "#/components/schemas/OrderStatus" }] }
                } },
                "OrderLineRequest": { "type": "object", "properties": {} },
                "OrderStatus": { "type": "string", "enum": ["PENDING"] },
                "OrderView": { "type": "object", "properties": {} }
            } }
        });
        close_request_bodies(&mut spec);
        let schemas = &spec["components"]["schemas"];
        assert_eq!(schemas["CreateOrderRequest"]["additionalProperties"], false);
        assert_eq!(schemas["OrderLineRequest"]["additionalProperties"], false);
        assert!(schemas["OrderStatus"].get("additionalProperties").is_none());
        assert!(schemas["OrderView"].get("additionalProperties").is_none());
    }

    #[test]
    fn a_literal_segment_beats_a_parameter() {
        let contract = Contract {
            spec: String::new(),
            paths: vec![
                (
                    segments("/api/orders/{order_id}"),
                    HeaderValue::from_static("GET, HEAD"),
                ),
                (
                    segments("/api/orders/status"),
                    HeaderValue::from_static("POST"),
                ),
            ],
        };
        assert_eq!(contract.allowed("/api/orders/status").unwrap(), "POST");
        assert_eq!(contract.allowed("/api/orders/42").unwrap(), "GET, HEAD");
        assert!(contract.allowed("/api/orders").is_none());
        assert!(contract.allowed("/api/orders/").is_none());
    }
}
