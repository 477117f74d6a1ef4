//! `inventory-projection`: the read side of the inventory domain (`inventory::views`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    inventory::views().build()?.run().await
}
