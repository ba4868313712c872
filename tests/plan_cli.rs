//! The `coreiix-plan` binary, run for real: every output format, every error and exit code.

mod support;

use std::process::Output;

use support::{PLANNER, command};

fn plan(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    command(PLANNER, dir).args(args).envs(env.iter().copied()).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn json_has_the_documented_keys_and_sources() {
    let dir = tempfile::tempdir().unwrap();
    let o = plan(dir.path(), &["--format", "json", "--cpus", "2"], &[("DEPLOYMENT_PROFILE", "enterprise")]);
    let v = json(&o);
    assert_eq!(v["profile"], "enterprise");
    assert_eq!(v["workers"], 5);
    assert_eq!(v["reload"], false);
    assert_eq!(v["cpus"], 2);
    assert_eq!(v["sources"]["profile"], "env");
    assert_eq!(v["sources"]["workers"], "default");
    assert_eq!(v["sources"]["cpus"], "cli");
}

#[test]
fn cli_beats_env_beats_env_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("site.env");
    std::fs::write(&file, "DEPLOYMENT_PROFILE=small\nWORKERS=9\n").unwrap();
    let f = file.to_str().unwrap();
    let from_file = json(&plan(dir.path(), &["--format", "json", "--env-file", f], &[]));
    assert_eq!(
        (from_file["workers"].as_u64(), from_file["sources"]["workers"].as_str()),
        (Some(9), Some("env-file"))
    );
    let from_env = json(&plan(dir.path(), &["--format", "json", "--env-file", f], &[("WORKERS", "3")]));
    assert_eq!(
        (from_env["workers"].as_u64(), from_env["sources"]["workers"].as_str()),
        (Some(3), Some("env"))
    );
    let from_cli = json(&plan(
        dir.path(),
        &["--format", "json", "--env-file", f, "--workers", "4"],
        &[("WORKERS", "3")],
    ));
    assert_eq!(
        (from_cli["workers"].as_u64(), from_cli["sources"]["workers"].as_str()),
        (Some(4), Some("cli"))
    );
    assert_eq!(from_cli["profile"], "small");
    assert_eq!(from_cli["sources"]["profile"], "env-file");
}

#[test]
fn dot_env_in_the_working_directory_is_the_default_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".env"), "DEPLOYMENT_PROFILE=small\n").unwrap();
    let mut cmd = command(PLANNER, dir.path());
    cmd.env_remove("COREIIX_ENV_FILE").args(["--format", "json"]);
    let v = json(&cmd.output().unwrap());
    if std::path::Path::new("/etc/coreiix/coreiix.env").exists() {
        // An installed host: the system file wins by design.
        assert!(v["env_file"].as_str().unwrap().starts_with("/etc/coreiix"), "{v}");
    } else {
        assert_eq!(
            (v["profile"].as_str(), v["sources"]["profile"].as_str()),
            (Some("small"), Some("env-file"))
        );
    }
    // A missing default file is fine.
    std::fs::remove_file(dir.path().join(".env")).unwrap();
    let mut cmd = command(PLANNER, dir.path());
    cmd.env_remove("COREIIX_ENV_FILE").args(["--format", "json"]);
    assert!(cmd.output().unwrap().status.success());
}

#[test]
fn human_output_explains_where_workers_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let o = plan(dir.path(), &["--workers", "4", "--profile", "small"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains(
            "workers      4      from --workers on the command line; the small profile alone gives 2"
        ),
        "{text}"
    );
    assert!(text.contains("auto-reload  off"), "{text}");
}

#[test]
fn dev_with_more_workers_says_reload_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let v = json(&plan(dir.path(), &["--format", "json", "--workers", "2"], &[]));
    assert_eq!((v["profile"].as_str(), v["reload"].as_bool()), (Some("dev"), Some(false)));
    assert!(v["notes"][0].as_str().unwrap().contains("auto-reload is off"), "{v}");
    let v = json(&plan(dir.path(), &["--format", "json"], &[]));
    assert_eq!(
        (v["profile"].as_str(), v["workers"].as_u64(), v["reload"].as_bool()),
        (Some("dev"), Some(1), Some(true))
    );
}

#[test]
fn env_format_is_readable_by_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let o = plan(dir.path(), &["--format", "env", "--profile", "small", "--cpus", "4"], &[]);
    assert!(o.status.success());
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("set -e; {}\necho \"$DEPLOYMENT_PROFILE:$WORKERS:$COREIIX_THREADS\"", stdout(&o)))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "small:2:2");
}

type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, Vec<String>);

