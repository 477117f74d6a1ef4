//! The `item` aggregate type: an item's stock and its reservations.
//!
//! Quantities are whole units; times are Unix seconds chosen by the caller. A reservation holds
//! stock until it is released, shipped, or its `expires_at` has passed: expiry is decided
//! against each command's own `now` (no clock is read, so a decision is a pure function of the
//! history and the command), and a `reserve` first releases every reservation expired by its
//! `now`. Every stock event carries the item's totals after it (`on_hand`, `reserved`), so a
//! view needs no state of its own to know what is available.
//!
//! Evolution: `item_added` (`{name, quantity}`) became `item_added_v2` (`name` renamed
//! `title`, `unit` added); stored `item_added` events are read by the upcaster in
//! [`Item`]'s `history`.

use std::collections::BTreeMap;

use aggregate::{Aggregate, AggregateType, CommandSchema, DomainError, History};
use serde::{Deserialize, Serialize};

/// The `item` aggregate type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Item;

impl Item {
    /// The type name.
    pub const TYPE: &'static str = "item";

    /// Every event type an item's history may hold: the current ones and `item_added`.
    pub const EVENT_TYPES: &'static [&'static str] = &[
        "item_added",
        "item_added_v2",
        "restocked",
        "reserved",
        "released",
        "shipped",
    ];

    /// Reads a stored event of an item: the current shape, or an old one through the upcaster
    /// (the views use it too, so old events fold into the same documents). `None`: an event
    /// type the history ignores.
    ///
    /// # Errors
    /// An unknown event type, or a payload that does not fit its type (naming the field).
    pub fn read(
        event_type: &str,
        payload: &serde_json::Value,
    ) -> Result<Option<ItemEvent>, serde_json::Error> {
        Item.history().decode(event_type, payload)
    }
}

/// The unit of an item added before units existed.
pub const DEFAULT_UNIT: &str = "piece";

fn default_unit() -> String {
    DEFAULT_UNIT.to_owned()
}

/// One reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reservation {
    /// Units held.
    pub quantity: u64,
    /// Unix seconds after which it no longer holds stock.
    pub expires_at: u64,
}

/// The state of one item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ItemState {
    /// Whether `add` happened.
    pub added: bool,
    /// What it is called.
    pub title: String,
    /// What one unit is.
    pub unit: String,
    /// Units in stock, reserved or not.
    pub on_hand: u64,
    /// Open reservations by id.
    pub reservations: BTreeMap<String, Reservation>,
}

impl ItemState {
    /// Units held by open reservations (expired ones included until released).
    pub fn reserved(&self) -> u64 {
        self.reservations.values().map(|r| r.quantity).sum()
    }
}

/// Commands, as sent in `{"type": ..., "payload": ...}`; their schema is the OpenAPI
/// document's `Commands.item` (the derive reads the same serde attributes).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(
    tag = "type",
    content = "payload",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum ItemCommand {
    /// Adds the item with its first stock.
    Add {
        /// What it is called.
        title: String,
        /// Units in stock.
        quantity: u64,
        /// What one unit is (default `piece`).
        #[serde(default = "default_unit")]
        unit: String,
    },
    /// More units came in.
    Restock {
        /// Units, > 0.
        quantity: u64,
    },
    /// Holds units until `expires_at`.
    Reserve {
        /// The caller's id for the reservation.
        reservation_id: String,
        /// Units, > 0 and at most the available ones.
        quantity: u64,
        /// Unix seconds, after `now`.
        expires_at: u64,
        /// The caller's clock, Unix seconds.
        now: u64,
    },
    /// Gives a reservation's units back.
    Release {
        /// The reservation.
        reservation_id: String,
    },
    /// Ships a reservation's units: the reservation ends and the units leave the stock, two
    /// events appended atomically.
    Ship {
        /// The reservation, not expired at `now`.
        reservation_id: String,
        /// The caller's clock, Unix seconds.
        now: u64,
    },
}

