use std::path::Path;

use super::*;
use crate::config::{EnvFile, Environment};

/// Which layers carry a value: command line, process environment, env file.
#[derive(Clone, Copy, Debug)]
struct Layers {
    cli: bool,
    env: bool,
    file: bool,
}

impl Layers {
    fn all() -> impl Iterator<Item = Layers> {
        (0..8).map(|bits| Layers { cli: bits & 1 != 0, env: bits & 2 != 0, file: bits & 4 != 0 })
    }

    fn strongest(self) -> Source {
        if self.cli {
            Source::Cli
        } else if self.env {
            Source::Env
        } else if self.file {
            Source::EnvFile
        } else {
            Source::Default
        }
    }
}

fn config(env: &[(&str, &str)], file: &str) -> Config {
    Config {
        env: Environment::from_pairs(env.iter().copied()),
        file: Some(EnvFile::parse(Path::new("test.env"), file).unwrap()),
    }
}

/// Every profile x every combination of sources for the profile and for the worker count.
/// Each layer gives a different value, so the result shows which one won.
#[test]
fn every_profile_and_source_combination() {
    // Values per layer for WORKERS: cli 7, env 6, file 5.
    let worker_value = |s: Source| match s {
        Source::Cli => 7,
        Source::Env => 6,
        Source::EnvFile => 5,
        _ => unreachable!(),
    };
    let decoy = |p: Profile| Profile::ALL.into_iter().find(|&q| q != p).unwrap().name();
    for profile in Profile::ALL {
        for p_layers in Layers::all() {
            // A profile from the default layer can only be dev.
            if p_layers.strongest() == Source::Default && profile != Profile::Dev {
                continue;
            }
            for w_layers in Layers::all() {
                for cpus in [1u32, 2, 8, 64] {
                    // The winning layer gets the real profile, weaker ones a decoy.
                    let winner = p_layers.strongest();
                    let pick = |s: Source| if s == winner { profile.name() } else { decoy(profile) };
                    let mut env = Vec::new();
                    let mut file = String::new();
                    let mut cli = Overrides::default();
                    if p_layers.cli {
                        cli.profile = Some(pick(Source::Cli).to_owned());
                    }
                    if p_layers.env {
                        env.push(("DEPLOYMENT_PROFILE", pick(Source::Env)));
                    }
                    if p_layers.file {
                        file += &format!("DEPLOYMENT_PROFILE={}\n", pick(Source::EnvFile));
                    }
                    if w_layers.cli {
                        cli.workers = Some("7".into());
                    }
                    if w_layers.env {
                        env.push(("WORKERS", "6"));
                    }
                    if w_layers.file {
                        file += "WORKERS=5\n";
                    }
                    let plan = plan(&cli, &config(&env, &file), cpus).unwrap();
                    let ctx = format!("{profile} {p_layers:?} {w_layers:?} cpus={cpus}");
                    assert_eq!(plan.profile, profile, "{ctx}");
                    assert_eq!(plan.sources.profile, winner, "{ctx}");
                    assert_eq!(plan.cpus, cpus, "{ctx}");
                    assert_eq!(plan.sources.cpus, Source::Detected, "{ctx}");
                    let by_profile = match profile {
                        Profile::Dev => 1,
                        Profile::Small => 2,
                        Profile::Enterprise => cpus * 2 + 1,
                    };
                    assert_eq!(plan.profile_workers, by_profile, "{ctx}");
                    let expected = match w_layers.strongest() {
                        Source::Default => by_profile,
                        s => worker_value(s),
                    };
                    assert_eq!(plan.workers, expected, "{ctx}");
                    assert_eq!(plan.sources.workers, w_layers.strongest(), "{ctx}");
                    assert_eq!(plan.reload, profile == Profile::Dev && expected == 1, "{ctx}");
                    assert_eq!(plan.threads, (cpus / expected).max(1), "{ctx}");
                }
            }
        }
    }
}

#[test]
fn nothing_given_means_dev_with_reload() {
    let plan = plan(&Overrides::default(), &Config::default(), 4).unwrap();
    assert_eq!((plan.profile, plan.workers, plan.reload), (Profile::Dev, 1, true));
    assert_eq!(plan.sources.profile, Source::Default);
    assert_eq!(plan.env_file, None);
}