#[test]
fn bad_input_exits_2_naming_value_origin_and_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let bad_file = dir.path().join("bad.env");
    std::fs::write(&bad_file, "DEPLOYMENT_PROFILE=small\nWORKERS=lots\n").unwrap();
    let broken = dir.path().join("broken.env");
    std::fs::write(&broken, "WORKERS=2\nthis line is wrong\n").unwrap();
    // (arguments, environment, what the message must contain)
    let cases: Vec<Case> = vec![
        (
            vec![],
            vec![("WORKERS", "abc")],
            vec!["\"abc\"".into(), "the environment variable WORKERS".into(), "1 to 1024".into()],
        ),
        (vec![], vec![("WORKERS", "0")], vec!["\"0\"".into(), "1 to 1024".into()]),
        (vec![], vec![("WORKERS", "-3")], vec!["\"-3\"".into()]),
        (vec!["--workers", "5000"], vec![], vec!["\"5000\"".into(), "--workers on the command line".into()]),
        (
            vec![],
            vec![("DEPLOYMENT_PROFILE", "production")],
            vec!["\"production\"".into(), "one of dev, small, enterprise".into()],
        ),
        (
            vec!["--env-file", bad_file.to_str().unwrap()],
            vec![],
            vec![format!("WORKERS in {} line 2", bad_file.display())],
        ),
        (
            vec!["--env-file", broken.to_str().unwrap()],
            vec![],
            vec![format!("{} line 2", broken.display()), "KEY=value".into()],
        ),
        (
            vec!["--env-file", "/nonexistent/coreiix.env"],
            vec![],
            vec!["/nonexistent/coreiix.env".into(), "does not exist".into()],
        ),
        (vec!["--workers"], vec![], vec!["--workers".into()]),
    ];
    for (args, env, needles) in cases {
        let o = plan(dir.path(), &args, &env);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        for needle in needles {
            assert!(err.contains(&needle), "{args:?} {env:?}: missing {needle:?} in {err}");
        }
    }
}

#[test]
fn unknown_coreiix_variable_warns_with_closest_name() {
    let dir = tempfile::tempdir().unwrap();
    let o = plan(dir.path(), &[], &[("COREIIX_DRAIN_TIMOUT", "5")]);
    assert!(o.status.success());
    let err = stderr(&o);
    assert!(err.contains("warning: unknown environment variable COREIIX_DRAIN_TIMOUT"), "{err}");
    assert!(err.contains("did you mean COREIIX_DRAIN_TIMEOUT?"), "{err}");
}

#[test]
fn check_validates_worker_settings_too() {
    let dir = tempfile::tempdir().unwrap();
    let o = plan(dir.path(), &["check"], &[("COREIIX_LISTEN", "nowhere")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("\"nowhere\" from the environment variable COREIIX_LISTEN"),
        "{}",
        stderr(&o)
    );
    let o = plan(dir.path(), &["check"], &[("DEPLOYMENT_PROFILE", "small")]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("configuration OK: small profile, 2 workers"));
}

/// CPU detection honours affinity: pinned to one CPU, enterprise plans 3 workers.
#[test]
fn affinity_is_counted_by_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let o = command("taskset", dir.path())
        .args(["-c", "0", PLANNER, "--format", "json", "--profile", "enterprise"])
        .output()
        .expect("taskset (util-linux) runs");
    let v = json(&o);
    assert_eq!(
        (v["cpus"].as_u64(), v["workers"].as_u64(), v["sources"]["cpus"].as_str()),
        (Some(1), Some(3), Some("detected"))
    );
}

#[test]
fn generator_writes_the_wants_drop_in() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gen");
    let o = plan(dir.path(), &["generate", out.to_str().unwrap()], &[("WORKERS", "3")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(out.join("coreiix.target.d/50-workers.conf")).unwrap();
    assert!(text.contains("Wants=coreiix@1.service coreiix@2.service coreiix@3.service"), "{text}");
}

/// A cgroup CPU quota of one CPU makes enterprise plan 3 workers, whatever the host has.
/// Creates a real cgroup (v2 `cpu.max`, or v1 `cpu.cfs_quota_us`), so it needs root.
#[test]
fn cgroup_cpu_quota_is_counted_by_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("coreiix-test-{}", std::process::id());
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers");
    let cgroup = if std::fs::read_to_string(v2).is_ok_and(|c| c.split_whitespace().any(|x| x == "cpu")) {
        // cpu.max exists only where the parent delegates the cpu controller.
        let delegated = std::fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control")
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "cpu"));
        assert!(
            delegated,
            "the root cgroup does not delegate the cpu controller (+cpu in cgroup.subtree_control)"
        );
        let path = std::path::PathBuf::from("/sys/fs/cgroup").join(&name);
        std::fs::create_dir(&path).expect("create a cgroup v2 (needs root)");
        std::fs::write(path.join("cpu.max"), "100000 100000").unwrap();
        path
    } else {
        let path = std::path::PathBuf::from("/sys/fs/cgroup/cpu").join(&name);
        std::fs::create_dir(&path).expect("create a cgroup v1 cpu group (needs root and a cgroup)");
        std::fs::write(path.join("cpu.cfs_period_us"), "100000").unwrap();
        std::fs::write(path.join("cpu.cfs_quota_us"), "100000").unwrap();
        path
    };
    let procs = cgroup.join("cgroup.procs");
    let o = command("sh", dir.path())
        .arg("-c")
        .arg(format!("echo $$ > {} && exec {PLANNER} --format json --profile enterprise", procs.display()))
        .output()
        .unwrap();
    let removed = std::fs::remove_dir(&cgroup);
    let v = json(&o);
    removed.unwrap();
    assert_eq!((v["cpus"].as_u64(), v["workers"].as_u64()), (Some(1), Some(3)), "{v}");
}
