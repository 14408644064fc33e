//! The `pontoon` command line.
fn main() {}
