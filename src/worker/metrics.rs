//! Request metrics in the Prometheus text format, kept per worker process.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Routes are a fixed set, so labels cannot explode with arbitrary paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    Root,
    Healthz,
    Readyz,
    Metrics,
    DebugDelay,
    Other,
}

impl Route {
    pub fn of(path: &str) -> Route {
        match path {
            "/" => Route::Root,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            "/debug/delay" => Route::DebugDelay,
            _ => Route::Other,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Route::Root => "/",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::DebugDelay => "/debug/delay",
            Route::Other => "other",
        }
    }
}

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(Route, u16), u64>>,
    served: AtomicU64,
    in_flight: AtomicI64,
    buckets: [AtomicU64; BUCKETS.len()],
    latency_sum_us: AtomicU64,
}

impl Metrics {
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    pub fn finish(&self, route: Route, status: u16, latency: Duration) {
        self.in_flight.fetch_sub(1, Relaxed);
        self.served.fetch_add(1, Relaxed);
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()).entry((route, status)).or_default() += 1;
        let secs = latency.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_sum_us.fetch_add(latency.as_micros() as u64, Relaxed);
    }

    pub fn served(&self) -> u64 {
        self.served.load(Relaxed)
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Relaxed)
    }

    /// The exposition text. `info` labels identify this worker among its siblings.
    pub fn render(&self, info: &[(&str, String)]) -> String {
        let mut out = String::with_capacity(2048);
        let labels: Vec<String> = info.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let _ = writeln!(out, "# HELP coreiix_worker_info This worker process.");
        let _ = writeln!(out, "# TYPE coreiix_worker_info gauge");
        let _ = writeln!(out, "coreiix_worker_info{{{}}} 1", labels.join(","));

        let _ = writeln!(out, "# HELP coreiix_http_requests_total Requests answered, by route and status.");
        let _ = writeln!(out, "# TYPE coreiix_http_requests_total counter");
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for ((route, status), n) in requests {
            let _ = writeln!(
                out,
                "coreiix_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                route.label()
            );
        }

        let _ = writeln!(out, "# HELP coreiix_http_requests_in_flight Requests being handled now.");
        let _ = writeln!(out, "# TYPE coreiix_http_requests_in_flight gauge");
        let _ = writeln!(out, "coreiix_http_requests_in_flight {}", self.in_flight());

        let _ = writeln!(out, "# HELP coreiix_http_request_duration_seconds Time to answer a request.");
        let _ = writeln!(out, "# TYPE coreiix_http_request_duration_seconds histogram");
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += count.load(Relaxed);
            let _ =
                writeln!(out, "coreiix_http_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let total = self.served();
        let _ = writeln!(out, "coreiix_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {total}");
        let sum = self.latency_sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "coreiix_http_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "coreiix_http_request_duration_seconds_count {total}");

        if let Some(rss) = resident_memory_bytes() {
            let _ = writeln!(out, "# HELP process_resident_memory_bytes Resident memory of this worker.");
            let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
            let _ = writeln!(out, "process_resident_memory_bytes {rss}");
        }
        out
    }
}

/// Resident set size from /proc/self/statm (in pages).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_routes_statuses_and_latency() {
        let m = Metrics::default();
        m.start();
        m.start();
        m.finish(Route::Healthz, 200, Duration::from_micros(300));
        m.finish(Route::Other, 404, Duration::from_millis(30));
        let text = m.render(&[("instance", "3".into())]);
        assert!(text.contains("coreiix_worker_info{instance=\"3\"} 1"), "{text}");
        assert!(text.contains("coreiix_http_requests_total{route=\"/healthz\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("coreiix_http_requests_total{route=\"other\",status=\"404\"} 1"), "{text}");
        assert!(text.contains("coreiix_http_requests_in_flight 0"), "{text}");
        assert!(text.contains("_bucket{le=\"0.0005\"} 1\n"), "{text}");
        assert!(text.contains("_bucket{le=\"0.05\"} 2\n"), "{text}");
        assert!(text.contains("coreiix_http_request_duration_seconds_count 2"), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }
}
