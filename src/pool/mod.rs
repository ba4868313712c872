//! Driving a systemd pool: `apply` (rescale without a failed request), `status` and a rolling
//! `restart`. Each instance is `coreiix@N.service`; systemd holds the socket throughout.

pub mod generator;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cli::{Context, PlanArgs};
use crate::config::SYSTEM_ENV_FILE;
use crate::error::ConfigError;
use crate::plan::Overrides;

/// One `coreiix@N.service` as systemd sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub number: u32,
    pub active: String,
    pub sub: String,
    pub status: String,
    pub pid: u32,
}

impl Instance {
    fn unit(number: u32) -> String {
        format!("coreiix@{number}.service")
    }

    /// `active` for a `Type=notify` unit means it has sent READY=1.
    pub fn ready(&self) -> bool {
        self.active == "active" && self.sub == "running"
    }

    fn running(&self) -> bool {
        matches!(self.active.as_str(), "active" | "activating" | "reloading")
    }
}

fn systemctl(args: &[String]) -> anyhow::Result<String> {
    let output = Command::new("systemctl")
        .args(args)
        .output()
        .context("cannot run systemctl (is this a systemd host?)")?;
    if !output.status.success() {
        bail!("systemctl {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Instances systemd knows of, plus `1..=planned` whether loaded or not.
pub fn instances(planned: u32) -> anyhow::Result<Vec<Instance>> {
    let listed = systemctl(&[
        "list-units".into(),
        "--all".into(),
        "--plain".into(),
        "--no-legend".into(),
        "coreiix@*.service".into(),
    ])?;
    let mut numbers: Vec<u32> = listed
        .lines()
        .filter_map(|l| {
            l.split_whitespace().next()?.strip_prefix("coreiix@")?.strip_suffix(".service")?.parse().ok()
        })
        .chain(1..=planned)
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    let mut args: Vec<String> =
        vec!["show".into(), "-p".into(), "Id,ActiveState,SubState,StatusText,MainPID".into()];
    args.extend(numbers.iter().map(|&n| Instance::unit(n)));
    let shown = systemctl(&args)?;
    Ok(parse_show(&shown))
}

/// Parses `systemctl show` output: blocks of KEY=value separated by blank lines.
fn parse_show(text: &str) -> Vec<Instance> {
    text.split("\n\n")
        .filter_map(|block| {
            let field = |key: &str| {
                block.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).unwrap_or("").to_owned()
            };
            let number = field("Id").strip_prefix("coreiix@")?.strip_suffix(".service")?.parse().ok()?;
            Some(Instance {
                number,
                active: field("ActiveState"),
                sub: field("SubState"),
                status: field("StatusText"),
                pid: field("MainPID").parse().unwrap_or(0),
            })
        })
        .collect()
}

pub fn status(ctx: &Context) -> anyhow::Result<()> {
    let plan = ctx.plan()?;
    let instances = instances(plan.workers)?;
    print!("{}", render_status(&plan, &instances));
    Ok(())
}

fn render_status(plan: &crate::plan::Plan, instances: &[Instance]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan: {} profile, {} workers (from {}); env file {}",
        plan.profile,
        plan.workers,
        plan.origins.workers,
        plan.env_file.as_ref().map_or("none".into(), |p| p.display().to_string())
    );
    let ready = instances.iter().filter(|i| i.ready()).count();
    let _ = writeln!(out, "running: {ready} ready of {} planned", plan.workers);
    let _ = writeln!(
        out,
        "{:<10} {:<8} {:<12} {:<6} {:<8} status",
        "instance", "planned", "state", "ready", "pid"
    );
    for i in instances {
        let planned = if i.number <= plan.workers { "yes" } else { "no" };
        let state = format!("{}/{}", i.active, i.sub);
        let ready = if i.ready() { "yes" } else { "no" };
        let pid = if i.pid == 0 { "-".to_owned() } else { i.pid.to_string() };
        let _ = writeln!(out, "{:<10} {planned:<8} {state:<12} {ready:<6} {pid:<8} {}", i.number, i.status);
    }
    out
}

/// Starts the missing instances (each waited for until READY), then drains and stops the
/// surplus, so the socket always has ready workers behind it.
pub fn apply(ctx: &Context, args: &PlanArgs, persist: bool) -> anyhow::Result<()> {
    if args.workers.is_some() && args.profile.is_some() {
        return Err(ConfigError::new("apply takes --workers N or --profile P, not both").into());
    }
    let mut plan = ctx.plan()?;
    crate::worker::validate(&ctx.config)?;
    if args.profile.is_some() && args.workers.is_none() {
        // Choosing a profile here means that profile's own count, whatever WORKERS says in the
        // environment or the env file (which --persist comments out).
        let overrides =
            Overrides { workers: Some(plan.profile_workers.to_string()), ..ctx.overrides.clone() };
        plan = crate::plan::plan(&overrides, &ctx.config, crate::plan::detect_cpus())?;
    }
    // Check that the change can be saved before touching anything.
    let change = if persist { Some(PersistedChange::prepare(ctx, args)?) } else { None };
    // The file is written first, because the new instances read it when they start (and size
    // themselves from it); if the pool cannot be moved, the old file is put back.
    let previous = change.as_ref().map(PersistedChange::write).transpose()?;
    if let Err(e) = move_pool(&plan) {
        if let (Some(change), Some(previous)) = (&change, previous) {
            change.restore(previous);
        }
        return Err(e);
    }
    if change.is_some() {
        systemctl(&["daemon-reload".into()])?;
    }
    println!(
        "pool now runs {} workers ({} profile){}",
        plan.workers,
        plan.profile,
        if persist {
            ", saved"
        } else {
            "; not saved: the next boot or daemon-reload uses the env file (add --persist)"
        }
    );
    Ok(())
}

/// Starts the planned instances that are not ready (each waited for until READY), then drains
/// and stops the surplus, so the socket always has ready workers behind it.
fn move_pool(plan: &crate::plan::Plan) -> anyhow::Result<()> {
    let current = instances(plan.workers)?;
    let missing: Vec<String> = (1..=plan.workers)
        .filter(|n| !current.iter().any(|i| i.number == *n && i.ready()))
        .map(Instance::unit)
        .collect();
    let surplus: Vec<String> = current
        .iter()
        .filter(|i| i.number > plan.workers && i.running())
        .map(|i| Instance::unit(i.number))
        .collect();
    if !missing.is_empty() {
        println!("starting {} (waiting for READY)", missing.join(" "));
        let mut cmd = vec!["start".to_owned()];
        cmd.extend(missing.iter().cloned());
        systemctl(&cmd).context("new instances did not become ready; nothing was stopped")?;
    }
    if !surplus.is_empty() {
        println!("draining and stopping {}", surplus.join(" "));
        let mut cmd = vec!["stop".to_owned()];
        cmd.extend(surplus.iter().cloned());
        systemctl(&cmd)?;
    }
    Ok(())
}

/// A change to the env file that the generator and instances read, checked before it is made.
struct PersistedChange {
    path: PathBuf,
    key: &'static str,
    value: String,
    clear_workers: bool,
}

impl PersistedChange {
    fn prepare(ctx: &Context, args: &PlanArgs) -> anyhow::Result<PersistedChange> {
        let path =
            ctx.config.file.as_ref().map(|f| f.path().to_owned()).unwrap_or_else(|| SYSTEM_ENV_FILE.into());
        if is_nix_managed(&path) {
            return Err(ConfigError::new(format!(
                "{} is managed by NixOS and cannot be changed here: set services.coreiix.workers \
                 (or services.coreiix.profile) in your NixOS configuration and run nixos-rebuild switch",
                path.display()
            ))
            .into());
        }
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(ConfigError::new(format!(
                "{} is a symbolic link; not replacing it: edit the file it points to, or give \
                 that file with --env-file",
                path.display()
            ))
            .into());
        }
        let (key, value) = match (&args.workers, &args.profile) {
            (Some(w), _) => ("WORKERS", w.trim().to_owned()),
            (None, Some(p)) => ("DEPLOYMENT_PROFILE", p.trim().to_ascii_lowercase()),
            (None, None) => return Err(ConfigError::new("--persist needs --workers N or --profile P").into()),
        };
        Ok(PersistedChange { path, key, value, clear_workers: args.profile.is_some() })
    }

    /// Makes the change; returns the file's previous contents (None: there was no file).
    fn write(&self) -> anyhow::Result<Option<String>> {
        let previous = std::fs::read_to_string(&self.path).ok();
        let new = set_key(previous.as_deref().unwrap_or_default(), self.key, &self.value, self.clear_workers);
        replace_file(&self.path, &new)
            .with_context(|| format!("cannot save {} in {}", self.key, self.path.display()))?;
        println!("saved {}={} in {}", self.key, self.value, self.path.display());
        Ok(previous)
    }

    /// Puts the file back as it was before [`write`](Self::write).
    fn restore(&self, previous: Option<String>) {
        let restored = match previous {
            Some(text) => replace_file(&self.path, &text),
            None => std::fs::remove_file(&self.path),
        };
        match restored {
            Ok(()) => println!("the pool did not move: {} is as it was", self.path.display()),
            Err(e) => eprintln!("coreiix-plan: warning: cannot restore {}: {e}", self.path.display()),
        }
    }
}

