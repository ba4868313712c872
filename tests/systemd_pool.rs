//! The systemd appliance, proven in a real systemd (booted as PID 1 of its own namespaces,
//! see `support/systemd-box.sh`). Needs root; without it these tests fail, they never skip.
//!
//! Each test installs Coreiix with the README's commands (`systemd/install.sh`, using the
//! binaries this test run built), on its own port, and drives it with systemctl and
//! `coreiix-plan` inside the box while loading it from the host over loopback.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::systemd_box::SystemdBox;
use support::{Load, get, wait_until};

const SECOND: Duration = Duration::from_secs(1);

struct Pool {
    b: SystemdBox,
    addr: SocketAddr,
}

impl Pool {
    /// Boots a box and installs Coreiix with `config` as /etc/coreiix/coreiix.env; nothing is
    /// started yet.
    fn install(config: &str) -> Pool {
        let b = SystemdBox::start();
        let root = support::repo_root();
        let bin = Path::new(support::WORKER).parent().unwrap();
        b.sh_ok(&format!("sh {}/systemd/install.sh --bin-source {}", root.display(), bin.display()));
        b.write_file("/etc/coreiix/coreiix.env", config);
        let port = support::free_port();
        b.write_file(
            "/etc/systemd/system/coreiix.socket.d/test.conf",
            format!("[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n"),
        );
        b.sh_ok("systemctl daemon-reload");
        Pool { b, addr: format!("127.0.0.1:{port}").parse().unwrap() }
    }

    fn start(&self) {
        self.b.sh_ok("systemctl enable --now coreiix.socket coreiix.target");
        support::wait_http_ok(self.addr, "/healthz", 30 * SECOND);
    }

    /// Instance numbers of active (READY) `coreiix@N.service` units.
    fn active(&self) -> Vec<u32> {
        let out = self.b.sh_ok("systemctl list-units --state=active --plain --no-legend 'coreiix@*.service'");
        let mut n: Vec<u32> = out
            .lines()
            .filter_map(|l| {
                l.split_whitespace().next()?.strip_prefix("coreiix@")?.strip_suffix(".service")?.parse().ok()
            })
            .collect();
        n.sort_unstable();
        n
    }

    fn wait_active(&self, expected: &[u32]) {
        let mut seen = Vec::new();
        let limit = 30 * SECOND;
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            seen = self.active();
            if seen == expected {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "expected instances {expected:?}, have {seen:?}\n{}",
            self.b.sh("systemctl status 'coreiix*' --no-pager").stdout_text()
        );
    }

    /// Waits until no instance runs at all (not even draining).
    fn wait_stopped(&self) {
        wait_until("every instance to stop", 60 * SECOND, || {
            self.b
                .sh_ok("systemctl list-units --state=active,activating,deactivating --plain --no-legend 'coreiix@*.service'")
                .trim()
                .is_empty()
        });
    }

    fn main_pid(&self, n: u32) -> u32 {
        self.b
            .sh_ok(&format!("systemctl show -p MainPID --value coreiix@{n}.service"))
            .trim()
            .parse()
            .unwrap()
    }
}

trait OutputText {
    fn stdout_text(&self) -> String;
    fn all_text(&self) -> String;
}

impl OutputText for std::process::Output {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn all_text(&self) -> String {
        format!("{}{}", String::from_utf8_lossy(&self.stdout), String::from_utf8_lossy(&self.stderr))
    }
}

