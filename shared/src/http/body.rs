//! Request bodies: read with serde, then checked with their `validator`
//! rules, so every invalid field is named at once in a `validation_failed`
//! [`ErrorBody`](super::ErrorBody).
//!
//! The spec shows the same limits (`#[oai(validator(..))]` on each field), but
//! poem-openapi's own checks of them are not run: they stop at the first
//! failing field and answer in their own words. So a request type derives
//! `Object` (its schema), `Deserialize` (camelCase, unknown fields denied,
//! like its schema says) and `Validate` (the rules that answer), and a
//! handler takes it as [`ValidJson`].

use std::borrow::Cow;

use poem::{FromRequest, Request, RequestBody};
use poem_openapi::{
    impl_apirequest_for_payload,
    payload::{Json, ParsePayload, Payload},
    registry::{MetaSchema, MetaSchemaRef, Registry},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde::de::DeserializeOwned;
use validator::Validate;

use super::{ApiError, validate};

/// A JSON request body that parsed and passed its `validator` rules.
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

impl<T: Type + DeserializeOwned + Validate + Send> ParsePayload for ValidJson<T> {
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
        validate(&value)?;
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

impl_apirequest_for_payload!(ValidJson<T>, T: Type + DeserializeOwned + Validate + Send);

/// An email address: a string in the spec's `email` format, checked by the
/// `validator` rule `email` of the field that holds it.
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

impl validator::ValidateEmail for EmailAddress {
    /// An address the validator takes, at a domain name with a dot in it:
    /// the validator also takes an address literal (`x@[127.0.0.1]`) and a
    /// bare host name (`x@mongodb`), and either would aim the shop's mail
    /// relay at a host of the network it runs in.
    fn validate_email(&self) -> bool {
        let at_a_public_name = self
            .0
            .rsplit_once('@')
            .is_some_and(|(_, domain)| !domain.starts_with('[') && domain.contains('.'));
        at_a_public_name && self.0.validate_email()
    }

    fn as_email_string(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.0))
    }
}

impl validator::ValidateLength<u64> for EmailAddress {
    fn length(&self) -> Option<u64> {
        self.0.length()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Validate, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Signup {
        #[validate(email, length(max = 20))]
        email: EmailAddress,
    }

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

    fn check(json: &str) -> Result<(), ApiError> {
        let signup: Signup = serde_json::from_str(json).unwrap();
        validate(&signup)
    }

    #[test]
    fn an_email_address_is_checked_by_the_rules_of_its_field() {
        assert!(check(r#"{"email": "a@example.com"}"#).is_ok());
        let not_an_email = check(r#"{"email": "nobody"}"#).unwrap_err();
        assert_eq!(not_an_email.fields[0].message, "must be an email address");
        for internal in ["x@[127.0.0.1]", "x@[IPv6:::1]", "x@mongodb"] {
            let refused = check(&format!(r#"{{"email": "{internal}"}}"#)).unwrap_err();
            assert_eq!(
                refused.fields[0].message, "must be an email address",
                "{internal}"
            );
        }
        let too_long = check(r#"{"email": "someone@a-long-domain.example"}"#).unwrap_err();
        assert_eq!(too_long.fields[0].message, "length must be at most 20");
    }
}
