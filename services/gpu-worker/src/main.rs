//! `hcp-gpu-worker`: see the crate docs.

fn main() {}
