//! placeholder, replaced by the WAL implementation.
