//! herald-bench: the load tool of docs/BENCHMARKS.md (work in progress).
fn main() {}
