//! Attacks on the secrets wall (docs/security.md).
