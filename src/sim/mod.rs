//! The built-in GSP simulator (being written: see issue 2).

/// Command-line arguments of `gstgate sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {}

/// Runs the simulator until interrupted.
pub async fn run(_args: SimArgs) -> anyhow::Result<()> {
    anyhow::bail!("the simulator is not built yet")
}
