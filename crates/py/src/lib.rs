//! The `comfy_remote._native` Python module: a thin binding over the Rust crates.
//!
//! Each area registers its functions, and creates its one exception class,
//! in its own file.

use pyo3::prelude::*;

mod cli;
mod client;
mod codec;
mod contract;
mod deploy;
mod front;
mod front_v2;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("PROTOCOL_VERSION", comfy_remote_protocol::PROTOCOL_VERSION)?;
    cli::register(m)?;
    client::register(m)?;
    codec::register(m)?;
    deploy::register(m)?;
    contract::register(m)?;
    front::register(m)?;
    front_v2::register(m)?;
    Ok(())
}
