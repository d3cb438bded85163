//! What the daemon follows in the kernel: backend health transitions the datapath reports,
//! sockets whose backend went, and the programs' debug records.

use ambassador_common::{monitor::FlowEvent, suspicion, HealthEvent};
use tracing::{info, warn};

use super::State;
use crate::{
    core::model::Proto,
    datapath::{loader, sockets},
    error::{Error, Result},
    services::monitor::{self, Event, Kind},
};

impl State {
    /// Turns the datapath's flow events on while a monitor listens, off when none does.
    pub(super) fn monitor_switch(&mut self, on: bool) {
        match self.dp.maps.set_monitor(on) {
            Ok(()) => info!(
                "monitor {}: the datapath's flow events are {}",
                if on { "connected" } else { "gone" },
                if on { "on" } else { "off" }
            ),
            Err(e) => warn!("switching the datapath's flow events failed: {e}"),
        }
    }

    /// Hands the flow events the datapath wrote to the monitors.
    pub(super) fn flow_events(&mut self, ring: &mut loader::FlowEvents) {
        while let Some(item) = ring.next() {
            let Some(r) = loader::ring_record::<FlowEvent>(&item) else {
                continue;
            };
            let service = self.core.installed.names.get(&r.service_id).cloned();
            self.monitor.publish(|| monitor::from_datapath(&r, service));
        }
    }

    /// Logs and counts the backend health transitions the datapath reported.
    pub(super) fn health_events(&mut self, ring: &mut loader::HealthEvents) {
        let mut t = self.telemetry.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(item) = ring.next() {
            let Some(ev) = loader::ring_record::<HealthEvent>(&item) else {
                continue;
            };
            let backend = self
                .core
                .installed
                .backends
                .get(&ev.backend_id)
                .map_or_else(|| format!("id {}", ev.backend_id), |b| b.addr.to_string());
            let service = self
                .core
                .installed
                .names
                .get(&ev.service_id)
                .cloned()
                .unwrap_or_else(|| format!("id {}", ev.service_id));
            let retry_s = suspicion::backoff_ns(ev.strikes) / 1_000_000_000;
            match ev.reason {
                suspicion::REFUSED | suspicion::SILENT => {
                    let how = if ev.reason == suspicion::REFUSED {
                        t.suspected_refused += 1;
                        "refused a new flow (RST to its SYN)"
                    } else {
                        t.suspected_silent += 1;
                        "left a new flow unanswered (its SYN was retransmitted)"
                    };
                    warn!(
                        %backend,
                        %service,
                        strikes = ev.strikes,
                        "backend {how}: suspect on this host, new flows go to the others; one may try it again in {retry_s} s"
                    );
                    self.monitor.publish(|| {
                        let mut e = Event::new(Kind::Suspect);
                        e.backend = Some(backend.clone());
                        e.service = Some(service.clone());
                        e.reason = Some(suspicion::name(ev.reason).to_owned());
                        e.detail =
                            Some(format!("{} in a row; next try in {retry_s} s", ev.strikes));
                        e
                    });
                }
                suspicion::ANSWERED => {
                    t.recovered += 1;
                    info!(%backend, %service, "suspect backend answered a new flow: in use again");
                    self.monitor.publish(|| {
                        let mut e = Event::new(Kind::Recovered);
                        e.backend = Some(backend.clone());
                        e.service = Some(service.clone());
                        e
                    });
                }
                _ => {}
            }
        }
    }

    /// Destroys the sockets the socket datapath connected to a backend that went (UDP: also
    /// to one that left its service), so their applications reconnect to a live backend.
    pub(super) fn destroy_stale_sockets(&mut self) {
        if self.dp.sock_cgroup().is_none() {
            return;
        }
        let entries = match self.dp.maps.sock_entries() {
            Ok(e) => e,
            Err(e) => return warn!("reading the socket datapath's entries failed: {e}"),
        };
        let doomed = sockets::doomed(&entries, &self.core.installed);
        let mut destroyed = 0;
        for proto in [Proto::Udp, Proto::Tcp] {
            if !doomed.iter().any(|e| e.proto == proto) {
                continue;
            }
            let connected = match sockets::connected(proto) {
                Ok(c) => c,
                Err(e) => {
                    warn!("listing {proto} sockets (sock_diag) failed: {e}");
                    continue;
                }
            };
            for socket in sockets::stale(&connected, &doomed) {
                match sockets::destroy(socket) {
                    Ok(()) => {
                        destroyed += 1;
                        info!(%proto, backend = %socket.peer, "destroyed a socket connected to a backend that went");
                    }
                    Err(e) if !self.destroy_refused => {
                        self.destroy_refused = true;
                        warn!(
                            "destroying a {proto} socket connected to {} failed: {e}. Sockets connected to a backend that went keep it until their application reconnects (destroying them needs CAP_NET_ADMIN and a kernel with CONFIG_INET_DIAG_DESTROY)",
                            socket.peer
                        );
                    }
                    Err(_) => {}
                }
            }
        }
        if destroyed > 0 {
            let mut t = self.telemetry.lock().unwrap_or_else(|p| p.into_inner());
            t.sockets_destroyed += destroyed;
        }
    }
}

/// Forwards the datapath's aya-log records to the log as they arrive.
pub(super) fn follow_kernel_log(log: loader::KernelLog) -> Result<()> {
    // SAFETY: the logger owns its ring buffer's map fd and never replaces or closes it while
    // it lives; the AsyncFd owns the logger.
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(log, tokio::io::Interest::READABLE)
    }
    .map_err(|e| Error::Io {
        what: "watching the datapath's log ring buffer".into(),
        source: e.into(),
    })?;
    info!("datapath debug output on: every new flow and every drop is logged");
    tokio::spawn(async move {
        loop {
            let Ok(mut ready) = fd.readable_mut().await else {
                warn!("the datapath's log ring buffer failed; no more kernel debug output");
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
    Ok(())
}
