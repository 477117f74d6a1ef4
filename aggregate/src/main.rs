//! `aggregate`: the write-side service of the shipped domain. See the library docs and
//! README.md.

/// mimalloc, not glibc's malloc: under load glibc's `malloc`/`free`/`malloc_consolidate` took
/// about half of the projection's CPU (BENCHMARKS.md, full run of 2026-12-07). A service built on
/// the library chooses its own allocator the same way, in its binary. Deployments set
/// `MIMALLOC_PURGE_DELAY=10` (README, "Memory"): mimalloc 3 keeps freed memory for 1 s.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    aggregate::shipped().build()?.run().await
}