#[test]
fn profiles_and_overrides_give_the_planned_instance_count() {
    let pool = Pool::install("DEPLOYMENT_PROFILE=small\n");
    pool.start();
    pool.wait_active(&[1, 2]);
    for (config, expected) in [
        ("DEPLOYMENT_PROFILE=enterprise\nCOREIIX_CPUS=2\n", vec![1, 2, 3, 4, 5]),
        ("DEPLOYMENT_PROFILE=enterprise\nCOREIIX_CPUS=2\nWORKERS=3\n", vec![1, 2, 3]),
        ("DEPLOYMENT_PROFILE=dev\n", vec![1]),
        ("DEPLOYMENT_PROFILE=dev\nWORKERS=4\n", vec![1, 2, 3, 4]),
        ("DEPLOYMENT_PROFILE=small\n", vec![1, 2]),
    ] {
        pool.b.sh_ok("systemctl stop coreiix.target");
        pool.b.write_file("/etc/coreiix/coreiix.env", config);
        pool.b.sh_ok("systemctl daemon-reload && systemctl start coreiix.target");
        pool.wait_active(&expected);
        // What an operator sees printed is what systemd runs.
        let plan = pool.b.sh_ok("coreiix-plan --format json");
        let v: serde_json::Value = serde_json::from_str(&plan).unwrap();
        assert_eq!(v["workers"].as_u64(), Some(expected.len() as u64), "{config}: {plan}");
        assert_eq!(v["env_file"], "/etc/coreiix/coreiix.env");
        println!("{config:?} -> instances {expected:?}");
    }
    // CPU quota detection is proven on the host's own cgroups in tests/plan_cli.rs.
}

#[test]
fn the_first_connection_to_the_socket_starts_the_whole_pool() {
    let pool = Pool::install("DEPLOYMENT_PROFILE=enterprise\nCOREIIX_CPUS=1\n");
    pool.b.sh_ok("systemctl enable --now coreiix.socket");
    assert_eq!(pool.active(), Vec::<u32>::new(), "nothing runs before the first connection");
    let first = get(pool.addr, "/", 30 * SECOND).expect("the first request is answered");
    assert_eq!(first.status, 200, "{first:?}");
    pool.wait_active(&[1, 2, 3]);

    // Stopping the pool leaves the socket listening: a new connection waits and is answered
    // when the pool is back (here brought back by that very connection).
    pool.b.sh_ok("systemctl stop coreiix.target");
    pool.wait_stopped();
    assert_eq!(pool.b.sh_ok("systemctl is-active coreiix.socket").trim(), "active");
    let again = get(pool.addr, "/healthz", 30 * SECOND).expect("answered after the pool restarts");
    assert_eq!(again.status, 200);
    pool.wait_active(&[1, 2, 3]);
}

#[test]
fn kill_9_of_an_instance_under_load_refuses_no_connection() {
    let pool = Pool::install("DEPLOYMENT_PROFILE=small\nWORKERS=3\n");
    pool.start();
    pool.wait_active(&[1, 2, 3]);
    let victim = pool.main_pid(2);
    let clients = 6;
    let load = Load::start(pool.addr, clients, 60 * SECOND);
    std::thread::sleep(SECOND);
    pool.b.sh_ok(&format!("kill -9 {victim}"));
    wait_until("systemd to restart coreiix@2", 30 * SECOND, || {
        let pid = pool.main_pid(2);
        pid != 0 && pid != victim && pool.active() == [1, 2, 3]
    });
    std::thread::sleep(SECOND);
    let report = load.finish();
    println!(
        "kill -9 under load (systemd): {} ok, {} refused, {} failed",
        report.ok, report.refused, report.failed
    );
    assert_eq!(report.refused, 0, "{report:?}");
    assert!(
        report.failed <= clients as u64,
        "only the killed instance's in-flight requests may fail: {report:?}"
    );
    let restarts = pool.b.sh_ok("systemctl show -p NRestarts --value coreiix@2.service");
    assert_eq!(restarts.trim(), "1");
}