/// Events, as stored in `event_type` / `payload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub enum ItemEvent {
    /// The item was added (version 2 of the shape; version 1 is `item_added`).
    #[serde(rename = "item_added_v2")]
    Added {
        /// What it is called.
        title: String,
        /// Units in stock.
        quantity: u64,
        /// What one unit is.
        unit: String,
    },
    /// Units came in.
    Restocked {
        /// Units added.
        quantity: u64,
        /// Units in stock afterwards.
        on_hand: u64,
        /// Units reserved afterwards.
        reserved: u64,
    },
    /// Units are held.
    Reserved {
        /// The reservation.
        reservation_id: String,
        /// Units held.
        quantity: u64,
        /// Unix seconds.
        expires_at: u64,
        /// Units in stock afterwards.
        on_hand: u64,
        /// Units reserved afterwards.
        reserved: u64,
    },
    /// A reservation ended and its units are free (released, expired, or about to ship).
    Released {
        /// The reservation.
        reservation_id: String,
        /// Units it held.
        quantity: u64,
        /// Units in stock afterwards.
        on_hand: u64,
        /// Units reserved afterwards.
        reserved: u64,
    },
    /// Units left the stock.
    Shipped {
        /// Units shipped.
        quantity: u64,
        /// Units in stock afterwards.
        on_hand: u64,
        /// Units reserved afterwards.
        reserved: u64,
    },
}

/// `item_added` as version 1 stored it.
#[derive(Debug, Deserialize)]
pub struct ItemAddedV1 {
    /// Renamed `title` in version 2.
    pub name: String,
    /// Units in stock.
    pub quantity: u64,
}

/// Why an item command was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemError {
    /// `add` on an item that exists.
    AlreadyAdded,
    /// Any command but `add` before `add`.
    NotAdded,
    /// A quantity of zero.
    ZeroQuantity,
    /// More than the available units.
    InsufficientStock {
        /// Units not held by an unexpired reservation.
        available: u64,
        /// Units asked for.
        requested: u64,
    },
    /// No open reservation of that id.
    UnknownReservation(String),
    /// An open reservation has that id.
    DuplicateReservation(String),
    /// The reservation expired before `now`.
    ReservationExpired(String),
    /// `expires_at` is not after `now`.
    ExpiryNotInFuture,
    /// The stock would overflow.
    Overflow,
}

impl std::fmt::Display for ItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ItemError::AlreadyAdded => f.write_str("the item is already added"),
            ItemError::NotAdded => f.write_str("the item is not added yet"),
            ItemError::ZeroQuantity => f.write_str("the quantity must be greater than zero"),
            ItemError::InsufficientStock {
                available,
                requested,
            } => write!(
                f,
                "insufficient stock: {available} available, {requested} requested"
            ),
            ItemError::UnknownReservation(id) => write!(f, "no open reservation {id:?}"),
            ItemError::DuplicateReservation(id) => write!(f, "reservation {id:?} is open already"),
            ItemError::ReservationExpired(id) => write!(f, "reservation {id:?} has expired"),
            ItemError::ExpiryNotInFuture => f.write_str("expires_at must be after now"),
            ItemError::Overflow => f.write_str("the stock would overflow"),
        }
    }
}

impl std::error::Error for ItemError {}

impl DomainError for ItemError {
    fn code(&self) -> &'static str {
        match self {
            ItemError::AlreadyAdded => "item-already-added",
            ItemError::NotAdded => "item-not-added",
            ItemError::ZeroQuantity => "zero-quantity",
            ItemError::InsufficientStock { .. } => "insufficient-stock",
            ItemError::UnknownReservation(_) => "unknown-reservation",
            ItemError::DuplicateReservation(_) => "duplicate-reservation",
            ItemError::ReservationExpired(_) => "reservation-expired",
            ItemError::ExpiryNotInFuture => "expiry-not-in-future",
            ItemError::Overflow => "stock-overflow",
        }
    }
}

impl Aggregate for Item {
    type State = ItemState;
    type Command = ItemCommand;
    type Event = ItemEvent;
    type Error = ItemError;

