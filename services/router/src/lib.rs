//! hcp-router: Classifies workloads, keeps the 10-level priority queue and proposes gang placements (with preemption) to the resource-manager.
