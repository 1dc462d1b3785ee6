//! `hcp-resource-manager`: see the crate docs.

fn main() {}
