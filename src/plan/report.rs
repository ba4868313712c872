//! Rendering a plan for people (`human`), programs (`json`) and shells or systemd (`env`).

use std::fmt::Write;

use super::Plan;
use crate::settings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
    Env,
}

pub fn render(plan: &Plan, format: Format) -> String {
    match format {
        Format::Human => human(plan),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(plan).expect("a plan always serializes");
            s.push('\n');
            s
        }
        Format::Env => env(plan),
    }
}

fn human(plan: &Plan) -> String {
    let mut out = String::new();
    let o = &plan.origins;
    let profile_gives = if plan.sources.workers == crate::config::Source::Default {
        String::new()
    } else {
        format!("; the {} profile alone gives {}", plan.profile, plan.profile_workers)
    };
    let _ = writeln!(out, "profile      {:<6} from {}", plan.profile.name(), o.profile);
    let _ = writeln!(out, "workers      {:<6} from {}{profile_gives}", plan.workers, o.workers);
    let _ = writeln!(out, "auto-reload  {:<6}", if plan.reload { "on" } else { "off" });
    let _ = writeln!(out, "cpus         {:<6} from {}", plan.cpus, o.cpus);
    let threads_why = if plan.sources.threads == crate::config::Source::Default {
        "CPUs / workers, at least 1".to_owned()
    } else {
        o.threads.clone()
    };
    let _ = writeln!(out, "threads      {:<6} per worker, from {threads_why}", plan.threads);
    match &plan.env_file {
        Some(path) => {
            let _ = writeln!(out, "env file     {}", path.display());
        }
        None => {
            let _ = writeln!(out, "env file     none");
        }
    }
    for note in &plan.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

fn env(plan: &Plan) -> String {
    format!(
        "{}={}\n{}={}\n{}={}\n{}={}\n# auto-reload: {}\n",
        settings::DEPLOYMENT_PROFILE.name,
        plan.profile,
        settings::WORKERS.name,
        plan.workers,
        settings::COREIIX_CPUS.name,
        plan.cpus,
        settings::COREIIX_THREADS.name,
        plan.threads,
        if plan.reload { "on" } else { "off" },
    )
}
