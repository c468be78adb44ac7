//! One module per subcommand.

pub mod deploy;
pub mod run;
pub mod serve;
