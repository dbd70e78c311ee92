//! The Watch gRPC service (placeholder).
