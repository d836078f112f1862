//! Attacks on the paths wall (docs/security.md).
