//! The `dev` profile's reload loop, for real: `coreiix-plan up` in a copy of this checkout,
//! watchexec watching it, cargo rebuilding it. A source edit is served after the rebuild, a
//! broken edit keeps the old worker serving, and no connection is refused meanwhile.
//! Needs cargo and watchexec on PATH (CI installs watchexec-cli); fails, never skips, without.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Load, PLANNER, Proc, command, get, wait_until};

const SECOND: Duration = Duration::from_secs(1);

fn copy_checkout(to: &Path) {
    let root = support::repo_root();
    for file in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(root.join(file), to.join(file)).unwrap();
    }
    let status = Command::new("cp").arg("-r").arg(root.join("src")).arg(to).status().unwrap();
    assert!(status.success());
}

fn name_served(addr: std::net::SocketAddr) -> Option<String> {
    let body = get(addr, "/", 5 * SECOND).ok()?.body;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["name"].as_str().map(str::to_owned)
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn a_source_edit_is_served_after_a_rebuild_without_refusing_connections() {
    let watchexec = Command::new("watchexec").arg("--version").output();
    assert!(
        watchexec.is_ok_and(|o| o.status.success()),
        "watchexec is not on PATH: install it with `cargo install --locked watchexec-cli`"
    );
    let dir = tempfile::tempdir().unwrap();
    copy_checkout(dir.path());
    // A target directory kept between runs, so only the first run builds the dependencies.
    let target = support::repo_root().join("target").join("dev-reload-test");
    let log = dir.path().join("up.log");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port()).parse().unwrap();
    let mut cmd = command(PLANNER, dir.path());
    cmd.args(["up", "--listen", &addr.to_string()])
        .env("CARGO_TARGET_DIR", &target)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut up = Proc::spawn(&mut cmd);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // The first build can take minutes on a fresh machine; the socket is open all along.
    wait_until("the first build to serve", 600 * SECOND, || name_served(addr).as_deref() == Some("coreiix"));
    assert!(log_text().contains("auto-reload on"), "{}", log_text());

    let load = Load::start(addr, 4, 600 * SECOND);
    let lib = dir.path().join("src/lib.rs");
    edit(&lib, "SERVICE_NAME: &str = \"coreiix\"", "SERVICE_NAME: &str = \"coreiix-edited\"");
    wait_until("the edited worker to serve", 300 * SECOND, || {
        name_served(addr).as_deref() == Some("coreiix-edited")
    });

    // A change that does not compile: the build fails and the running worker keeps serving.
    edit(&lib, "pub const VERSION", "pub const VERSION: this does not compile;\npub const VERSION_OLD");
    wait_until("the failed build to be reported", 300 * SECOND, || log_text().contains("cargo build failed"));
    assert_eq!(name_served(addr).as_deref(), Some("coreiix-edited"));

    let report = load.finish();
    println!("dev reload under load: {} ok, {} refused, {} failed", report.ok, report.refused, report.failed);
    assert_eq!((report.refused, report.failed), (0, 0), "{report:?}\n{}", log_text());
    assert!(report.ok > 0);
    up.signal(libc::SIGTERM);
    assert_eq!(up.wait_for(30 * SECOND).code(), Some(0), "{}", log_text());
}
