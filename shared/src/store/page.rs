//! Cursor pagination over `_id` (UUIDv7 strings, so newest first is simply
//! descending `_id`). The cursor is the last id of the previous page. The
//! stores wrap [`find_page`] in named queries; the APIs never see a filter.

use futures::TryStreamExt;
use mongodb::{
    Collection,
    bson::{Document, doc},
    error::Error,
};
use serde::de::DeserializeOwned;

pub(crate) const DEFAULT_LIMIT: u32 = 20;
pub(crate) const MAX_LIMIT: u32 = 100;

#[derive(Clone, Debug)]
pub struct PageRequest {
    pub limit: u32,
    pub cursor: Option<String>,
}

impl PageRequest {
    /// `limit` has been range-checked by the API layer (1..=100).
    pub fn new(limit: Option<u32>, cursor: Option<String>) -> Self {
        PageRequest {
            limit: limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
            cursor: cursor.filter(|c| !c.is_empty()),
        }
    }
}

/// Which end of `_id` a list starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListOrder {
    NewestFirst,
    /// For work lists (the stuck sagas): what waited longest comes first.
    OldestFirst,
}

/// One page of `collection` matching `filter`, newest first, and the cursor
/// of the next page (`None` on the last page).
pub async fn find_page<T>(
    collection: &Collection<T>,
    filter: Document,
    page: &PageRequest,
    id_of: impl Fn(&T) -> String,
) -> Result<(Vec<T>, Option<String>), Error>
where
    T: DeserializeOwned + Send + Sync,
{
    find_page_in(
        collection,
        filter,
        page,
        ListOrder::NewestFirst,
        None,
        id_of,
    )
    .await
}

/// [`find_page`] in the given order, with only the fields `projection`
/// asks for (all without one).
pub async fn find_page_in<T>(
    collection: &Collection<T>,
    mut filter: Document,
    page: &PageRequest,
    order: ListOrder,
    projection: Option<Document>,
    id_of: impl Fn(&T) -> String,
) -> Result<(Vec<T>, Option<String>), Error>
where
    T: DeserializeOwned + Send + Sync,
{
    let (after, direction) = match order {
        ListOrder::NewestFirst => ("$lt", -1),
        ListOrder::OldestFirst => ("$gt", 1),
    };
    if let Some(cursor) = &page.cursor {
        filter.insert("_id", doc! { after: cursor });
    }
    // One extra document tells whether there is a next page.
    let mut find = collection
        .find(filter)
        .sort(doc! { "_id": direction })
        .limit(i64::from(page.limit) + 1);
    if let Some(projection) = projection {
        find = find.projection(projection);
    }
    let mut items: Vec<T> = find.await?.try_collect().await?;
    let next = if items.len() > page.limit as usize {
        items.truncate(page.limit as usize);
        items.last().map(&id_of)
    } else {
        None
    };
    Ok((items, next))
}
