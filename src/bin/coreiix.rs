//! `coreiix`: one worker. All logic lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    match coreiix::worker::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => coreiix::error::report("coreiix", &e),
    }
}
