#!/usr/bin/env python3
"""Coreiix benchmark: coreiix vs a FastAPI/gunicorn peer vs an nginx ceiling.

Started by bench/run (which installs wrk, nginx, hyperfine and the peer's
virtualenv). Standard library only. Every server it starts listens on
127.0.0.1 on a port picked here, runs in its own session and is stopped by
PID (process group = that PID) when its turn ends or the script exits.
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MIB = 1024 * 1024
HEALTHZ_BODY = {"status": "ok"}
ROOT_KEYS = {"name", "version", "profile", "instance", "pid", "uptime_seconds", "workers", "threads"}
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Processes this script started and has not yet reaped: pid -> description.
STARTED = {}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# processes


def spawn(argv, env=None, cwd=None, logfile=None, stdin=subprocess.DEVNULL):
    """Start argv in a new session so its whole tree can be signalled by its pid."""
    out = open(logfile, "ab") if logfile else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=stdin, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if logfile:
            out.close()
    STARTED[proc.pid] = (proc, " ".join(map(str, argv[:3])))
    return proc


def stat_fields(pid):
    """The fields of /proc/PID/stat after the command name, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # comm may contain spaces or parentheses: split after the last ')'.
    return stat[stat.rfind(")") + 2:].split()


def start_time(pid):
    """When the process started (clock ticks since boot), or None if it is gone."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def proc_children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(entry)
            if fields and int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def proc_tree(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(proc_children(p))
    return out


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        fields = stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK_TCK


def cpu_busy_seconds():
    """Busy CPU time of the whole machine (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: everything but idle and iowait.
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / CLK_TCK


def children_cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_proc(proc, sig=signal.SIGTERM, grace=15.0):
    """Stop a process we started plus the descendants it had, all by pid."""
    if proc.pid not in STARTED:
        return
    tree = proc_tree(proc.pid) if proc.poll() is None else [proc.pid]
    # A pid can be reused once its process is gone: remember each one's start time and kill
    # only a process that still has it.
    started = {pid: start_time(pid) for pid in tree}
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"pid {proc.pid} ignored {sig.name} for {grace}s; killing its group")
    # Its process group is the session we created for it (pgid == its pid).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in tree[1:]:  # descendants that left the group (setsid) or were orphaned
        if pid_alive(pid) and started[pid] is not None and start_time(pid) == started[pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    STARTED.pop(proc.pid, None)


def cleanup_all():
    for pid in list(STARTED):
        proc, desc = STARTED[pid]
        log(f"cleanup: stopping pid {pid} ({desc})")
        stop_proc(proc, grace=5.0)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cmd(argv, timeout=60, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


# --------------------------------------------------------------------------
# HTTP client side (also run inside a systemd box via `bench.py _client`)


def http_get(port, path, timeout=5.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        # A new connection each time: with a shared listening socket that is
        # what spreads requests (and /metrics scrapes) across the workers.
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_first_200(port, t0, limit_s, alive=None):
    """Seconds from t0 to the first 200 on /healthz, polling in a tight bounded loop."""
    deadline = t0 + limit_s
    while True:
        now = time.perf_counter()
        if now >= deadline:
            return None
        if alive is not None and not alive():
            raise RuntimeError("server exited before answering")
        try:
            # Long per-try timeout: a bound socket with no worker yet queues the
            # connection, and the first worker up answers it.
            status, _ = http_get(port, "/healthz", timeout=min(deadline - now, 30.0))
            if status == 200:
                return time.perf_counter() - t0
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.001)


LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """-> (pid or None, requests served excluding /metrics scrapes)."""
    pid, served = None, 0.0
    for line in text.splitlines():
        if line.startswith("coreiix_worker_info{"):
            labels = dict(LABEL_RE.findall(line[:line.rfind("}")]))
            pid = labels.get("pid")
        elif line.startswith("coreiix_http_requests_total{"):
            labels = dict(LABEL_RE.findall(line[:line.rfind("}")]))
            if labels.get("route") != "/metrics":
                served += float(line.rsplit(None, 1)[1])
    return pid, served


def scrape_workers(port, want, max_tries, time_limit=15.0, concurrency=8):
    """Scrape /metrics on new connections until `want` distinct pids were seen (bounded).

    Concurrent scrapers keep several workers busy at once; one at a time, an idle pool
    tends to hand every connection to the same worker (the first one woken). /metrics
    requests are left out of the counts, so scraping never changes what is measured.
    """
    seen, state = {}, {"tries": 0}
    lock = threading.Lock()
    t_end = time.monotonic() + time_limit

    def scraper():
        while time.monotonic() < t_end:
            with lock:
                if len(seen) >= want or state["tries"] >= max_tries:
                    return
                state["tries"] += 1
            try:
                status, body = http_get(port, "/metrics", timeout=5.0)
            except (OSError, http.client.HTTPException):
                continue
            if status != 200:
                continue
            pid, served = parse_metrics(body.decode("utf-8", "replace"))
            if pid is not None:
                with lock:
                    seen[pid] = served

    threads = [threading.Thread(target=scraper, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(time_limit + 10)
    return {"counts": dict(seen), "tries": state["tries"]}


def client_main(argv):
    """Client operations run where the server's loopback is (e.g. inside a systemd box)."""
    p = argparse.ArgumentParser(prog="bench.py _client")
    p.add_argument("op", choices=["start-wait", "scrape", "get"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--want", type=int, default=1)
    p.add_argument("--tries", type=int, default=100)
    p.add_argument("--limit", type=float, default=60.0)
    p.add_argument("--path", default="/")
    # Everything after "--" is the command to time (argparse mixes up a trailing nargs="*").
    cmd = argv[argv.index("--") + 1:] if "--" in argv else []
    a = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    a.cmd = cmd
    if a.op == "start-wait":
        t0 = time.perf_counter()
        r = subprocess.run(a.cmd)
        first = wait_first_200(a.port, t0, a.limit) if r.returncode == 0 else None
        print(json.dumps({"rc": r.returncode, "first_200_s": first}))
    elif a.op == "scrape":
        print(json.dumps(scrape_workers(a.port, a.want, a.tries)))
    else:
        status, body = http_get(a.port, a.path)
        print(json.dumps({"status": status, "body": body.decode("utf-8", "replace")}))


# --------------------------------------------------------------------------
# wrk

UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    return float(m.group(1)) * UNIT_S[m.group(2)] * 1e3 if m else None


def parse_wrk(out):
    res = {"rps": None, "p50_ms": None, "p99_ms": None, "requests": None,
           "socket_errors": 0, "non2xx": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    if m:
        res["requests"] = int(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)\s*$", out, re.M)
        if m:
            res[key] = to_ms(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["socket_errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["non2xx"] = int(m.group(1))
    res["errors"] = res["socket_errors"] + res["non2xx"]
    return res


def wrk_argv(cfg, port, path, duration):
    return ["wrk", f"-t{cfg.wrk_threads}", f"-c{cfg.connections}", f"-d{duration}s",
            "--timeout", "2s", "--latency", f"http://127.0.0.1:{port}{path}"]


def run_wrk(cfg, port, path, duration, prefix=()):
    argv = list(prefix) + wrk_argv(cfg, port, path, duration)
    try:
        r = run_cmd(argv, timeout=duration + 30)
    except subprocess.TimeoutExpired:
        return {"rps": None, "errors": None, "error": "wrk timed out"}
    res = parse_wrk(r.stdout)
    if r.returncode != 0 or res["rps"] is None:
        res["error"] = (r.stderr or r.stdout).strip()[-300:]
    return res


# --------------------------------------------------------------------------
# contenders


def jain(values):
    if not values:
        return None
    s, sq = sum(values), sum(v * v for v in values)
    return (s * s) / (len(values) * sq) if sq > 0 else None


class Local:
    """A contender whose process tree runs in our namespaces."""
    kind = "local"
    fairness = False

    def __init__(self, cfg, name, workers):
        self.cfg, self.name, self.workers = cfg, name, workers
        self.proc = None
        self.skip_reason = None

    def argv_env(self, port, tmp):
        raise NotImplementedError

    def start(self, port):
        tmp = tempfile.mkdtemp(prefix=f"{self.slug()}-", dir=self.cfg.tmp)
        argv, env, cwd = self.argv_env(port, tmp)
        self.logfile = os.path.join(tmp, "server.log")
        t0 = time.perf_counter()
        self.proc = spawn(argv, env=env, cwd=cwd, logfile=self.logfile)
        return wait_first_200(port, t0, self.cfg.start_limit,
                              alive=lambda: self.proc.poll() is None)

    def slug(self):
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")

    def worker_pids(self):
        return proc_children(self.proc.pid)

    def tree(self):
        return proc_tree(self.proc.pid)

    def stop(self):
        if self.proc is not None:
            stop_proc(self.proc)
            self.proc = None

    def log_tail(self):
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()[-800:]
        except (OSError, AttributeError):
            return ""

    # Client-side hooks, overridden for contenders in another network namespace.
    def wrk(self, port, path, duration):
        return run_wrk(self.cfg, port, path, duration)

    def get(self, port, path):
        status, body = http_get(port, path)
        return status, body.decode("utf-8", "replace")

    def scrape(self, port):
        return scrape_workers(port, self.workers, max_tries=max(100, 80 * self.workers))


class Nginx(Local):
    def argv_env(self, port, tmp):
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(tmp, d), exist_ok=True)
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""# bench/run ceiling: one worker, fixed body, nothing logged per request.
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    # Unbounded keep-alive like hyper/uvicorn, so wrk never has to reconnect.
    keepalive_requests 100000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        default_type application/json;
        location / {{ return 200 '{{"status":"ok"}}'; }}
    }}
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        # -e: keep nginx away from the default /var/log/nginx/error.log at startup.
        return [nginx, "-p", tmp, "-c", conf, "-e", f"{tmp}/error.log"], dict(os.environ), tmp


class CoreiixUp(Local):
    fairness = True

    def __init__(self, cfg, name, workers, threads=None, extra_env=None):
        super().__init__(cfg, name, workers)
        self.threads = threads
        self.extra_env = extra_env or {}

    def argv_env(self, port, tmp):
        env = dict(os.environ)
        env.update(self.cfg.coreiix_env)
        if self.threads is not None:
            env["COREIIX_THREADS"] = str(self.threads)
        env.update(self.extra_env)
        argv = [self.cfg.plan_bin, "up", "--workers", str(self.workers),
                "--listen", f"127.0.0.1:{port}"]
        if self.cfg.profile:
            argv[2:2] = ["--profile", self.cfg.profile]
        # cwd = a scratch dir, so no ./.env leaks into the run.
        return argv, env, tmp


class CoreiixReuseport(Local):
    """coreiix workers each with their own SO_REUSEPORT socket (an alternative, not shipped)."""
    fairness = True

    def argv_env(self, port, tmp):
        env = dict(os.environ)
        env.update(self.cfg.coreiix_env)
        env["DEPLOYMENT_PROFILE"] = self.cfg.profile or "small"
        worker = os.path.join(os.path.dirname(self.cfg.plan_bin), "coreiix")
        launcher = os.path.join(self.cfg.bench_dir, "reuseport_launcher.py")
        return [sys.executable, launcher, str(self.workers), str(port), worker], env, tmp


class Gunicorn(Local):
    def argv_env(self, port, tmp):
        env = dict(os.environ)
        env["WORKERS"] = str(self.workers)
        env["DEPLOYMENT_PROFILE"] = self.cfg.profile
        venv = self.cfg.venv
        peer = os.path.join(self.cfg.bench_dir, "peer")
        argv = [os.path.join(venv, "bin", "gunicorn"), "-c", os.path.join(peer, "gunicorn_conf.py"),
                "-w", str(self.workers), "-b", f"127.0.0.1:{port}", "--chdir", peer, "app:app"]
        return argv, env, peer


class SystemdPool(Local):
    """coreiix.target in a systemd box (tests/support/systemd-box.sh), socket-activated."""
    kind = "systemd"
    fairness = True

    def __init__(self, cfg, name, workers, box):
        super().__init__(cfg, name, workers)
        self.box = box

    def start(self, port):
        b = self.box
        env_lines = [f"WORKERS={self.workers}"]
        if self.cfg.profile:
            env_lines.insert(0, f"DEPLOYMENT_PROFILE={self.cfg.profile}")
        env_lines += [f"{k}={v}" for k, v in self.cfg.coreiix_env.items() if k != "COREIIX_ENV_FILE"]
        b.write_file("/etc/coreiix/coreiix.env", "\n".join(env_lines) + "\n")
        b.write_file("/etc/systemd/system/coreiix.socket.d/50-bench.conf",
                     f"# bench/run: loopback port chosen per run\n[Socket]\nListenStream=\n"
                     f"ListenStream=127.0.0.1:{port}\n")
        # The worker reads the env file too; this keeps access logs off even if it did not.
        b.write_file("/etc/systemd/system/coreiix@.service.d/50-bench.conf",
                     "[Service]\n" + "".join(f"Environment={k}={v}\n" for k, v in
                                             self.cfg.coreiix_env.items() if k != "COREIIX_ENV_FILE"))
        b.exec_ok(["systemctl", "daemon-reload"])
        # Timed from just before `systemctl start` (run inside the box) to the first 200.
        r = b.client(["start-wait", "--port", str(port), "--limit", str(self.cfg.start_limit),
                      "--"] + b.in_box(["systemctl", "start", "--no-block", "coreiix.target"]))
        if r.get("rc") != 0:
            raise RuntimeError(f"systemctl start coreiix.target failed: {b.status_text()}")
        return r.get("first_200_s")

    def main_pids(self):
        out = self.box.exec_ok(["sh", "-c", f"for i in $(seq 1 {self.workers}); do "
                                "systemctl show -p MainPID --value coreiix@$i.service; done"])
        return [int(x) for x in out.split() if x.isdigit() and int(x) > 0]

    def worker_rss_kib(self):
        pids = self.main_pids()
        out = self.box.exec_ok(["sh", "-c", " ".join(
            f"grep VmRSS /proc/{p}/status;" for p in pids) or "true"])
        return pids, [int(line.split()[1]) for line in out.splitlines() if line.startswith("VmRSS:")]

    def stop(self):
        self.box.exec(["systemctl", "stop", "coreiix.target", "coreiix.socket", "coreiix@*.service"],
                      timeout=60)
        self.box.exec(["systemctl", "reset-failed"], timeout=30)

    def log_tail(self):
        return self.box.status_text()

    def wrk(self, port, path, duration):
        return run_wrk(self.cfg, port, path, duration, prefix=self.box.client_prefix())

    def get(self, port, path):
        r = self.box.client(["get", "--port", str(port), "--path", path])
        return r["status"], r["body"]

    def scrape(self, port):
        return self.box.client(["scrape", "--port", str(port), "--want", str(self.workers),
                                "--tries", str(max(100, 80 * self.workers))])


class Box:
    """Driver for tests/support/systemd-box.sh: `start` prints the box PID,
    `exec PID cmd...` runs a command inside it, `stop PID` ends it."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.script = os.path.join(cfg.repo, "tests", "support", "systemd-box.sh")
        self.installer = os.path.join(cfg.repo, "systemd", "install.sh")
        self.pid = None
        self.same_netns = True
        self.note = None

    def unavailable(self):
        if self.cfg.skip_systemd:
            return "skipped (--skip-systemd)"
        if os.geteuid() != 0:
            return "skipped: not root"
        for path in (self.script, self.installer):
            if not os.path.exists(path):
                return f"skipped: {os.path.relpath(path, self.cfg.repo)} does not exist yet"
        if not (os.path.exists(self.cfg.plan_bin) and os.path.exists(self.cfg.worker_bin)):
            return "skipped: coreiix binaries not built"
        return None

    def exec(self, argv, timeout=120, stdin=None):
        return subprocess.run(["bash", self.script, "exec", str(self.pid)] + list(argv),
                              input=stdin, capture_output=True, text=True, timeout=timeout)

    def exec_ok(self, argv, timeout=120, stdin=None):
        r = self.exec(argv, timeout=timeout, stdin=stdin)
        if r.returncode != 0:
            raise RuntimeError(f"in box: {' '.join(argv)} -> {r.returncode}: "
                               f"{(r.stderr or r.stdout).strip()[-400:]}")
        return r.stdout

    def write_file(self, path, text):
        self.exec_ok(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"', "sh", path], stdin=text)

    def status_text(self):
        r = self.exec(["systemctl", "--no-pager", "--full", "status", "coreiix.target",
                       "coreiix.socket", "coreiix@1.service"], timeout=30)
        return (r.stdout + r.stderr)[-1500:]

    def in_box(self, argv):
        """argv to run inside the box from wherever client() runs."""
        return list(argv) if not self.same_netns else ["bash", self.script, "exec", str(self.pid)] + list(argv)

    def client_prefix(self):
        # Shared network namespace: the host's loopback is the box's loopback.
        return () if self.same_netns else ("bash", self.script, "exec", str(self.pid))

    def client(self, args):
        argv = [sys.executable, os.path.abspath(__file__), "_client"] + list(args)
        if self.same_netns:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        else:
            r = self.exec(["python3", os.path.abspath(__file__), "_client"] + list(args))
        try:
            return json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise RuntimeError(f"client {args[0]} failed: {(r.stderr or r.stdout)[-400:]}")

    def setup(self):
        r = run_cmd(["bash", self.script, "start"], timeout=180)
        pids = re.findall(r"^\s*(\d+)\s*$", r.stdout, re.M)
        if r.returncode != 0 or not pids:
            raise RuntimeError(f"systemd-box.sh start failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()[-400:]}")
        self.pid = int(pids[-1])
        try:
            self.same_netns = os.readlink("/proc/self/ns/net") == os.readlink(f"/proc/{self.pid}/ns/net")
        except OSError:
            self.same_netns = True
        # --no-config: the bench writes /etc/coreiix/coreiix.env itself for every pool size.
        args = ["--prefix", "/usr/local", "--no-config"]
        if not os.path.exists(os.path.join(self.cfg.repo, ".env.example")):
            # install.sh wants an example config to ship; a stub keeps the pool measurable.
            self.write_file("/run/coreiix-bench/env.example", "# stub written by bench/run\n")
            args += ["--env-example", "/run/coreiix-bench/env.example"]
            self.note = "repo has no .env.example: installed with a stub (--env-example)"
        self.exec_ok(["bash", self.installer] + args, timeout=300)
        self.exec_ok(["systemctl", "daemon-reload"])

    def teardown(self):
        if self.pid is not None:
            r = run_cmd(["bash", self.script, "stop", str(self.pid)], timeout=120)
            if r.returncode != 0:
                log(f"systemd-box.sh stop {self.pid} failed: {(r.stderr or r.stdout)[-300:]}")
            self.pid = None


# --------------------------------------------------------------------------
# one measurement of one contender


def measure(c, cfg):
    port = free_port()
    rec = {"port": port}
    try:
        first = c.start(port)
        if first is None:
            raise RuntimeError(f"no 200 on /healthz within {cfg.start_limit}s")
        rec["first_200_ms"] = first * 1e3

        status, body = c.get(port, "/healthz")
        rec["healthz_ok"] = status == 200 and json.loads(body) == HEALTHZ_BODY
        if not isinstance(c, Nginx):
            status, body = c.get(port, "/")
            doc = json.loads(body) if status == 200 else {}
            rec["root_ok"] = status == 200 and ROOT_KEYS <= set(doc)
            rec["root_sample"] = doc
        if cfg.warmup > 0:
            c.wrk(port, "/healthz", cfg.warmup)

        before = c.scrape(port) if c.fairness else None
        tree = c.tree() if c.kind == "local" else []
        cpu0, busy0, wrk0, t0 = cpu_seconds(tree), cpu_busy_seconds(), children_cpu_seconds(), time.monotonic()
        for path, key in (("/healthz", "healthz"), ("/", "root")):
            rec[key] = c.wrk(port, path, cfg.duration)
        if tree:
            reqs = sum((rec[k].get("requests") or 0) for k in ("healthz", "root"))
            used = cpu_seconds(c.tree()) - cpu0
            rec["cpu_us_per_req"] = used / reqs * 1e6 if reqs else None
            # CPU that neither this server nor wrk used during the load: other work on the
            # machine (plus unattributed softirq). A disturbance gauge for the run.
            other = (cpu_busy_seconds() - busy0) - used - (children_cpu_seconds() - wrk0)
            rec["other_cpu_pct"] = max(0.0, other) / ((time.monotonic() - t0) * cfg.nproc) * 100
        after = c.scrape(port) if c.fairness else None

        if c.kind == "local":
            pids = c.worker_pids()
            rss = [rss_kib(p) for p in pids]
            rec["root_rss_kib"] = rss_kib(c.proc.pid)
        else:
            pids, rss = c.worker_rss_kib()
        rec["worker_pids"] = pids
        rec["worker_rss_kib"] = rss
        if len(pids) != c.workers:
            rec["note"] = f"found {len(pids)} worker processes, expected {c.workers}"
        rec["rss_per_worker_mib"] = sum(rss) / c.workers / 1024 if rss else None

        if c.fairness:
            rec["fairness"] = fairness(before, after, c.workers)
    except Exception as e:  # one failed contender must not sink the whole run
        rec["error"] = f"{type(e).__name__}: {e}"
        tail = c.log_tail()
        if tail:
            rec["log_tail"] = tail
        log(f"{c.name}: {rec['error']}")
    finally:
        try:
            c.stop()
        except Exception as e:
            rec.setdefault("error", f"stop failed: {e}")
    return rec


def fairness(before, after, n):
    b, a = before["counts"], after["counts"]
    common = sorted(set(a) & set(b))
    deltas = {pid: a[pid] - b[pid] for pid in common}
    out = {"pids_seen_before": len(b), "pids_seen_after": len(a),
           "scrape_tries": before["tries"] + after["tries"], "served": deltas}
    out["complete"] = len(common) == n
    out["jain"] = jain(list(deltas.values())) if len(common) == n else None
    if len(common) != n:
        out["note"] = f"saw {len(common)} of {n} workers in both scrapes"
    return out


# --------------------------------------------------------------------------
# plan timings


def time_command(cfg, argv, runs, env):
    """-> dict in ms: mean, median, min, stddev, runs, tool."""
    hf = shutil.which("hyperfine")
    if hf:
        out = os.path.join(cfg.tmp, "hyperfine.json")
        r = run_cmd([hf, "-N", "--warmup", str(max(3, runs // 20)), "--runs", str(runs),
                     "--style", "none", "--export-json", out, "--", " ".join(argv)],
                    timeout=300, env=env, cwd=cfg.tmp)
        if r.returncode == 0:
            with open(out) as f:
                res = json.load(f)["results"][0]
            return {"tool": "hyperfine", "runs": runs, "mean_ms": res["mean"] * 1e3,
                    "median_ms": res["median"] * 1e3, "min_ms": res["min"] * 1e3,
                    "stddev_ms": (res.get("stddev") or 0) * 1e3}
        log(f"hyperfine failed ({r.stderr.strip()[-200:]}); falling back to a loop")
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run(argv, env=env, cwd=cfg.tmp, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            return {"tool": "loop", "error": f"{' '.join(argv)} exited {r.returncode}"}
    return {"tool": "python loop", "runs": runs, "mean_ms": statistics.mean(times) * 1e3,
            "median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
            "stddev_ms": statistics.pstdev(times) * 1e3}


def plan_timings(cfg):
    env = dict(os.environ)
    env.update(cfg.coreiix_env)
    gen = os.path.join(cfg.tmp, "generator")
    dirs = [os.path.join(gen, d) for d in ("normal", "early", "late")]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    check = run_cmd([cfg.plan_bin, "generate"] + dirs, env=env, cwd=cfg.tmp)
    out = {"plan": time_command(cfg, [cfg.plan_bin, "--profile", "enterprise", "--format", "json"],
                                cfg.plan_runs, env)}
    if check.returncode == 0:
        out["generate"] = time_command(cfg, [cfg.plan_bin, "generate"] + dirs, cfg.plan_runs, env)
        conf = os.path.join(dirs[0], "coreiix.target.d", "50-workers.conf")
        out["generate"]["wrote"] = os.path.exists(conf)
    else:
        out["generate"] = {"error": f"exit {check.returncode}: {(check.stderr or check.stdout).strip()[-200:]}"}
    return out


# --------------------------------------------------------------------------
# machine, build


def first_line(argv):
    try:
        r = run_cmd(argv, timeout=30)
        return ((r.stdout or "") + (r.stderr or "")).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


def git_rev(repo):
    r = run_cmd(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
    return r.stdout.strip() if r.returncode == 0 else "(no commit)"


def machine_info(cfg):
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    py = os.path.join(cfg.venv, "bin", "python")
    pkg = lambda name: first_line([py, "-c", f"import importlib.metadata as m; print(m.version('{name}'))"])
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    mem_kib = None
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count() if not hasattr(os, "sched_getaffinity") else len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(mem_kib / MIB, 1) if mem_kib else None,
        "kernel": platform.release(),
        "loadavg_at_start": [float(x) for x in load],
        "wrk": (first_line(["wrk", "-v"]) or "").split(" Copyright")[0].strip() or None,
        "nginx": (first_line([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]) or "")
        .replace("nginx version: ", "") or None,
        "hyperfine": first_line(["hyperfine", "--version"]) if shutil.which("hyperfine") else None,
        "python_peer": first_line([py, "--version"]),
        "gunicorn": pkg("gunicorn"),
        "uvicorn": pkg("uvicorn"),
        "fastapi": pkg("fastapi"),
        "rustc": first_line(["rustc", "--version"]),
        "git_rev": git_rev(cfg.repo),
        "git_dirty": bool(run_cmd(["git", "-C", cfg.repo, "status", "--porcelain", "--", "src",
                                   "Cargo.toml", "Cargo.lock"]).stdout.strip()),
    }


def build(cfg):
    bins = (cfg.plan_bin, cfg.worker_bin)
    if cfg.no_build:
        state = "not built (--no-build)"
    else:
        log("cargo build --release")
        try:
            r = subprocess.run(["cargo", "build", "--release", "--bins"], cwd=cfg.repo,
                               capture_output=True, text=True, timeout=3600)
            ok = r.returncode == 0
            tail = r.stderr.strip()[-600:]
        except (OSError, subprocess.TimeoutExpired) as e:
            ok, tail = False, str(e)
        state = "built" if ok else "build failed"
        if not ok:
            log(f"cargo build --release failed:\n{tail}")
            cfg.build_error = tail
    have = all(os.path.exists(b) for b in bins)
    if have and state != "built":
        state += "; using existing binaries (may be stale)"
    return have, state


def enterprise_workers(cfg):
    env = dict(os.environ)
    env.update(cfg.coreiix_env)
    try:
        r = run_cmd([cfg.plan_bin, "--profile", "enterprise", "--format", "json"], env=env, cwd=cfg.tmp)
        plan = json.loads(r.stdout)
        return int(plan["workers"]), plan
    except Exception as e:
        n = cfg.nproc * 2 + 1
        log(f"coreiix-plan --profile enterprise failed ({e}); assuming CPUs*2+1 = {n}")
        return n, None


# --------------------------------------------------------------------------
# aggregation, targets, report

METRICS = [
    ("first_200_ms", lambda r: r.get("first_200_ms")),
    ("healthz_rps", lambda r: r.get("healthz", {}).get("rps")),
    ("healthz_p50_ms", lambda r: r.get("healthz", {}).get("p50_ms")),
    ("healthz_p99_ms", lambda r: r.get("healthz", {}).get("p99_ms")),
    ("root_rps", lambda r: r.get("root", {}).get("rps")),
    ("root_p50_ms", lambda r: r.get("root", {}).get("p50_ms")),
    ("root_p99_ms", lambda r: r.get("root", {}).get("p99_ms")),
    ("errors", lambda r: None if "healthz" not in r else
     (r["healthz"].get("errors") or 0) + (r.get("root", {}).get("errors") or 0)),
    ("rss_per_worker_mib", lambda r: r.get("rss_per_worker_mib")),
    ("cpu_us_per_req", lambda r: r.get("cpu_us_per_req")),
    ("jain", lambda r: (r.get("fairness") or {}).get("jain")),
    ("other_cpu_pct", lambda r: r.get("other_cpu_pct")),
]


def summarize(rounds):
    out = {}
    for key, get in METRICS:
        vals = [v for v in (get(r) for r in rounds if "error" not in r) if v is not None]
        if vals:
            out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
                        "n": len(vals)}
    return out


def med(summary, key):
    v = summary.get(key)
    return v["median"] if v else None


def targets(results, cfg, E):
    by = {r["name"]: r for r in results}
    s = lambda name, key: med(by[name]["summary"], key) if name in by and "summary" in by[name] else None
    rows = []

    def row(target, measured, ratio, goal, ok):
        rows.append({"target": target, "measured": measured, "ratio": ratio, "goal": goal,
                     "result": "n/a" if ratio is None else ("PASS" if ok(ratio) else "MISS")})

    ups = [f"coreiix up w{n}" for n in cfg.worker_counts]
    best = max((n for n in ups if s(n, "healthz_rps")), key=lambda n: s(n, "healthz_rps"), default=None)
    ng = s("nginx w1", "healthz_rps")
    r = s(best, "healthz_rps") / ng if best and ng else None
    row("coreiix best req/s >= 0.85 x nginx (1 worker), /healthz",
        f"{best}: {fmt_rps(s(best, 'healthz_rps'))} vs {fmt_rps(ng)}", r, ">= 0.85", lambda x: x >= 0.85)
    for n in cfg.worker_counts:
        for path, key in (("/healthz", "healthz_rps"), ("/", "root_rps")):
            a, b = s(f"coreiix up w{n}", key), s(f"gunicorn w{n}", key)
            row(f"coreiix req/s >= 6 x gunicorn, {n} worker(s), {path}",
                f"{fmt_rps(a)} vs {fmt_rps(b)}", a / b if a and b else None, ">= 6", lambda x: x >= 6)
    a, b = s(best, "healthz_p99_ms"), s("nginx w1", "healthz_p99_ms")
    row("coreiix p99 <= 2 x nginx p99, /healthz",
        f"{best}: {fmt_ms(a)} vs {fmt_ms(b)} ms", a / b if a and b else None, "<= 2", lambda x: x <= 2)
    rss = [(n, s(n, "rss_per_worker_mib")) for n in ups + ["coreiix systemd w%d" % E]]
    rss = [(n, v) for n, v in rss if v]
    if rss:
        n, v = max(rss, key=lambda t: t[1])
        row("RSS per worker <= 10 MiB (worst coreiix contender)", f"{n}: {v:.2f} MiB", v / 10,
            "<= 1 (of 10 MiB)", lambda x: x <= 1)
    else:
        row("RSS per worker <= 10 MiB", "no data", None, "<= 1", None)
    a, b = s(f"coreiix up w{E}", "first_200_ms"), s(f"gunicorn w{E}", "first_200_ms")
    row(f"`up` {E} workers to first 200 <= 1/20 of gunicorn {E}",
        f"{fmt_ms(a)} vs {fmt_ms(b)} ms", a / b if a and b else None, "<= 0.05", lambda x: x <= 0.05)
    for path, key in (("/healthz", "healthz_rps"), ("/", "root_rps")):
        vals = {n: s(n, key) for n in ups if s(n, key)}
        ent = s(f"coreiix up w{E}", key)
        if vals and ent:
            bn = max(vals, key=vals.get)
            row(f"enterprise count ({E}) req/s >= 0.95 x best worker count, {path}",
                f"{fmt_rps(ent)} vs {bn}: {fmt_rps(vals[bn])}", ent / vals[bn], ">= 0.95",
                lambda x: x >= 0.95)
        else:
            row(f"enterprise count ({E}) req/s >= 0.95 x best, {path}", "no data", None, ">= 0.95", None)
    for n in [n for n in cfg.worker_counts if n > 1]:
        j = s(f"coreiix up w{n}", "jain")
        row(f"Jain fairness >= 0.9, up w{n}", fmt(j, ".3f") if j else "no data", j, ">= 0.9",
            lambda x: x >= 0.9)
    if cfg.systemd_ran:
        j = s(f"coreiix systemd w{E}", "jain")
        row(f"Jain fairness >= 0.9, systemd w{E}", fmt(j, ".3f") if j else "no data", j, ">= 0.9",
            lambda x: x >= 0.9)
    if cfg.variants:
        def compare(label, base, other, base_name, other_name, key, fmt_value, goal):
            """One information row: `other` against `base` (higher is better)."""
            b, o = s(base, key), s(other, key)
            rows.append({"target": f"variant {E} workers: {label} (info)",
                         "measured": f"{fmt_value(o)} vs {fmt_value(b)}",
                         "ratio": o / b if b and o else None, "goal": goal,
                         "result": "n/a" if not (b and o) else (other_name if o > b else base_name)})

        jain = lambda v: fmt(v, ".3f") if v else "-"  # noqa: E731
        for path, key in (("/healthz", "healthz_rps"), ("/", "root_rps")):
            compare(f"COREIIX_THREADS=2 vs =1, {path}", f"coreiix up w{E} threads=1",
                    f"coreiix up w{E} threads=2", "threads=1", "threads=2", key, fmt_rps, "keep the faster")
            compare(f"COREIIX_ACCEPT=runtime vs thread, {path}", f"coreiix up w{E}",
                    f"coreiix up w{E} accept=runtime", "thread", "runtime", key, fmt_rps, "keep the faster")
            compare(f"one SO_REUSEPORT socket each vs shared, {path}", f"coreiix up w{E}",
                    f"coreiix reuseport w{E}", "shared", "reuseport", key, fmt_rps, "keep the faster")
        compare("Jain, accept=runtime vs thread", f"coreiix up w{E}", f"coreiix up w{E} accept=runtime",
                "thread", "runtime", "jain", jain, "keep the fairer")
        compare("Jain, one SO_REUSEPORT socket each vs shared", f"coreiix up w{E}", f"coreiix reuseport w{E}",
                "shared", "reuseport", "jain", jain, "keep the fairer")
    return rows


def fmt_rps(v):
    return "-" if v is None else f"{v:,.0f}"


def fmt_ms(v):
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def markdown(report):
    m, cfg = report["machine"], report["config"]
    lines = [f"# Coreiix benchmark — {report['finished']}", ""]
    lines.append(f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, kernel {m['kernel']}; "
                 f"load average at start {m['loadavg_at_start'][0]:.2f} (before the build), at end {m['loadavg_at_end'][0]:.2f} (with this run's own load).  ")
    lines.append(f"Tools: {m['wrk']}; {m['nginx']}; gunicorn {m['gunicorn']}, uvicorn {m['uvicorn']}, "
                 f"fastapi {m['fastapi']} ({m['python_peer']}); {m['rustc']}; hyperfine: {m['hyperfine'] or 'absent'}.  ")
    lines.append(f"coreiix: git {m['git_rev']}{' (+uncommitted src changes)' if m['git_dirty'] else ''}, "
                 f"{report['build']}; profile flag: {cfg['profile'] or '(default)'}; enterprise workers = "
                 f"{report['enterprise_workers']}.  ")
    lines.append(f"Load: `wrk -t{cfg['wrk_threads']} -c{cfg['connections']} -d{cfg['duration']}s --latency` on "
                 f"127.0.0.1, {cfg['rounds']} round(s) alternating contenders, {cfg['warmup']}s warm-up each; "
                 f"medians shown.{' QUICK RUN: not for comparison.' if cfg['quick'] else ''}")
    lines += ["", "| contender | workers | threads | /healthz req/s | p50 ms | p99 ms | / req/s | p50 ms | p99 ms | "
              "errors | RSS/worker MiB | CPU µs/req | first 200 ms | Jain | spread req/s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["contenders"]:
        if "skipped" in r:
            lines.append(f"| {r['name']} | {r['workers']} | | {r['skipped']} |" + " |" * 11)
            continue
        s = r["summary"]
        g = lambda k: med(s, k)
        sp = s.get("healthz_rps")
        spread = f"±{(sp['max'] - sp['min']) / 2 / sp['median'] * 100:.1f}%" if sp and sp["median"] else "-"
        fail = sum(1 for x in r["rounds"] if "error" in x)
        name = r["name"] + (f" ({fail}/{len(r['rounds'])} rounds failed)" if fail else "")
        jain_s = fmt(g("jain"), ".3f") if r.get("fairness") else "n/a"
        # Threads per worker as the server itself reports on / (nginx: its one worker).
        thr = next((x["root_sample"].get("threads") for x in reversed(r["rounds"])
                    if isinstance(x.get("root_sample"), dict)), 1 if r["kind"] == "Nginx" else None)
        lines.append(
            f"| {name} | {r['workers']} | {'-' if thr is None else thr} | {fmt_rps(g('healthz_rps'))} | {fmt_ms(g('healthz_p50_ms'))} | "
            f"{fmt_ms(g('healthz_p99_ms'))} | {fmt_rps(g('root_rps'))} | {fmt_ms(g('root_p50_ms'))} | "
            f"{fmt_ms(g('root_p99_ms'))} | {fmt(g('errors'), '.0f')} | {fmt(g('rss_per_worker_mib'), '.2f')} | "
            f"{fmt(g('cpu_us_per_req'), '.1f')} | {fmt_ms(g('first_200_ms'))} | {jain_s} | {spread} |")
    lines += ["", "| target | measured | ratio | goal | result |", "|---|---|---:|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {fmt(t['ratio'], '.3f')} | {t['goal']} | "
                     f"**{t['result']}** |")
    pt = report.get("plan_timings") or {}
    if pt:
        lines += ["", "| coreiix-plan | tool | runs | median ms | mean ms | min ms |", "|---|---|---:|---:|---:|---:|"]
        for key, label in (("plan", "`--profile enterprise --format json`"), ("generate", "`generate DIR DIR DIR`")):
            t = pt.get(key, {})
            if "error" in t:
                lines.append(f"| {label} | {t['error']} | | | | |")
            else:
                lines.append(f"| {label} | {t.get('tool')} | {t.get('runs')} | {fmt(t.get('median_ms'), '.2f')} | "
                             f"{fmt(t.get('mean_ms'), '.2f')} | {fmt(t.get('min_ms'), '.2f')} |")
    if report.get("notes"):
        lines += ["", "Notes:"] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# main


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run", description=(
        "Benchmark coreiix (`coreiix-plan up`, and a socket-activated systemd pool) against a "
        "FastAPI/gunicorn peer and an nginx ceiling on loopback; prints a table and writes "
        "latest.json / latest.md."))
    p.add_argument("--duration", type=float, help="seconds of wrk load per endpoint (default 10; --quick 2)")
    p.add_argument("--rounds", type=int, help="rounds of alternating contenders (default 3; --quick 1)")
    p.add_argument("--quick", action="store_true", help="short validation run; writes quick.{json,md}")
    p.add_argument("--out", help="directory for results (default bench/results)")
    p.add_argument("--skip-systemd", action="store_true", help="do not run the systemd pool (reported as skipped)")
    p.add_argument("--variants", action="store_true",
                   help="also run coreiix up at the enterprise count with COREIIX_THREADS=1 and =2, and with COREIIX_ACCEPT=runtime")
    p.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk -t (default 2)")
    # small, not coreiix's default dev: dev with one worker turns auto-reload on.
    p.add_argument("--profile", default="small",
                   help="deployment profile for coreiix (`up --profile`, the box's env file) and the "
                        "peer's reported profile; --workers always overrides its count (default small)")
    p.add_argument("--only", help="regex: run only contenders whose name matches (for development)")
    p.add_argument("--no-build", action="store_true", help="do not run cargo build --release")
    p.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.add_argument("--venv", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".venv"))
    a = p.parse_args(argv)
    a.duration = a.duration if a.duration is not None else (2.0 if a.quick else 10.0)
    a.rounds = a.rounds if a.rounds is not None else (1 if a.quick else 3)
    a.warmup = 0.5 if a.quick else 1.0
    a.plan_runs = 50 if a.quick else 300
    a.start_limit = 60.0
    if a.duration < 1 or a.rounds < 1:
        p.error("--duration must be >= 1 and --rounds >= 1")
    a.duration = int(a.duration) if a.duration == int(a.duration) else a.duration
    return a


def main(argv):
    if argv[:1] == ["_client"]:
        return client_main(argv[1:])
    cfg = parse_args(argv)
    cfg.bench_dir = os.path.join(cfg.repo, "bench")
    cfg.plan_bin = os.path.join(cfg.repo, "target", "release", "coreiix-plan")
    cfg.worker_bin = os.path.join(cfg.repo, "target", "release", "coreiix")
    cfg.nproc = len(os.sched_getaffinity(0))
    cfg.build_error = None
    out_dir = os.path.abspath(cfg.out or os.path.join(cfg.bench_dir, "results"))
    os.makedirs(out_dir, exist_ok=True)
    cfg.tmp = tempfile.mkdtemp(prefix="coreiix-bench-")
    # An empty env file: COREIIX_ENV_FILE wins over /etc/coreiix/coreiix.env and ./.env,
    # so a host's own configuration never changes what is measured.
    bench_env = os.path.join(cfg.tmp, "bench.env")
    with open(bench_env, "w") as f:
        f.write("# bench/run: intentionally empty\n")
    cfg.coreiix_env = {"COREIIX_LOG": "warn", "COREIIX_ENV_FILE": bench_env, "COREIIX_DRAIN_TIMEOUT": "5"}

    notes = []
    with open("/proc/loadavg") as f:
        load_start = [float(x) for x in f.read().split()[:3]]
    have_bins, build_state = build(cfg)
    if cfg.build_error:
        notes.append("cargo build --release failed: " + cfg.build_error.splitlines()[-1][:200])
    E, plan = enterprise_workers(cfg) if have_bins else (cfg.nproc * 2 + 1, None)
    cfg.worker_counts = sorted({1, 2, E})
    machine = machine_info(cfg)
    machine["loadavg_at_start"] = load_start

    box = Box(cfg)
    contenders = [Nginx(cfg, "nginx w1", 1)]
    for n in cfg.worker_counts:
        contenders.append(CoreiixUp(cfg, f"coreiix up w{n}", n))
        contenders.append(Gunicorn(cfg, f"gunicorn w{n}", n))
    sysd = SystemdPool(cfg, f"coreiix systemd w{E}", E, box)
    contenders.append(sysd)
    if cfg.variants:
        for t in (1, 2):
            contenders.append(CoreiixUp(cfg, f"coreiix up w{E} threads={t}", E, threads=t))
        # The other way to accept on the shared socket: every worker's epoll (see README).
        contenders.append(CoreiixUp(cfg, f"coreiix up w{E} accept=runtime", E,
                                    extra_env={"COREIIX_ACCEPT": "runtime"}))
        contenders.append(CoreiixReuseport(cfg, f"coreiix reuseport w{E}", E))
    if not have_bins:
        for c in contenders:
            if isinstance(c, (CoreiixUp, CoreiixReuseport, SystemdPool)):
                c.skip_reason = "not run: coreiix binaries missing (" + build_state + ")"
    if sysd.skip_reason is None:
        sysd.skip_reason = box.unavailable()
    if cfg.only:
        rx = re.compile(cfg.only)
        contenders = [c for c in contenders if rx.search(c.name)]
    rounds = {c.name: [] for c in contenders}
    cfg.systemd_ran, pt = False, None
    try:
        if sysd in contenders and sysd.skip_reason is None:
            try:
                log("starting systemd box")
                box.setup()
            except Exception as e:
                sysd.skip_reason = f"skipped: box setup failed: {e}"[:300]
                log(sysd.skip_reason)
                box.teardown()
        cfg.systemd_ran = sysd in contenders and sysd.skip_reason is None
        active = [c for c in contenders if c.skip_reason is None]
        for rnd in range(cfg.rounds):
            for c in active:
                log(f"round {rnd + 1}/{cfg.rounds}: {c.name}")
                rec = measure(c, cfg)
                rec["round"] = rnd + 1
                rounds[c.name].append(rec)
                h = rec.get("healthz", {})
                log(f"  first200 {fmt_ms(rec.get('first_200_ms'))} ms, /healthz {fmt_rps(h.get('rps'))} req/s "
                    f"p99 {fmt_ms(h.get('p99_ms'))} ms, / {fmt_rps(rec.get('root', {}).get('rps'))} req/s, "
                    f"jain {fmt((rec.get('fairness') or {}).get('jain'), '.3f')}")
        pt = plan_timings(cfg) if have_bins and (not cfg.only or re.search(cfg.only, "plan")) else None
    finally:
        box.teardown()

    results = []
    for c in contenders:
        r = {"name": c.name, "kind": type(c).__name__, "workers": c.workers, "fairness": c.fairness}
        if c.skip_reason:
            r["skipped"] = c.skip_reason
        else:
            r["rounds"] = rounds[c.name]
            r["summary"] = summarize(rounds[c.name])
            for x in rounds[c.name]:
                if "error" in x:
                    notes.append(f"{c.name} round {x['round']}: {x['error']}")
                elif x.get("healthz_ok") is False or x.get("root_ok") is False:
                    notes.append(f"{c.name} round {x['round']}: unexpected response body")
                if x.get("note"):
                    notes.append(f"{c.name} round {x['round']}: {x['note']}")
                fn = (x.get("fairness") or {}).get("note")
                if fn:
                    notes.append(f"{c.name} round {x['round']}: fairness {fn}")
        results.append(r)
    if box.note:
        notes.append(f"systemd pool: {box.note}")
    with open("/proc/loadavg") as f:
        machine["loadavg_at_end"] = [float(x) for x in f.read().split()[:3]]
    if machine["loadavg_at_start"][0] > 0.5:
        notes.append(f"the machine was busy before the run (load average {machine['loadavg_at_start'][0]:.2f})")
    other = [(x["other_cpu_pct"], r["name"]) for r in results for x in r.get("rounds", [])
             if x.get("other_cpu_pct") is not None]
    if other:
        mx = max(other)
        msg = (f"CPU used by neither the server nor wrk during load windows: median "
               f"{statistics.median(v for v, _ in other):.1f}%, worst {mx[0]:.1f}% ({mx[1]})")
        notes.append(msg + (": other work disturbed this run, numbers are noisy" if mx[0] > 10 else ""))
    notes.append(f"wrk runs on the same {cfg.nproc} CPUs as the servers; loopback only")
    report = {
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine,
        "config": {k: getattr(cfg, k) for k in ("duration", "rounds", "quick", "warmup", "connections",
                                                "wrk_threads", "profile", "variants", "skip_systemd", "only")},
        "build": build_state,
        "enterprise_workers": E,
        "enterprise_plan": plan,
        "contenders": results,
        "plan_timings": pt,
        "notes": notes,
    }
    report["targets"] = targets(results, cfg, E)
    md = markdown(report)
    stem = "quick" if cfg.quick and not cfg.out else "latest"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in (os.path.join(out_dir, f"{stem}.json"), os.path.join(out_dir, f"run-{stamp}.json")):
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write(md)
    print(md)
    log(f"wrote {out_dir}/{stem}.json, {stem}.md and run-{stamp}.json")
    shutil.rmtree(cfg.tmp, ignore_errors=True)
    return 0


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)
    try:
        sys.exit(main(sys.argv[1:]))
    finally:
        cleanup_all()
