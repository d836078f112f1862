use clap::Parser;

fn main() {
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
