//! `comfy-remote run` (pending).

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn execute(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("`comfy-remote run` is not available in this build")
}
