//! Open files: a connection holds two sockets, and two pipes more (four descriptors) while it
//! is spliced. At start the door raises its soft limit of open files as far as
//! `--max-connections` needs (up to the hard limit, as Go's runtime does for every Go
//! program), and says so when even the hard limit cannot hold them.

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tracing::{info, warn};

use super::CopyMode;

/// Descriptors besides the connections': the listener, etcd's and the metrics' sockets, the
/// runtime's own.
const SPARE: u64 = 64;

/// A connection's descriptors.
fn per_connection(mode: CopyMode) -> u64 {
    match mode {
        CopyMode::Splice => 6,
        CopyMode::ReadWrite => 2,
    }
}

/// Raises the soft limit of open files to what `max_connections` need (at most the hard
/// limit); warns when that is not enough.
pub fn raise_limit(max_connections: usize, mode: CopyMode) {
    let need = max_connections as u64 * per_connection(mode) + SPARE;
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            warn!("socks: reading the limit of open files: {e}");
            return;
        }
    };
    let mut limit = soft;
    // Up to what is needed, never past the hard limit; a soft limit already there stays.
    let want = need.min(hard);
    if want > soft {
        match setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
            Ok(()) => {
                info!("socks: raised the limit of open files from {soft} to {want}");
                limit = want;
            }
            Err(e) => warn!("socks: raising the limit of open files to {want}: {e}"),
        }
    }
    if limit < need {
        let fit = limit.saturating_sub(SPARE) / per_connection(mode);
        warn!(
            "socks: --max-connections {max_connections} needs about {need} open files with \
             --copy {}, but the limit is {limit} (hard limit {hard}): past about {fit} \
             connections, new ones wait for a free descriptor. Raise the hard limit \
             (LimitNOFILE= for systemd, `ulimit -Hn` for a shell) or lower --max-connections",
            mode.name(),
        );
    }
}
