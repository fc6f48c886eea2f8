//! One page type for every list, and the two query parameters that ask for
//! a page, each defined once with its limits and its documentation.

use std::borrow::Cow;

use poem_openapi::{
    NewType, Object,
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type},
};

use crate::store::{
    PageRequest,
    page::{DEFAULT_LIMIT, MAX_LIMIT},
};

/// One page of a list, newest first unless its operation says otherwise. In
/// the spec it is named after its items, e.g. `Page_OrderView`.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Page<T: ParseFromJSON + ToJSON> {
    /// This page's items, newest first unless the operation says otherwise.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

impl<T: ParseFromJSON + ToJSON> Page<T> {
    /// The page a store query found (its records and the next cursor), as
    /// views.
    pub fn of<R: Into<T>>((records, next_cursor): (Vec<R>, Option<String>)) -> Self {
        Page {
            items: records.into_iter().map(Into::into).collect(),
            next_cursor,
        }
    }
}

/// The `limit` query parameter: page size, 1 to 100 (default 20). Out of
/// range is a 400, like any parameter that does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSize(pub u32);

impl Type for PageSize {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "PageSize".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            description: Some("Page size, 1 to 100 (default 20)."),
            minimum: Some(1.0),
            maximum: Some(f64::from(MAX_LIMIT)),
            default: Some(DEFAULT_LIMIT.into()),
            ..MetaSchema::new_with_format("integer", "uint32")
        }))
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(std::iter::once(self))
    }
}

impl ParseFromParameter for PageSize {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        match value.parse::<u32>() {
            Ok(size) if (1..=MAX_LIMIT).contains(&size) => Ok(PageSize(size)),
            _ => Err(ParseError::custom(format!(
                "must be a whole number from 1 to {MAX_LIMIT}"
            ))),
        }
    }
}

/// The `cursor` query parameter: the `nextCursor` of the previous page.
#[derive(Clone, Debug, NewType)]
#[oai(
    from_json = false,
    to_json = false,
    from_multipart = false,
    to_header = false
)]
pub struct Cursor(pub String);

/// What a list operation's `limit` and `cursor` ask the store for.
pub fn requested(limit: Option<PageSize>, cursor: Option<Cursor>) -> PageRequest {
    PageRequest::new(limit.map(|l| l.0), cursor.map(|c| c.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_size_is_1_to_100() {
        assert_eq!(PageSize::parse_from_parameter("1").unwrap(), PageSize(1));
        assert_eq!(
            PageSize::parse_from_parameter("100").unwrap(),
            PageSize(100)
        );
        for bad in ["0", "101", "-1", "ten", ""] {
            assert!(PageSize::parse_from_parameter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_limit_asks_for_the_default_and_an_empty_cursor_for_the_first_page() {
        let page = requested(None, Some(Cursor(String::new())));
        assert_eq!(page.limit, DEFAULT_LIMIT);
        assert_eq!(page.cursor, None);
    }
}
