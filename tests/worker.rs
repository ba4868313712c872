//! The `coreiix` worker, run for real as systemd runs it: a listening socket passed as fd 3
//! with `LISTEN_FDS=1`, and a real Unix datagram socket as `NOTIFY_SOCKET`.

mod support;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::process::Stdio;
use std::time::Duration;

use support::{NotifySocket, Proc, WORKER, command, get, loopback_listener, pass_fd_3};

const SECOND: Duration = Duration::from_secs(1);

/// A worker started as systemd starts one: a loopback listening socket as fd 3 with
/// `LISTEN_FDS=1`, and a notify socket; returned once it has sent READY=1.
struct Started {
    worker: Proc,
    addr: std::net::SocketAddr,
    notify: NotifySocket,
    _dir: tempfile::TempDir,
}

fn start(env: &[(&str, &str)]) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let (listener, addr) = loopback_listener();
    let notify = NotifySocket::bind(dir.path());
    let mut cmd = command(WORKER, dir.path());
    cmd.env("NOTIFY_SOCKET", &notify.path).envs(env.iter().copied());
    pass_fd_3(&mut cmd, listener.as_raw_fd());
    let worker = Proc::spawn(&mut cmd);
    drop(listener); // the worker holds its own copy, as under systemd
    notify.wait_for("READY=1", 10 * SECOND);
    Started { worker, addr, notify, _dir: dir }
}

#[test]
fn answers_http_on_an_inherited_tcp_socket_and_talks_to_systemd() {
    let Started { mut worker, addr, notify, _dir } =
        start(&[("WATCHDOG_USEC", "400000"), ("DEPLOYMENT_PROFILE", "small"), ("COREIIX_INSTANCE", "7")]);
    let ready = notify.wait_for("READY=1", SECOND);
    assert!(ready.contains("STATUS=Serving: 0 requests"), "{ready}");

    let health = get(addr, "/healthz", SECOND).unwrap();
    assert_eq!((health.status, health.body.as_str()), (200, r#"{"status":"ok"}"#));
    let about = get(addr, "/", SECOND).unwrap();
    let v: serde_json::Value = serde_json::from_str(&about.body).unwrap();
    assert_eq!((v["name"].as_str(), v["profile"].as_str()), (Some("coreiix"), Some("small")));
    assert_eq!((v["instance"].as_u64(), v["pid"].as_u64()), (Some(7), Some(worker.pid() as u64)));
    let missing = get(addr, "/no/such/route", SECOND).unwrap();
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("\"error\":\"not found\""), "{}", missing.body);
    let metrics = get(addr, "/metrics", SECOND).unwrap();
    assert!(
        metrics.body.contains("coreiix_http_requests_total{route=\"/healthz\",status=\"200\"} 1"),
        "{}",
        metrics.body
    );
    assert!(metrics.body.contains("process_resident_memory_bytes"), "{}", metrics.body);

    // A live STATUS= line follows the traffic, and the watchdog is pinged at half its interval.
    notify.wait_for("STATUS=Serving: 4 requests", 5 * SECOND);
    notify.wait_for("WATCHDOG=1", 5 * SECOND);

    worker.signal(libc::SIGTERM);
    notify.wait_for("STOPPING=1", 5 * SECOND);
    assert!(worker.wait_for(10 * SECOND).success());
}

#[test]
fn sigterm_lets_a_slow_in_flight_request_finish_then_exits_0() {
    let Started { mut worker, addr, notify, _dir } = start(&[("COREIIX_DIAGNOSTICS", "true")]);

    let slow = std::thread::spawn(move || get(addr, "/debug/delay?ms=1500", 10 * SECOND));
    support::wait_until("the slow request to be in flight", 5 * SECOND, || {
        get(addr, "/metrics", SECOND).is_ok_and(|m| m.body.contains("coreiix_http_requests_in_flight 2"))
    });
    worker.signal(libc::SIGTERM);
    notify.wait_for("STOPPING=1", 5 * SECOND);
    let answer = slow.join().unwrap().expect("the in-flight request completes");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.contains("\"slept_ms\":1500"), "{}", answer.body);
    let status = worker.wait_for(10 * SECOND);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn serves_an_inherited_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coreiix.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let notify = NotifySocket::bind(dir.path());
    let mut cmd = command(WORKER, dir.path());
    cmd.env("NOTIFY_SOCKET", &notify.path);
    pass_fd_3(&mut cmd, listener.as_raw_fd());
    let mut worker = Proc::spawn(&mut cmd);
    notify.wait_for("READY=1", 10 * SECOND);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(5 * SECOND)).unwrap();

    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    assert_eq!(support::parse_response(&raw).unwrap().status, 200);
    worker.signal(libc::SIGINT);
    assert!(worker.wait_for(10 * SECOND).success());
}

