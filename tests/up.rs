//! `coreiix-plan up`, run for real: N worker processes sharing one socket, supervised.
//! Every load here is bounded in time and talks to loopback only.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Load, PLANNER, Proc, command, get, wait_until};

const SECOND: Duration = Duration::from_secs(1);

struct Up {
    proc: Proc,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn up(args: &[&str], env: &[(&str, &str)]) -> Up {
    up_in(tempfile::tempdir().unwrap(), args, env)
}

/// `up` with 2 workers (small profile) reading an env file the test can rewrite.
fn up_with_env_file(contents: &str) -> (Up, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("site.env");
    std::fs::write(&env_file, contents).unwrap();
    let up = up_in(dir, &[], &[("COREIIX_ENV_FILE", env_file.to_str().unwrap())]);
    (up, env_file)
}

fn up_in(dir: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Up {
    let addr: SocketAddr = format!("127.0.0.1:{}", support::free_port()).parse().unwrap();
    let mut cmd = command(PLANNER, dir.path());
    cmd.arg("up").args(args).args(["--listen", &addr.to_string()]).envs(env.iter().copied());
    let proc = Proc::spawn(cmd.stdout(Stdio::null()));
    support::wait_http_ok(addr, "/healthz", 20 * SECOND);
    Up { proc, addr, _dir: dir }
}

/// The PIDs of the launcher's children.
fn workers(launcher: i32) -> Vec<i32> {
    let out = Command::new("pgrep").args(["-P", &launcher.to_string()]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn wait_for_workers(up: &Up, n: usize) -> Vec<i32> {
    let mut pids = Vec::new();
    wait_until(&format!("{n} workers"), 20 * SECOND, || {
        pids = workers(up.proc.pid());
        pids.len() == n
    });
    pids
}

/// The number of distinct worker PIDs that answered `GET /` in `tries` fresh connections.
fn answering_pids(addr: SocketAddr, tries: usize) -> std::collections::BTreeSet<u32> {
    (0..tries).filter_map(|_| get(addr, "/", 5 * SECOND).ok()?.pid()).collect()
}

#[test]
fn three_workers_share_one_socket() {
    let mut up = up(&["--workers", "3"], &[]);
    let pids = wait_for_workers(&up, 3);
    // Each worker got the socket exactly as systemd passes it: LISTEN_PID names the worker.
    for pid in &pids {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let vars: Vec<String> =
            environ.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        assert!(vars.contains(&format!("LISTEN_PID={pid}")), "{vars:?}");
        assert!(vars.contains(&"LISTEN_FDS=1".to_owned()), "{vars:?}");
        assert!(vars.contains(&"WORKERS=3".to_owned()), "{vars:?}");
        assert!(vars.iter().any(|v| v.starts_with("NOTIFY_SOCKET=/")), "{vars:?}");
    }
    let load = Load::start(up.addr, 8, 3 * SECOND);
    let report = load.finish_after(2 * SECOND);
    assert_eq!((report.refused, report.failed), (0, 0), "{report:?}");
    let answered: Vec<u32> = report.by_pid.keys().copied().collect();
    assert!(answered.len() >= 2, "only {answered:?} answered; workers are {pids:?}");
    for pid in &answered {
        assert!(pids.contains(&(*pid as i32)), "{pid} is not one of {pids:?}");
    }
    println!("3 workers: {} requests, by pid {:?}", report.ok, report.by_pid);
    up.proc.signal(libc::SIGTERM);
    assert_eq!(up.proc.wait_for(20 * SECOND).code(), Some(0));
}

#[test]
fn a_killed_worker_is_replaced_without_refusing_connections() {
    let mut up = up(&["--workers", "2"], &[]);
    let before = wait_for_workers(&up, 2);
    let clients = 6;
    let load = Load::start(up.addr, clients, 20 * SECOND);
    std::thread::sleep(SECOND);
    // SAFETY: kill(2) of a worker this test's launcher started.
    unsafe { libc::kill(before[0], libc::SIGKILL) };
    let mut after = Vec::new();
    wait_until("a replacement worker", 10 * SECOND, || {
        after = workers(up.proc.pid());
        after.len() == 2 && !after.contains(&before[0])
    });
    wait_until("the replacement to answer", 10 * SECOND, || {
        answering_pids(up.addr, 20).iter().any(|p| !before.contains(&(*p as i32)))
    });
    let report = load.finish();
    println!("kill -9 under load: {report:?}");
    assert_eq!(report.refused, 0, "{report:?}");
    // Only requests in flight on the killed worker may fail: at most one per client.
    assert!(report.failed <= clients as u64, "{report:?}");
    up.proc.signal(libc::SIGTERM);
    assert_eq!(up.proc.wait_for(20 * SECOND).code(), Some(0));
}

#[test]
fn sigterm_drains_a_slow_request_then_exits_0() {
    let mut up = up(&["--workers", "2"], &[("COREIIX_DIAGNOSTICS", "true")]);
    let addr = up.addr;
    let slow = std::thread::spawn(move || get(addr, "/debug/delay?ms=1500", 10 * SECOND));
    wait_until("the slow request to be in flight", 5 * SECOND, || {
        (0..4).any(|_| {
            get(addr, "/metrics", SECOND).is_ok_and(|m| m.body.contains("coreiix_http_requests_in_flight 2"))
        })
    });
    up.proc.signal(libc::SIGTERM);
    let answer = slow.join().unwrap().expect("the in-flight request completes");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(up.proc.wait_for(20 * SECOND).code(), Some(0));
}

#[test]
fn sighup_rolls_every_worker_without_a_failed_request() {
    let mut up = up(&["--workers", "3"], &[]);
    let before = wait_for_workers(&up, 3);
    let load = Load::start(up.addr, 6, 30 * SECOND);
    std::thread::sleep(SECOND);
    up.proc.signal(libc::SIGHUP);
    wait_until("all three workers replaced", 20 * SECOND, || {
        let now = workers(up.proc.pid());
        now.len() == 3 && now.iter().all(|p| !before.contains(p))
    });
    std::thread::sleep(SECOND);
    let report = load.finish();
    println!("SIGHUP under load: {report:?}");
    assert_eq!((report.refused, report.failed), (0, 0), "{report:?}");
    assert!(report.ok > 100, "{report:?}");
    up.proc.signal(libc::SIGTERM);
    assert_eq!(up.proc.wait_for(20 * SECOND).code(), Some(0));
}

#[test]
fn sigttin_and_sigttou_change_the_worker_count() {
    let mut up = up(&["--workers", "2"], &[]);
    wait_for_workers(&up, 2);
    up.proc.signal(libc::SIGTTIN);
    wait_for_workers(&up, 3);
    up.proc.signal(libc::SIGTTIN);
    wait_for_workers(&up, 4);
    up.proc.signal(libc::SIGTTOU);
    wait_for_workers(&up, 3);
    assert!(answering_pids(up.addr, 30).len() >= 2);
    up.proc.signal(libc::SIGTERM);
    assert_eq!(up.proc.wait_for(20 * SECOND).code(), Some(0));
}

#[test]
fn a_worker_configuration_error_stops_up_with_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    // The plan is fine, but a worker setting is not: the worker exits 2 and `up` must stop
    // with that status instead of restarting it forever.
    let out = command(PLANNER, dir.path())
        .args(["up", "--workers", "2", "--listen", &format!("127.0.0.1:{port}")])
        .env("COREIIX_REQUEST_TIMEOUT", "forever")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("\"forever\" from the environment variable COREIIX_REQUEST_TIMEOUT"), "{err}");
    assert!(err.contains("configuration error"), "{err}");

    // A worker executable that cannot run is a configuration error too, not a restart loop.
    let not_executable = dir.path().join("coreiix");
    std::fs::write(&not_executable, "").unwrap();
    let out = command(PLANNER, dir.path())
        .args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .env("COREIIX_WORKER_BIN", &not_executable)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("COREIIX_WORKER_BIN") && err.contains("executable"), "{err}");

    // A plan error stops it before anything starts.
    let out = command(PLANNER, dir.path()).args(["up", "--workers", "zero"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"zero\" from --workers on the command line"));
}

#[test]
fn up_reuses_an_inherited_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, addr) = support::loopback_listener();
    let mut cmd = command(PLANNER, dir.path());
    cmd.args(["up", "--workers", "2"]).stdout(Stdio::null());
    support::pass_fd_3(&mut cmd, std::os::fd::AsRawFd::as_raw_fd(&listener));
    let mut up = Proc::spawn(&mut cmd);
    drop(listener);
    support::wait_http_ok(addr, "/healthz", 20 * SECOND);
    up.signal(libc::SIGTERM);
    assert_eq!(up.wait_for(20 * SECOND).code(), Some(0));
}

