//! `coreiix-plan`: the planner and its front ends. All logic lives in the library.

fn main() -> std::process::ExitCode {
    coreiix::cli::main()
}