#[test]
fn apply_rescales_2_5_2_and_restart_rolls_without_a_failed_request() {
    let pool = Pool::install("DEPLOYMENT_PROFILE=small\n");
    pool.start();
    pool.wait_active(&[1, 2]);
    let load = Load::start(pool.addr, 6, 120 * SECOND);
    std::thread::sleep(SECOND);

    let up = pool.b.sh_ok("coreiix-plan apply --workers 5");
    assert!(up.contains("starting coreiix@3.service coreiix@4.service coreiix@5.service"), "{up}");
    pool.wait_active(&[1, 2, 3, 4, 5]);
    let status = pool.b.sh_ok("coreiix-plan --workers 5 status");
    assert!(status.contains("running: 5 ready of 5 planned"), "{status}");
    assert!(status.contains("Serving: "), "{status}");
    std::thread::sleep(SECOND);
    let down = pool.b.sh_ok("coreiix-plan apply --workers 2");
    assert!(
        down.contains("draining and stopping coreiix@3.service coreiix@4.service coreiix@5.service"),
        "{down}"
    );
    pool.wait_active(&[1, 2]);

    let before = (pool.main_pid(1), pool.main_pid(2));
    let rolled = pool.b.sh_ok("coreiix-plan restart");
    assert!(rolled.contains("rolling restart done: 2 instances"), "{rolled}");
    let after = (pool.main_pid(1), pool.main_pid(2));
    assert!(before.0 != after.0 && before.1 != after.1, "{before:?} {after:?}");

    std::thread::sleep(SECOND);
    let report = load.finish();
    println!(
        "apply 2->5->2 and rolling restart under load: {} ok, {} refused, {} failed",
        report.ok, report.refused, report.failed
    );
    assert_eq!((report.refused, report.failed), (0, 0), "{report:?}");
    assert!(report.ok > 100);

    // --persist survives a daemon-reload (and so a reboot): the generator reads the file. It
    // keeps the file readable by the workers' dynamic user whatever the operator's umask.
    pool.b.sh_ok(
        "chmod 0644 /etc/coreiix/coreiix.env && (umask 077; coreiix-plan apply --workers 4 --persist)",
    );
    assert!(pool.b.sh_ok("cat /etc/coreiix/coreiix.env").contains("\nWORKERS=4\n"));
    assert_eq!(pool.b.sh_ok("stat -c %a /etc/coreiix/coreiix.env").trim(), "644");
    pool.b.sh_ok("systemctl daemon-reload && systemctl restart coreiix.target");
    pool.wait_active(&[1, 2, 3, 4]);
}

#[test]
fn a_configuration_error_reaches_systemctl_status_and_the_journal() {
    let pool = Pool::install("DEPLOYMENT_PROFILE=small\nWORKERS=lots\n");
    // Boot (daemon-reload re-runs the generator) goes on; starting the pool fails.
    let state = pool.b.sh("systemctl is-system-running").stdout_text();
    assert!(["running", "degraded"].contains(&state.trim()), "{state}");
    let start = pool.b.sh("systemctl start coreiix.target");
    assert!(!start.status.success(), "{}", start.all_text());
    let expected = "invalid value \"lots\" from WORKERS in /etc/coreiix/coreiix.env line 2: expected a whole number from 1 to 1024";
    let status =
        pool.b.sh("systemctl status coreiix.target coreiix-config-error.service --no-pager -l").all_text();
    assert!(status.contains(expected), "{status}");
    let journal = pool.b.sh_ok("journalctl -u coreiix-config-error.service --no-pager");
    assert!(journal.contains(expected), "{journal}");
    assert_eq!(pool.active(), Vec::<u32>::new());

    // Fixed and reloaded, the pool starts.
    pool.b.write_file("/etc/coreiix/coreiix.env", "DEPLOYMENT_PROFILE=small\n");
    pool.b.sh_ok("systemctl daemon-reload && systemctl start coreiix.target");
    pool.wait_active(&[1, 2]);

    // A rolling restart onto a configuration the workers would reject is refused before any
    // instance is touched.
    let before = (pool.main_pid(1), pool.main_pid(2));
    pool.b.write_file("/etc/coreiix/coreiix.env", "DEPLOYMENT_PROFILE=small\nCOREIIX_DRAIN_TIMEOUT=soon\n");
    let refused = pool.b.sh("coreiix-plan restart");
    assert_eq!(refused.status.code(), Some(2), "{}", refused.all_text());
    assert!(
        refused.all_text().contains("\"soon\" from COREIIX_DRAIN_TIMEOUT in /etc/coreiix/coreiix.env line 2")
    );
    assert_eq!((pool.main_pid(1), pool.main_pid(2)), before);

    // A new worker that fails to come up (here: a broken binary) stops the roll at that
    // instance, with the reason, and the instances after it keep serving.
    pool.b.write_file("/etc/coreiix/coreiix.env", "DEPLOYMENT_PROFILE=small\n");
    // Replaced the way an upgrade replaces it: a new file moved over the old name.
    pool.b.sh_ok(
        "cp /usr/local/bin/coreiix /root/coreiix.good && printf '#!/bin/sh\\nexit 1\\n' > /root/coreiix.bad \
         && chmod +x /root/coreiix.bad && mv -f /root/coreiix.bad /usr/local/bin/coreiix",
    );
    let roll = pool.b.sh("coreiix-plan restart");
    let text = roll.all_text();
    assert!(!roll.status.success(), "{text}");
    assert!(text.contains("stopped the rolling restart at coreiix@1.service"), "{text}");
    assert_eq!(pool.main_pid(2), before.1, "instance 2 was not touched");
    assert_eq!(get(pool.addr, "/healthz", 5 * SECOND).unwrap().status, 200);
    // Likewise `apply --persist` whose new instances cannot start: it fails and puts the env
    // file back, so the next boot does not plan what never came up.
    let applied = pool.b.sh("coreiix-plan apply --workers 3 --persist");
    assert!(!applied.status.success(), "{}", applied.all_text());
    assert_eq!(pool.b.sh_ok("cat /etc/coreiix/coreiix.env"), "DEPLOYMENT_PROFILE=small\n");
    pool.b.sh_ok("systemctl stop coreiix@3.service");
    pool.b.sh_ok("mv -f /root/coreiix.good /usr/local/bin/coreiix && coreiix-plan restart");
    pool.wait_active(&[1, 2]);
}