#[test]
fn binds_coreiix_listen_without_an_inherited_socket() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut worker = Proc::spawn(command(WORKER, dir.path()).env("COREIIX_LISTEN", addr.to_string()));
    support::wait_http_ok(addr, "/readyz", 10 * SECOND);
    worker.signal(libc::SIGTERM);
    assert!(worker.wait_for(10 * SECOND).success());
}

#[test]
fn a_passed_fd_that_is_not_a_listening_stream_socket_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let datagram = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut cmd = command(WORKER, dir.path());
    pass_fd_3(&mut cmd, datagram.as_raw_fd());
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("fd 3 is not a listening TCP or Unix stream socket (it is not a stream socket)"),
        "{err}"
    );

    // A stream socket that was never put into listening state is refused as well.
    let idle = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let mut cmd = command(WORKER, dir.path());
    pass_fd_3(&mut cmd, idle.as_raw_fd());
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not listening"));
}

#[test]
fn configuration_errors_exit_2_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value, needle) in [
        ("COREIIX_DRAIN_TIMEOUT", "soon", "from the environment variable COREIIX_DRAIN_TIMEOUT"),
        ("COREIIX_LISTEN", "localhost", "unix:/absolute/path"),
        ("COREIIX_LOG", "info,[[[", "tracing filter"),
        ("WORKERS", "0", "a whole number from 1 to 1024"),
        ("COREIIX_MAX_HEADER_BYTES", "100", "8192 to 1048576"),
    ] {
        let out = command(WORKER, dir.path()).env(key, value).stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}={value}: {err}");
        assert!(err.contains(needle) && err.starts_with("coreiix: error: "), "{key}={value}: {err}");
    }
}

#[test]
fn oversized_headers_are_refused_with_431() {
    let Started { addr, worker: _worker, .. } = start(&[("COREIIX_MAX_HEADER_BYTES", "8192")]);

    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(5 * SECOND)).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000)).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert_eq!(support::parse_response(&raw).unwrap().status, 431);
}

/// A connection accepted just before SIGTERM, whose request is still on its way, is answered;
/// an idle keep-alive connection is closed.
#[test]
fn draining_answers_a_fresh_connection_and_closes_idle_keep_alive() {
    let Started { mut worker, addr, notify, _dir } = start(&[]);

    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(5 * SECOND)).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    assert!(idle.read(&mut buf).unwrap() > 0);
    let mut fresh = std::net::TcpStream::connect(addr).unwrap();
    fresh.set_read_timeout(Some(5 * SECOND)).unwrap();
    std::thread::sleep(Duration::from_millis(200)); // accepted by the worker, nothing sent yet

    worker.signal(libc::SIGTERM);
    notify.wait_for("STOPPING=1", 5 * SECOND);
    assert_eq!(idle.read(&mut buf).unwrap(), 0, "the idle keep-alive connection is closed");
    fresh.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    fresh.read_to_end(&mut raw).unwrap();
    let answer = support::parse_response(&raw).unwrap();
    assert_eq!(answer.status, 200);
    // read_to_end returned: the worker closed the connection after answering.
    assert_eq!(worker.wait_for(10 * SECOND).code(), Some(0));
}

/// The header timeout also closes idle keep-alive connections and silent new ones.
#[test]
fn idle_connections_are_closed_after_the_header_timeout() {
    let Started { addr, worker: _worker, .. } = start(&[("COREIIX_HEADER_TIMEOUT", "1")]);
    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    idle.set_read_timeout(Some(10 * SECOND)).unwrap();
    assert!(idle.read(&mut buf).unwrap() > 0);
    let silent = std::net::TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(10 * SECOND)).unwrap();
    // Both reads would time out (an error) after 10 s if the worker kept the connections.
    assert_eq!(idle.read(&mut buf).expect("closed, not timed out"), 0);
    assert_eq!((&silent).read(&mut buf).expect("closed, not timed out"), 0);
}