/// Replaces a file atomically, keeping its mode and owner (a new file gets 0644): the workers
/// run as a dynamic user and must still be able to read it, whatever our umask.
fn replace_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let old_meta = std::fs::metadata(path).ok();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mode = old_meta.as_ref().map_or(0o644, |m| m.mode() & 0o7777);
    let tmp = path.with_extension("env.tmp");
    let written = (|| -> std::io::Result<()> {
        let mut file =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if let Some(m) = &old_meta {
            std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()))?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// On NixOS the env file is a symlink into the read-only store.
fn is_nix_managed(path: &Path) -> bool {
    std::fs::read_link(path)
        .is_ok_and(|target| target.starts_with("/nix/store") || target.starts_with("/etc/static"))
        || std::fs::canonicalize(path).is_ok_and(|p| p.starts_with("/nix/store"))
}

/// Replaces every assignment of `key` (commenting out WORKERS when a profile is chosen, so the
/// profile takes effect), or appends one.
fn set_key(text: &str, key: &str, value: &str, clear_workers: bool) -> String {
    use crate::config::assigns;
    let mut out = String::new();
    let mut done = false;
    for line in text.lines() {
        if assigns(line, key) {
            if !done {
                let _ = writeln!(out, "{key}={value}");
                done = true;
            }
        } else if clear_workers && assigns(line, "WORKERS") {
            let _ = writeln!(out, "# {line}  (disabled by coreiix-plan apply --profile)");
        } else {
            let _ = writeln!(out, "{line}");
        }
    }
    if !done {
        let _ = writeln!(out, "{key}={value}");
    }
    out
}

/// Restarts instances one at a time; each restart returns once the new process is READY.
pub fn restart(ctx: &Context) -> anyhow::Result<()> {
    let plan = ctx.plan()?;
    // Refuse to roll onto a configuration the new workers would reject: nothing is touched.
    crate::worker::validate(&ctx.config)?;
    let running: Vec<Instance> = instances(plan.workers)?.into_iter().filter(Instance::running).collect();
    if running.is_empty() {
        bail!("no coreiix@ instance is running; start the pool with: systemctl start coreiix.target");
    }
    for (n, instance) in running.iter().enumerate() {
        let unit = Instance::unit(instance.number);
        print!("[{}/{}] restarting {unit} ... ", n + 1, running.len());
        let _ = std::io::Write::flush(&mut std::io::stdout());
        if let Err(e) = systemctl(&["restart".into(), unit.clone()]) {
            println!("failed");
            bail!(
                "{e}\nstopped the rolling restart at {unit}; the instances after it still run the old \
                 version. See: systemctl status {unit}; journalctl -u {unit}"
            );
        }
        println!("ready");
    }
    println!("rolling restart done: {} instances", running.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemctl_show_blocks() {
        let text = "Id=coreiix@1.service\nActiveState=active\nSubState=running\nStatusText=Serving: 3 requests\nMainPID=10\n\n\
                    Id=coreiix@2.service\nActiveState=inactive\nSubState=dead\nStatusText=\nMainPID=0\n";
        let got = parse_show(text);
        assert_eq!(got.len(), 2);
        assert!(got[0].ready() && !got[1].ready() && !got[1].running());
        assert_eq!((got[0].pid, got[0].status.as_str()), (10, "Serving: 3 requests"));
    }

    #[test]
    fn set_key_replaces_or_appends() {
        assert_eq!(set_key("A=1\nWORKERS=2\n", "WORKERS", "5", false), "A=1\nWORKERS=5\n");
        assert_eq!(set_key("A=1\n", "WORKERS", "5", false), "A=1\nWORKERS=5\n");
        let p = set_key("WORKERS=3\nDEPLOYMENT_PROFILE=dev\n", "DEPLOYMENT_PROFILE", "small", true);
        assert!(p.starts_with("# WORKERS=3") && p.contains("\nDEPLOYMENT_PROFILE=small\n"), "{p}");
    }
}