/// Fifteen rolling restarts in a row under load: a draining worker must answer the connections
/// it accepted just before it stopped accepting, so not one request may fail.
#[test]
fn repeated_rolling_restarts_fail_no_request() {
    let mut up = up(&["--workers", "2"], &[]);
    let first = wait_for_workers(&up, 2);
    let load = Load::start(up.addr, 8, 60 * SECOND);
    for _ in 0..15 {
        up.proc.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(400));
    }
    let report = load.finish();
    let last = wait_for_workers(&up, 2);
    assert!(last.iter().all(|p| !first.contains(p)), "workers were not replaced: {first:?} {last:?}");
    assert!(report.by_pid.len() > 4, "requests were answered by only {:?}", report.by_pid.keys());
    println!(
        "15 rolling restarts under load: {} ok, {} refused, {} failed",
        report.ok, report.refused, report.failed
    );
    assert_eq!((report.refused, report.failed), (0, 0), "{report:?}");
    up.proc.signal(libc::SIGTERM);
    assert_eq!(up.proc.wait_for(20 * SECOND).code(), Some(0));
}

/// A configuration broken after start: SIGHUP's replacement worker exits 2, the roll stops and
/// the old workers keep serving; once fixed, the next SIGHUP rolls. Signals that would add
/// work while draining are ignored, so `up` still exits.
#[test]
fn a_broken_reload_keeps_the_old_workers_serving() {
    let (up, env_file) = up_with_env_file("DEPLOYMENT_PROFILE=small\n");
    let before = wait_for_workers(&up, 2);

    std::fs::write(&env_file, "DEPLOYMENT_PROFILE=small\nCOREIIX_DRAIN_TIMEOUT=soon\n").unwrap();
    up.proc.signal(libc::SIGHUP);
    std::thread::sleep(2 * SECOND);
    let still = wait_for_workers(&up, 2);
    assert_eq!(still, before, "the old workers must keep serving");
    assert!(answering_pids(up.addr, 10).iter().all(|p| before.contains(&(*p as i32))));

    std::fs::write(&env_file, "DEPLOYMENT_PROFILE=small\n").unwrap();
    up.proc.signal(libc::SIGHUP);
    wait_until("both workers replaced", 20 * SECOND, || {
        let now = workers(up.proc.pid());
        now.len() == 2 && now.iter().all(|p| !before.contains(p))
    });

    let mut proc = up.proc;
    proc.signal(libc::SIGTERM);
    proc.signal(libc::SIGTTIN);
    assert_eq!(proc.wait_for(20 * SECOND).code(), Some(0));
}

