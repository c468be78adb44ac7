//! One module per subcommand.

pub mod deploy;
#[cfg(not(feature = "serve"))]
pub mod handoff;
pub mod io;
pub mod run;
#[cfg(feature = "serve")]
pub mod serve;
