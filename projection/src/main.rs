//! `projection`: the read-side service of the shipped views. See the library docs and
//! README.md.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    projection::shipped().build()?.run().await
}
