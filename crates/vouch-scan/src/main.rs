//! `vouch-scan`: the scanner on its own (the same as `vouch scan`).
use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = vouch_scan::cli::ScanArgs::parse();
    std::process::ExitCode::from(vouch_scan::cli::run(&args))
}
