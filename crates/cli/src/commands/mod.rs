//! One module per subcommand.

pub mod deploy;
pub mod io;
pub mod run;
pub mod serve;
