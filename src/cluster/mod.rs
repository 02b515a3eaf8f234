//! The cluster layer (ring, membership, replication, repair, hints, leader): sans-IO logic
//! driven by the shards. Filled in by the cluster work.
