//! `hcp-gateway`: see the crate docs.

fn main() {}