/// Under systemd (`NOTIFY_SOCKET` set for the launcher itself), `up` is a `Type=notify`
/// service: READY=1 once every worker is ready, a STATUS= line, STOPPING=1 when draining.
#[test]
fn up_reports_to_its_own_service_manager() {
    let dir = tempfile::tempdir().unwrap();
    let notify = support::NotifySocket::bind(dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{}", support::free_port()).parse().unwrap();
    let mut cmd = command(PLANNER, dir.path());
    cmd.args(["up", "--workers", "3", "--listen", &addr.to_string()])
        .env("NOTIFY_SOCKET", &notify.path)
        .stdout(Stdio::null());
    let mut proc = Proc::spawn(&mut cmd);
    let ready = notify.wait_for("READY=1", 20 * SECOND);
    assert!(ready.contains("STATUS=3/3 workers ready"), "{ready}");
    // Ready means ready: every worker answers by now.
    assert_eq!(get(addr, "/healthz", 5 * SECOND).unwrap().status, 200);
    proc.signal(libc::SIGTERM);
    notify.wait_for("STOPPING=1", 10 * SECOND);
    assert_eq!(proc.wait_for(20 * SECOND).code(), Some(0));
}

/// The listening socket's flags belong to every process that holds it: no worker may make it
/// blocking, whichever way it accepts, or a worker accepting on its runtime's epoll would
/// stall. Rolls from one accept mode to the other under load keep it non-blocking.
#[test]
fn accept_modes_leave_the_shared_socket_non_blocking() {
    let (up, env_file) = up_with_env_file("DEPLOYMENT_PROFILE=small\nCOREIIX_ACCEPT=thread\n");
    let non_blocking = |pid: i32| {
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/3")).unwrap();
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim().to_owned();
        u32::from_str_radix(&flags, 8).unwrap() & libc::O_NONBLOCK as u32 != 0
    };
    let load = Load::start(up.addr, 4, 60 * SECOND);
    for mode in ["runtime", "thread"] {
        let before = wait_for_workers(&up, 2);
        std::fs::write(&env_file, format!("DEPLOYMENT_PROFILE=small\nCOREIIX_ACCEPT={mode}\n")).unwrap();
        up.proc.signal(libc::SIGHUP);
        wait_until("both workers replaced", 20 * SECOND, || {
            let now = workers(up.proc.pid());
            now.len() == 2 && now.iter().all(|p| !before.contains(p))
        });
        for pid in workers(up.proc.pid()) {
            assert!(non_blocking(pid), "worker {pid} sees a blocking socket after the roll to {mode}");
        }
    }
    let report = load.finish();
    assert_eq!((report.refused, report.failed), (0, 0), "{report:?}");
    let mut proc = up.proc;
    proc.signal(libc::SIGTERM);
    assert_eq!(proc.wait_for(20 * SECOND).code(), Some(0));
}

/// Once the pool serves, a replacement that cannot start (here: the worker binary lost its
/// execute bit during an upgrade) is retried with backoff; it never takes the pool down.
#[test]
fn a_serving_pool_survives_a_worker_that_cannot_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("coreiix");
    std::fs::copy(support::WORKER, &bin).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", support::free_port()).parse().unwrap();
    let mut cmd = command(PLANNER, dir.path());
    cmd.args(["up", "--workers", "2", "--listen", &addr.to_string()]).env("COREIIX_WORKER_BIN", &bin);
    let proc = Proc::spawn(cmd.stdout(Stdio::null()));
    support::wait_http_ok(addr, "/healthz", 20 * SECOND);
    let mut up = Up { proc, addr, _dir: dir };
    let before = wait_for_workers(&up, 2);

    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o644)).unwrap();
    // SAFETY: kill(2) of a worker this test's launcher started.
    unsafe { libc::kill(before[0], libc::SIGKILL) };
    std::thread::sleep(SECOND);
    assert!(up.proc.child.try_wait().unwrap().is_none(), "the launcher must keep running");
    assert_eq!(get(up.addr, "/healthz", 5 * SECOND).unwrap().status, 200);

    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    wait_for_workers(&up, 2);
    up.proc.signal(libc::SIGTERM);
    assert_eq!(up.proc.wait_for(20 * SECOND).code(), Some(0));
}