#[test]
fn the_journal_has_the_workers_structured_fields() {
    let pool = Pool::install("DEPLOYMENT_PROFILE=dev\n");
    pool.start();
    let resp = get(pool.addr, "/healthz", 5 * SECOND).unwrap();
    let id = resp.headers.lines().find_map(|l| l.strip_prefix("x-request-id: ")).unwrap().to_owned();
    let mut entry = serde_json::Value::Null;
    wait_until("the access log entry in the journal", 20 * SECOND, || {
        let out = pool.b.sh_ok("journalctl -u coreiix@1.service -o json --no-pager");
        entry = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["REQUEST_ID"] == id.as_str())
            .unwrap_or_default();
        !entry.is_null()
    });
    assert_eq!(entry["INSTANCE"], "1");
    assert_eq!(entry["METHOD"], "GET");
    assert_eq!(entry["PATH"], "/healthz");
    assert_eq!(entry["STATUS"], "200");
    assert!(entry["LATENCY_MS"].as_str().unwrap().parse::<f64>().is_ok(), "{entry}");
    assert_eq!(entry["SYSLOG_IDENTIFIER"], "coreiix");
    // systemctl status shows the live STATUS= line.
    wait_until("STATUS= in systemctl status", 10 * SECOND, || {
        pool.b.sh_ok("systemctl status coreiix@1.service --no-pager").contains("Status: \"Serving: ")
    });
}

#[test]
fn the_worker_unit_scores_1_0_or_better_in_systemd_analyze_security() {
    let pool = Pool::install("DEPLOYMENT_PROFILE=small\n");
    let out =
        pool.b.sh("systemd-analyze security --offline=yes /usr/local/lib/systemd/system/coreiix@.service");
    let text = out.all_text();
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for ")
                .nth(1)?
                .split(": ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no score in:\n{text}"));
    println!("systemd-analyze security coreiix@.service: {score}");
    assert!(score <= 1.0, "exposure {score} > 1.0\n{text}");
}

#[test]
fn install_and_uninstall_with_the_readme_commands() {
    let pool = Pool::install("DEPLOYMENT_PROFILE=small\n");
    pool.start();
    pool.wait_active(&[1, 2]);
    let gen_link = pool.b.sh_ok("readlink /usr/local/lib/systemd/system-generators/coreiix-generator");
    assert_eq!(gen_link.trim(), "../../../bin/coreiix-plan");
    let root = support::repo_root();
    pool.b.sh_ok(&format!(
        "systemctl disable --now coreiix.target coreiix.socket && sh {}/systemd/install.sh --uninstall",
        root.display()
    ));
    pool.b.sh_ok("systemctl daemon-reload");
    assert!(!pool.b.sh("test -e /usr/local/bin/coreiix-plan").status.success());
    assert!(!pool.b.sh("test -e /usr/local/lib/systemd/system/coreiix@.service").status.success());
    // The operator's configuration is kept.
    assert!(pool.b.sh("test -e /etc/coreiix/coreiix.env").status.success());
    assert!(get(pool.addr, "/healthz", SECOND).is_err());
}