    fn aggregate_type(&self) -> AggregateType {
        AggregateType::try_from(Self::TYPE).expect("`item` is a valid type name")
    }

    fn command_types(&self) -> &'static [&'static str] {
        &["add", "restock", "reserve", "release", "ship"]
    }

    fn command_schema(&self) -> Option<CommandSchema> {
        Some(CommandSchema::of::<ItemCommand>())
    }

    fn apply(&self, state: &mut ItemState, event: ItemEvent) {
        match event {
            ItemEvent::Added {
                title,
                quantity,
                unit,
            } => {
                state.added = true;
                state.title = title;
                state.unit = unit;
                state.on_hand = quantity;
            }
            ItemEvent::Restocked { quantity, .. } => {
                state.on_hand = state.on_hand.saturating_add(quantity);
            }
            ItemEvent::Reserved {
                reservation_id,
                quantity,
                expires_at,
                ..
            } => {
                state.reservations.insert(
                    reservation_id,
                    Reservation {
                        quantity,
                        expires_at,
                    },
                );
            }
            ItemEvent::Released { reservation_id, .. } => {
                state.reservations.remove(&reservation_id);
            }
            ItemEvent::Shipped { quantity, .. } => {
                state.on_hand = state.on_hand.saturating_sub(quantity);
            }
        }
    }

    fn decide(&self, state: &ItemState, command: ItemCommand) -> Result<Vec<ItemEvent>, ItemError> {
        if let ItemCommand::Add {
            title,
            quantity,
            unit,
        } = command
        {
            if state.added {
                return Err(ItemError::AlreadyAdded);
            }
            return Ok(vec![ItemEvent::Added {
                title,
                quantity,
                unit,
            }]);
        }
        if !state.added {
            return Err(ItemError::NotAdded);
        }
        let on_hand = state.on_hand;
        let reserved = state.reserved();
        match command {
            ItemCommand::Add { .. } => Err(ItemError::AlreadyAdded),
            ItemCommand::Restock { quantity } => {
                nonzero(quantity)?;
                let on_hand = on_hand.checked_add(quantity).ok_or(ItemError::Overflow)?;
                Ok(vec![ItemEvent::Restocked {
                    quantity,
                    on_hand,
                    reserved,
                }])
            }
            ItemCommand::Reserve {
                reservation_id,
                quantity,
                expires_at,
                now,
            } => {
                nonzero(quantity)?;
                if expires_at <= now {
                    return Err(ItemError::ExpiryNotInFuture);
                }
                // what expired by `now` is released first, in the same append
                let mut reserved = reserved;
                let mut events = Vec::new();
                for (id, r) in state
                    .reservations
                    .iter()
                    .filter(|(_, r)| r.expires_at <= now)
                {
                    reserved -= r.quantity;
                    events.push(ItemEvent::Released {
                        reservation_id: id.clone(),
                        quantity: r.quantity,
                        on_hand,
                        reserved,
                    });
                }
                let open = state
                    .reservations
                    .get(&reservation_id)
                    .is_some_and(|r| r.expires_at > now);
                if open {
                    return Err(ItemError::DuplicateReservation(reservation_id));
                }
                let available = on_hand.saturating_sub(reserved);
                if quantity > available {
                    return Err(ItemError::InsufficientStock {
                        available,
                        requested: quantity,
                    });
                }
                events.push(ItemEvent::Reserved {
                    reservation_id,
                    quantity,
                    expires_at,
                    on_hand,
                    reserved: reserved + quantity,
                });
                Ok(events)
            }
            ItemCommand::Release { reservation_id } => {
                let r = open_reservation(state, &reservation_id)?;
                Ok(vec![ItemEvent::Released {
                    quantity: r.quantity,
                    reservation_id,
                    on_hand,
                    reserved: reserved - r.quantity,
                }])
            }
            ItemCommand::Ship {
                reservation_id,
                now,
            } => {
                let r = open_reservation(state, &reservation_id)?;
                if r.expires_at <= now {
                    return Err(ItemError::ReservationExpired(reservation_id));
                }
                let reserved = reserved - r.quantity;
                Ok(vec![
                    ItemEvent::Released {
                        reservation_id,
                        quantity: r.quantity,
                        on_hand,
                        reserved,
                    },
                    ItemEvent::Shipped {
                        quantity: r.quantity,
                        on_hand: on_hand - r.quantity,
                        reserved,
                    },
                ])
            }
        }
    }

    fn history(&self) -> History<ItemEvent> {
        History::new().upcast("item_added", |old: ItemAddedV1| ItemEvent::Added {
            title: old.name,
            quantity: old.quantity,
            unit: default_unit(),
        })
    }
}

