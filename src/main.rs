//! The `gstgate` binary: see `gstgate --help`.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    gstgate::cli::main()
}
