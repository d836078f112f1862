//! The bundled templates are compiled in (`include_dir!` in src/templates.rs), and cargo
//! does not see a proc macro's reads: without this, an edited template left a binary
//! (and tests) holding the old text until something in src/ changed.

fn main() {
    println!("cargo:rerun-if-changed=templates");
    println!("cargo:rerun-if-changed=build.rs");
}
