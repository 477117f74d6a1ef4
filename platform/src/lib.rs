//! Operational conventions shared by both services.