#[test]
fn dev_with_more_workers_turns_reload_off_and_says_so() {
    let cfg = config(&[("WORKERS", "3")], "");
    let plan = plan(&Overrides::default(), &cfg, 2).unwrap();
    assert_eq!((plan.workers, plan.reload), (3, false));
    assert!(plan.notes[0].contains("auto-reload is off"), "{:?}", plan.notes);
    assert!(plan.notes[0].contains("the environment variable WORKERS"), "{:?}", plan.notes);
}

#[test]
fn cpus_override_beats_detection_in_every_layer() {
    let cfg = config(&[("COREIIX_CPUS", "3")], "COREIIX_CPUS=5\nDEPLOYMENT_PROFILE=enterprise\n");
    let from_env = plan(&Overrides::default(), &cfg, 64).unwrap();
    assert_eq!((from_env.cpus, from_env.workers, from_env.sources.cpus), (3, 7, Source::Env));
    let cli = Overrides { cpus: Some("2".into()), ..Default::default() };
    let from_cli = plan(&cli, &cfg, 64).unwrap();
    assert_eq!((from_cli.cpus, from_cli.workers, from_cli.sources.cpus), (2, 5, Source::Cli));
    let file_only = config(&[], "COREIIX_CPUS=5\nDEPLOYMENT_PROFILE=enterprise\n");
    let from_file = plan(&Overrides::default(), &file_only, 64).unwrap();
    assert_eq!((from_file.cpus, from_file.workers), (5, 11));
}

#[test]
fn threads_follow_cpus_and_workers_unless_set() {
    assert_eq!(threads_per_worker(2, 1), 2);
    assert_eq!(threads_per_worker(2, 5), 1);
    assert_eq!(threads_per_worker(8, 2), 4);
    let cfg = config(&[], "COREIIX_THREADS=3\n");
    let plan = plan(&Overrides::default(), &cfg, 2).unwrap();
    assert_eq!((plan.threads, plan.sources.threads), (3, Source::EnvFile));
}

#[test]
fn bad_worker_counts_name_value_origin_and_range() {
    for bad in ["abc", "0", "-1", "1025", "2.5", "99999999999999999999"] {
        let cfg = config(&[("WORKERS", bad)], "");
        let err = plan(&Overrides::default(), &cfg, 2).unwrap_err().0;
        assert!(err.contains(&format!("{bad:?}")), "{err}");
        assert!(err.contains("the environment variable WORKERS"), "{err}");
        assert!(err.contains("a whole number from 1 to 1024"), "{err}");
    }
    let cli = Overrides { workers: Some("0".into()), ..Default::default() };
    let err = plan(&cli, &Config::default(), 2).unwrap_err().0;
    assert!(err.contains("--workers on the command line"), "{err}");
    let cfg = config(&[], "\nWORKERS=many\n");
    let err = plan(&Overrides::default(), &cfg, 2).unwrap_err().0;
    assert!(err.contains("WORKERS in test.env line 2"), "{err}");
}

#[test]
fn unknown_profile_lists_the_accepted_ones() {
    let cfg = config(&[("DEPLOYMENT_PROFILE", "prod")], "");
    let err = plan(&Overrides::default(), &cfg, 2).unwrap_err().0;
    assert!(err.contains("\"prod\""), "{err}");
    assert!(err.contains("DEPLOYMENT_PROFILE"), "{err}");
    assert!(err.contains("one of dev, small, enterprise"), "{err}");
}

#[test]
fn profile_names_are_case_insensitive() {
    let cfg = config(&[("DEPLOYMENT_PROFILE", " Enterprise ")], "");
    assert_eq!(plan(&Overrides::default(), &cfg, 2).unwrap().workers, 5);
}

#[test]
fn the_env_file_never_overrides_the_environment() {
    let cfg = config(
        &[("WORKERS", "3"), ("DEPLOYMENT_PROFILE", "small")],
        "WORKERS=9\nDEPLOYMENT_PROFILE=enterprise\n",
    );
    let plan = plan(&Overrides::default(), &cfg, 2).unwrap();
    assert_eq!((plan.profile, plan.workers), (Profile::Small, 3));
}

#[test]
fn unknown_settings_warn_with_the_closest_name() {
    let cfg = config(&[("COREIIX_WOKERS", "2"), ("PATH", "/bin")], "WORKRES=3\n");
    let warnings = cfg.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("COREIIX_WOKERS") && warnings[0].contains("did you mean"), "{warnings:?}");
    assert!(warnings[1].contains("WORKRES in test.env line 1"), "{warnings:?}");
    assert!(warnings[1].contains("did you mean WORKERS?"), "{warnings:?}");
}
