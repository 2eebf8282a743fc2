//! raw_ceiling: the raw-write ceiling of docs/BENCHMARKS.md (work in progress).
fn main() {}
