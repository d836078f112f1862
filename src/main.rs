use clap::Parser;

fn main() {
    // Before clap, tokio or any thread: a child must never find the API keys in this
    // process's environment block (src/secrets.rs).
    if let Err(e) = loops::secrets::protect() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let cli = loops::cli::Cli::parse();
    if let Err(e) = loops::cli::dispatch(cli) {
        if !e.message.is_empty() {
            eprintln!("error: {}", e.message);
            if let Some(h) = &e.help {
                eprintln!("  help: {h}");
            }
        }
        std::process::exit(e.code);
    }
}
