//! `hcp-router`: see the crate docs.

fn main() {}
