//! The `keel` binary: CLI dispatch only.
fn main() {}
