//! hcp-resource-manager: Single writer of GPU allocations per pool: inventory from heartbeats, allocation, release, health, device commands.
