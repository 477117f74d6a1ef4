//! The views of items: `item-stock`, one document per item (title, unit, on hand, reserved,
//! available), and `low-stock`, per tenant the items with fewer than [`LOW_STOCK_BELOW`]
//! available units (a document exists while its item is low, so listing the view's documents
//! of a tenant is the tenant's low-stock list; no document grows with the tenant).
//!
//! Both read events through [`Item::read`], the aggregate's own decoder and upcaster, so an
//! old `item_added` folds into the same documents as an `item_added_v2`.

use projection::{EventEnvelope, EventSpec, TypedView, ViewError, ViewName};
use serde::{Deserialize, Serialize};

use crate::item::{Item, ItemEvent};

/// An item is low while fewer units than this are available.
pub const LOW_STOCK_BELOW: u64 = 5;

/// The `item-stock` view.
#[derive(Debug, Clone, Copy, Default)]
pub struct ItemStock;

/// The `low-stock` view.
#[derive(Debug, Clone, Copy, Default)]
pub struct LowStock;

/// A document of `item-stock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockDocument {
    /// What it is called.
    pub title: String,
    /// What one unit is.
    pub unit: String,
    /// Units in stock, reserved or not.
    pub on_hand: u64,
    /// Units held by reservations.
    pub reserved: u64,
    /// Units free to reserve.
    pub available: u64,
}

/// A document of `low-stock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowStockDocument {
    /// Units in stock, reserved or not.
    pub on_hand: u64,
    /// Units held by reservations.
    pub reserved: u64,
    /// Units free to reserve, below [`LOW_STOCK_BELOW`].
    pub available: u64,
}

fn view_name(name: &str) -> ViewName {
    ViewName::try_from(name).expect("a valid view name")
}

/// The events both views fold.
fn item_events() -> Vec<EventSpec> {
    Item::EVENT_TYPES
        .iter()
        .map(|t| EventSpec::new(Item::TYPE, t))
        .collect()
}

/// The item's key, for an event of an item.
fn item_key(env: &EventEnvelope) -> Option<String> {
    (env.aggregate_type.as_str() == Item::TYPE).then(|| env.aggregate_id.to_string())
}

/// The event, `None` for an event type of items the views do not know.
fn read(env: &EventEnvelope) -> Result<Option<ItemEvent>, serde_json::Error> {
    if !Item::EVENT_TYPES.contains(&env.event_type.as_str()) {
        return Ok(None);
    }
    Item::read(&env.event_type, &env.payload)
}

/// The item's totals after the event: (on hand, reserved).
fn totals(event: &ItemEvent) -> (u64, u64) {
    match *event {
        ItemEvent::Added { quantity, .. } => (quantity, 0),
        ItemEvent::Restocked {
            on_hand, reserved, ..
        }
        | ItemEvent::Reserved {
            on_hand, reserved, ..
        }
        | ItemEvent::Released {
            on_hand, reserved, ..
        }
        | ItemEvent::Shipped {
            on_hand, reserved, ..
        } => (on_hand, reserved),
    }
}

impl TypedView for ItemStock {
    type Event = ItemEvent;
    type Document = StockDocument;

    fn name(&self) -> ViewName {
        view_name("item-stock")
    }

    fn version(&self) -> u32 {
        1
    }

    fn events(&self) -> Vec<EventSpec> {
        item_events()
    }

    fn key(&self, env: &EventEnvelope) -> Option<String> {
        item_key(env)
    }

    fn decode(&self, env: &EventEnvelope) -> Result<Option<ItemEvent>, serde_json::Error> {
        read(env)
    }

    fn fold(
        &self,
        _: &str,
        doc: Option<StockDocument>,
        event: &ItemEvent,
    ) -> Result<Option<StockDocument>, ViewError> {
        let (on_hand, reserved) = totals(event);
        let doc = match (event, doc) {
            (ItemEvent::Added { title, unit, .. }, _) => StockDocument {
                title: title.clone(),
                unit: unit.clone(),
                on_hand,
                reserved,
                available: 0,
            },
            (_, Some(doc)) => doc,
            (_, None) => {
                return Err(ViewError::State(
                    "a stock event before the item was added".to_owned(),
                ));
            }
        };
        Ok(Some(StockDocument {
            on_hand,
            reserved,
            available: on_hand.saturating_sub(reserved),
            ..doc
        }))
    }
}

impl TypedView for LowStock {
    type Event = ItemEvent;
    type Document = LowStockDocument;

    fn name(&self) -> ViewName {
        view_name("low-stock")
    }

    fn version(&self) -> u32 {
        1
    }

    fn events(&self) -> Vec<EventSpec> {
        item_events()
    }

    fn key(&self, env: &EventEnvelope) -> Option<String> {
        item_key(env)
    }

    fn decode(&self, env: &EventEnvelope) -> Result<Option<ItemEvent>, serde_json::Error> {
        read(env)
    }

    fn fold(
        &self,
        _: &str,
        _: Option<LowStockDocument>,
        event: &ItemEvent,
    ) -> Result<Option<LowStockDocument>, ViewError> {
        let (on_hand, reserved) = totals(event);
        let available = on_hand.saturating_sub(reserved);
        // a document while the item is low, none otherwise
        Ok((available < LOW_STOCK_BELOW).then_some(LowStockDocument {
            on_hand,
            reserved,
            available,
        }))
    }
}
