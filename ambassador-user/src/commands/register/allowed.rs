//! What this host may register: the cluster's trust mode and this host's record
//! (`<prefix>/v1/host-policy/<host>`, written by an admin). The daemons check every endpoint
//! against the same record; the register checks first, so that a container it may not
//! register says why on this host (in its log, once) instead of being refused everywhere else.

use etcd_client::{Client, Txn, TxnOp};

use super::lease::retry;
use crate::{
    core::{
        contract,
        trust::{HostRecord, Mode},
    },
    error::Result,
};

/// This host's allowance, as last read.
#[derive(Clone, Debug, Default)]
pub(super) struct Allowance {
    mode: Mode,
    /// The host's record (None: there is none, or it is malformed: see `problem`).
    record: Option<HostRecord>,
    /// Why the record is unusable, if it is.
    problem: Option<String>,
}

impl Allowance {
    /// Reads the trust mode and the host's record in one transaction.
    pub(super) async fn read(client: &Client, prefix: &str, host: &str) -> Result<Self> {
        let record_key = contract::host_policy_key(prefix, host);
        let txn = Txn::new().and_then([
            TxnOp::get(contract::trust_key(prefix), None),
            TxnOp::get(record_key.clone(), None),
        ]);
        let what = format!("reading the trust mode and {record_key}");
        let resp = retry(client, &what, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await?;
        let mut values = resp.op_responses().into_iter().map(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            _ => None,
        });
        let (mode, record) = (values.next().flatten(), values.next().flatten());
        let mut allowance = Allowance {
            mode: mode
                .as_deref()
                .map(Mode::parse)
                .transpose()
                .unwrap_or(Some(Mode::Hosts)) // a broken setting: the stricter reading
                .unwrap_or_default(),
            ..Default::default()
        };
        match record.as_deref().map(HostRecord::parse) {
            Some(Ok(r)) => allowance.record = Some(r),
            Some(Err(why)) => allowance.problem = Some(format!("{record_key} is malformed: {why}")),
            None => {}
        }
        Ok(allowance)
    }

    /// The trust mode.
    pub(super) fn mode(&self) -> Mode {
        self.mode
    }

    /// Why this host may not register an endpoint of `service` at `ip`, if it may not.
    pub(super) fn refuse(&self, host: &str, service: &str, ip: std::net::IpAddr) -> Option<String> {
        if self.mode == Mode::Open {
            return None;
        }
        match (&self.record, &self.problem) {
            (Some(r), _) => r.refuse(host, service, ip),
            (None, Some(problem)) => Some(problem.clone()),
            (None, None) => Some(format!(
                "host {host:?} has no host record (trust mode hosts): an admin adds one with `ambassador auth add-host {host} --address CIDR --service NAME`"
            )),
        }
    }
}
