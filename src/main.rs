//! The `gstgate` binary: see `gstgate --help`.

fn main() -> std::process::ExitCode {
    gstgate::cli::main()
}
