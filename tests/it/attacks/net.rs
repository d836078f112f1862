//! Attacks on the net wall (docs/security.md).
