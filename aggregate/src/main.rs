//! `aggregate`: the write-side service of the shipped domain. See the library docs and
//! README.md.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    aggregate::shipped().build()?.run().await
}
