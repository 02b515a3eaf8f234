//! One shard's core (sans-IO). Filled in next.
