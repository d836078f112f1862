//! Attacks on the guard wall (docs/security.md).
