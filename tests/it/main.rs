//! The one integration-test binary: every area is a module, sharing the helpers in `common`.

mod common;
