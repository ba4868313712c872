pub fn main(_ctx: crate::cli::Context, _l: Option<crate::config::Value>) -> anyhow::Result<std::process::ExitCode> { todo!() }
