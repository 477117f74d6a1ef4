//! `inventory-aggregate`: the write side of the inventory domain (`inventory::aggregates`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    inventory::aggregates().build()?.run().await
}
