//! `comfy-remote deploy` and `comfy-remote stop` (pending).

#[derive(Debug, clap::Args)]
pub struct DeployArgs {}

#[derive(Debug, clap::Args)]
pub struct StopArgs {}

pub fn deploy(_args: DeployArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`comfy-remote deploy` is not available in this build")
}

pub fn stop(_args: StopArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`comfy-remote stop` is not available in this build")
}