fn nonzero(quantity: u64) -> Result<(), ItemError> {
    if quantity == 0 {
        return Err(ItemError::ZeroQuantity);
    }
    Ok(())
}

fn open_reservation<'a>(state: &'a ItemState, id: &str) -> Result<&'a Reservation, ItemError> {
    state
        .reservations
        .get(id)
        .ok_or_else(|| ItemError::UnknownReservation(id.to_owned()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn added(quantity: u64) -> ItemState {
        let mut s = ItemState::default();
        for e in Item
            .decide(
                &s.clone(),
                ItemCommand::Add {
                    title: "Bolt".to_owned(),
                    quantity,
                    unit: default_unit(),
                },
            )
            .expect("add")
        {
            Item.apply(&mut s, e);
        }
        s
    }

    fn run(state: &mut ItemState, command: ItemCommand) -> Result<Vec<ItemEvent>, ItemError> {
        let events = Item.decide(state, command)?;
        for e in events.clone() {
            Item.apply(state, e);
        }
        Ok(events)
    }

    fn reserve(id: &str, quantity: u64, expires_at: u64, now: u64) -> ItemCommand {
        ItemCommand::Reserve {
            reservation_id: id.to_owned(),
            quantity,
            expires_at,
            now,
        }
    }

    #[test]
    fn a_reservation_holds_stock_until_it_expires() {
        let mut s = added(10);
        run(&mut s, reserve("r1", 8, 100, 10)).expect("reserve");
        assert_eq!(
            run(&mut s, reserve("r2", 3, 200, 99)),
            Err(ItemError::InsufficientStock {
                available: 2,
                requested: 3
            })
        );
        // at 100, r1 has expired: released first, in the same decision
        let events = run(&mut s, reserve("r2", 3, 200, 100)).expect("reserve");
        assert!(
            matches!(&events[0], ItemEvent::Released { reservation_id, reserved: 0, .. } if reservation_id == "r1")
        );
        assert!(matches!(
            &events[1],
            ItemEvent::Reserved {
                reserved: 3,
                on_hand: 10,
                ..
            }
        ));
        assert_eq!(
            run(
                &mut s,
                ItemCommand::Ship {
                    reservation_id: "r2".to_owned(),
                    now: 200
                }
            ),
            Err(ItemError::ReservationExpired("r2".to_owned()))
        );
    }

    #[test]
    fn ship_releases_and_ships_in_one_decision() {
        let mut s = added(10);
        run(&mut s, reserve("r1", 4, 100, 10)).expect("reserve");
        let events = run(
            &mut s,
            ItemCommand::Ship {
                reservation_id: "r1".to_owned(),
                now: 50,
            },
        )
        .expect("ship");
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1],
            ItemEvent::Shipped {
                quantity: 4,
                on_hand: 6,
                reserved: 0
            }
        );
        assert_eq!((s.on_hand, s.reserved()), (6, 0));
    }

    #[test]
    fn the_old_added_shape_reads_as_the_new_one() {
        assert_eq!(
            Item::read("item_added", &json!({"name": "Bolt", "quantity": 3})).expect("upcast"),
            Some(ItemEvent::Added {
                title: "Bolt".to_owned(),
                quantity: 3,
                unit: "piece".to_owned()
            })
        );
        let err = Item::read("item_added", &json!({"title": "Bolt", "quantity": 3}))
            .expect_err("not the old shape");
        assert!(err.to_string().contains("missing field `name`"), "{err}");
    }
}
