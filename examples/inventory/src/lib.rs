//! An example domain built outside the platform's crates, on their library API only: what a
//! team writes to run the platform with its own domain.
//!
//! - [`item`]: the `item` aggregate type: stock, reservations that expire, a `ship` command
//!   that emits two events atomically, and an event type whose shape changed once (read
//!   through an upcaster).
//! - [`stock`]: the `item-stock` view (one document per item) and the `low-stock` view (per
//!   tenant, one document per item that is running low, none for the others).
//!
//! The two binaries, `inventory-aggregate` and `inventory-projection`, are [`aggregates`] and
//! [`views`] run.

pub mod item;
pub mod stock;

/// The write side: the `item` aggregate type.
pub fn aggregates() -> aggregate::ServiceBuilder {
    aggregate::Service::builder().aggregate(item::Item)
}

/// The read side: `item-stock` and `low-stock`.
pub fn views() -> projection::ServiceBuilder {
    projection::Service::builder()
        .typed_view(stock::ItemStock)
        .typed_view(stock::LowStock)
}
