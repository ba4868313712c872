//! How many CPUs this process may really use.

/// CPUs this process may run on: the affinity mask, capped by the cgroup (v1 or v2) CPU quota
/// of its own cgroup and every ancestor. The standard library does exactly this, so a 2-CPU
/// container on a 64-core host counts 2. Falls back to 1 if nothing can be read.
pub fn detect_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Affinity is per thread on Linux, so a fresh thread pinned to one CPU must count one,
    /// whatever the machine has.
    #[test]
    fn affinity_limits_the_count() {
        let counted = std::thread::spawn(|| {
            // SAFETY: cpu_set_t is plain data; the calls only touch this thread's mask.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                assert_eq!(libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set), 0);
                let first = (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &set));
                let mut one: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(first.expect("no CPU in affinity mask"), &mut one);
                assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one), 0);
            }
            detect_cpus()
        })
        .join()
        .unwrap();
        assert_eq!(counted, 1);
    }

    #[test]
    fn never_zero() {
        assert!(detect_cpus() >= 1);
    }
}
