//! Round-trip benchmark against the no-framework floor (placeholder; see
//! BENCHMARKS.md once written).
fn main() {}
