//! The watch hub (placeholder).
