#![deny(unsafe_code)]

fn main() {
    // Before clap, tokio or any thread: a child must never find the API keys in this
    // process's environment block (src/secrets.rs).
    if let Err(e) = loops_core::secrets::protect() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    std::process::exit(loops::cli::main());
}
