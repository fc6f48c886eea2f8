//! Request bodies: read with serde, then held to the limits their schema
//! states ([`super::limits`]), so every field out of them is named at once
//! in a `validation_failed` [`ErrorBody`](super::ErrorBody). A request type
//! derives `Object` (its schema, limits included) and `Deserialize`
//! (camelCase, unknown fields denied, like its schema says), and a handler
//! takes it as [`ValidJson`].

use std::borrow::Cow;

use poem::{FromRequest, Request, RequestBody};
use poem_openapi::{
    impl_apirequest_for_payload,
    payload::{Json, ParsePayload, Payload},
    registry::{MetaSchema, MetaSchemaRef, Registry},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde::de::DeserializeOwned;

use super::{ApiError, limits};

/// A JSON request body that parsed and is within its schema's limits.
#[derive(Debug)]
pub struct ValidJson<T>(pub T);

impl<T: Type> Payload for ValidJson<T> {
    const CONTENT_TYPE: &'static str = <Json<T> as Payload>::CONTENT_TYPE;

    fn check_content_type(content_type: &str) -> bool {
        <Json<T> as Payload>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + DeserializeOwned + Send> ParsePayload for ValidJson<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let data = Vec::<u8>::from_request(request, body).await?;
        // serde lets a struct be read from an array of its fields in order
        // (`[null]` would be a filter with no kind), but every body here is
        // an object in the spec, so only an object is one.
        if !starts_an_object(&data) {
            return Err(ApiError::bad_request(format!(
                "the body must be a JSON object (a {})",
                T::name()
            ))
            .into());
        }
        let value: T = serde_json::from_slice(&data).map_err(|error| {
            ApiError::bad_request(format!("the body is not a valid {}: {error}", T::name()))
        })?;
        // It parsed as a `T`, so it parses as JSON.
        let json: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
        limits::check::<T>(&json)?;
        Ok(ValidJson(value))
    }
}

/// Whether a JSON text holds an object: its first byte after whitespace is
/// `{`. Whether the rest parses is serde's to say.
fn starts_an_object(json: &[u8]) -> bool {
    json.iter()
        .find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|&byte| byte == b'{')
}

impl_apirequest_for_payload!(ValidJson<T>, T: Type + DeserializeOwned + Send);

/// An email address: a string in the spec's `email` format, which
/// [`super::limits`] checks with [`is_deliverable_email`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct EmailAddress(pub String);

impl EmailAddress {
    pub fn into_string(self) -> String {
        self.0
    }
}

impl Type for EmailAddress {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        "string(email)".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "email")))
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl ParseFromJSON for EmailAddress {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        String::parse_from_json(value)
            .map(EmailAddress)
            .map_err(ParseError::propagate)
    }
}

impl ToJSON for EmailAddress {
    fn to_json(&self) -> Option<serde_json::Value> {
        self.0.to_json()
    }
}

/// An address the `validator` crate takes, at a domain name with a dot in
/// it: the crate also takes an address literal (`x@[127.0.0.1]`) and a bare
/// host name (`x@mongodb`), and either would aim the shop's mail relay at a
/// host of the network it runs in.
pub(crate) fn is_deliverable_email(address: &str) -> bool {
    use validator::ValidateEmail;
    let at_a_public_name = address
        .rsplit_once('@')
        .is_some_and(|(_, domain)| !domain.starts_with('[') && domain.contains('.'));
    at_a_public_name && address.validate_email()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_object_is_a_body() {
        assert!(starts_an_object(b"{}"));
        assert!(starts_an_object(b" \r\n\t{\"kind\": null}"));
        // What serde would read as a struct from its fields in order.
        assert!(!starts_an_object(b"[null]"));
        assert!(!starts_an_object(b" [\"ORDER_CONFIRMED\"]"));
        assert!(!starts_an_object(b"null"));
        assert!(!starts_an_object(b""));
    }
}
