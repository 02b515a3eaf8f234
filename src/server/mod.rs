//! The mio driver. Filled in next.
