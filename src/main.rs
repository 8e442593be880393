#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    registry_guard::cli::main()
}
