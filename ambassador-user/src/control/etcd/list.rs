//! Reading everything under a prefix, a page at a time, at one revision.
//!
//! One range request for a whole prefix fails outright once the answer passes the client's
//! message limit (4 MiB in tonic: about 23,000 endpoints as registers write them), and etcd
//! builds every answer whole in memory: a fleet re-listing at once after an outage makes it
//! build one per host. Pages bound both; every page after the first is read at the first
//! one's revision, so the pages together are one consistent listing (etcd refuses a page
//! whose revision was compacted meanwhile, and the caller lists again).

use etcd_client::{Client, GetOptions, KeyValue};

use super::timed;
use crate::error::Result;

/// Keys asked for per request: about 190 KiB of answer with the registers' values. The fleet
/// bench's re-list storm (BENCHMARKS.md, "Fleet") measures it against one request per host.
pub const PAGE: i64 = 1000;

/// The largest answer taken (a page of values as large as etcd's own request limit,
/// `--max-request-bytes`, 1.5 MiB by default, would still pass a few at a time).
const MAX_ANSWER: usize = 64 << 20;

/// A prefix's keys and values at one revision.
#[derive(Debug, Default)]
pub struct Listing {
    /// The revision every page was read at.
    pub revision: i64,
    /// The keys in order, with their values.
    pub kvs: Vec<KeyValue>,
    /// How many requests it took.
    pub pages: usize,
}

/// Lists everything under `root`, [`PAGE`] keys per request, each request timed as
/// [`timed`] does.
pub async fn list(client: &Client, root: &str) -> Result<Listing> {
    let mut kv = client.kv_client().max_decoding_message_size(MAX_ANSWER);
    let end = prefix_end(root.as_bytes());
    let mut from = root.as_bytes().to_vec();
    let mut listing = Listing::default();
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if listing.pages > 0 {
            opts = opts.with_revision(listing.revision);
        }
        let what = format!("listing {root} (page {})", listing.pages + 1);
        let mut page = timed(what, kv.get(from.clone(), Some(opts))).await?;
        if listing.pages == 0 {
            listing.revision = page.header().map_or(0, |h| h.revision());
        }
        listing.pages += 1;
        let more = page.more();
        let kvs = page.take_kvs();
        let Some(last) = kvs.last() else { break };
        // The next page starts just after this one's last key.
        from = [last.key(), &[0]].concat();
        listing.kvs.extend(kvs);
        if !more {
            break;
        }
    }
    Ok(listing)
}

/// The end of the range of keys that start with `prefix` (etcd's convention: the prefix with
/// its last byte below 0xff incremented, the bytes after it dropped; `\0` for every key when
/// there is none).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_ends_where_its_last_byte_below_0xff_is_incremented() {
        assert_eq!(prefix_end(b"/ambassador/v1/"), b"/ambassador/v10");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
