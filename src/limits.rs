//! The process's open-file limit, for the `sluice` binary at start: the soft `RLIMIT_NOFILE` is
//! raised to the hard limit (as Go's runtime and nginx's `worker_rlimit_nofile` do; a container's
//! soft limit is often 1024), and what the settings may hold open is checked against it (README
//! "Static binary and deployment").

use std::io;

use crate::config::Config;

/// Descriptors beside connections: the listener, epoll, the wakers, stdio, name look-ups and
/// health checks.
pub const MARGIN: u64 = 32;

/// An open-file limit: soft (enforced) and hard (the most the soft one may be raised to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoFile {
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard one. Returns the limits before and after.
pub fn raise_nofile() -> io::Result<(NoFile, NoFile)> {
    let before = get()?;
    if before.soft >= before.hard {
        return Ok((before, before));
    }
    set(NoFile {
        soft: before.hard,
        hard: before.hard,
    })?;
    Ok((before, get()?))
}

/// Descriptors the settings may hold open at once: one per client connection
/// (`max_connections`), one per upstream connection (in use by a worker, or idle in the pool),
/// and `MARGIN`.
pub fn fds_needed(cfg: &Config) -> u64 {
    [
        cfg.max_connections,
        cfg.max_concurrent_requests,
        cfg.pool_maxsize,
    ]
    .iter()
    .map(|&n| n as u64)
    .sum::<u64>()
        + MARGIN
}

/// The warning when the settings cannot fit in the soft limit `soft`.
pub fn check(cfg: &Config, soft: u64) -> Option<String> {
    let needed = fds_needed(cfg);
    (needed > soft).then(|| {
        format!(
            "open-file limit {soft} < {needed} that the settings may need (max_connections {} + max_concurrent_requests {} + pool_maxsize {} + {MARGIN}): connections beyond it are refused by accept (EMFILE); raise the hard limit (LimitNOFILE=, ulimit -Hn, the container runtime's nofile) or lower max_connections",
            cfg.max_connections, cfg.max_concurrent_requests, cfg.pool_maxsize
        )
    })
}

fn get() -> io::Result<NoFile> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live, properly aligned local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(NoFile {
        soft: r.rlim_cur,
        hard: r.rlim_max,
    })
}

fn set(l: NoFile) -> io::Result<()> {
    let r = libc::rlimit {
        rlim_cur: l.soft,
        rlim_max: l.hard,
    };
    // SAFETY: setrlimit only reads the `rlimit` behind a pointer to a live local.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_are_checked_against_the_soft_limit() {
        let cfg = Config {
            target_host: "x".into(),
            max_connections: 1000,
            max_concurrent_requests: 100,
            pool_maxsize: 100,
            ..Config::default()
        };
        assert_eq!(fds_needed(&cfg), 1232);
        assert_eq!(check(&cfg, 1232), None);
        let w = check(&cfg, 1024).unwrap();
        assert!(w.contains("1024 < 1232"), "{w}");
        assert!(w.contains("max_connections 1000"), "{w}");
    }
}
