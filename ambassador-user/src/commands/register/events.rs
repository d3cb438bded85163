//! Docker's container events, as the register acts on them: typed once, where they arrive.

use bollard::models::EventMessage;

/// What a container event means for its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Started, unpaused or restarted: registered if it is ready, and no longer draining.
    Started,
    /// Its health changed: registered or removed by its health.
    Health,
    /// It was sent a stop signal (`docker stop` sends SIGTERM before the container dies): its
    /// endpoint leaves now, and stays out while the container drains.
    Stopping,
    /// It stopped, paused or ran out of memory: its endpoint leaves.
    Stopped,
    /// It died or was removed: its endpoint leaves, and it is no longer draining.
    Gone,
}

/// The change `ev` means and the container it is about; `None` for events that change nothing
/// (exec, attach, a `kill` with a signal that does not stop it...).
pub fn parse(ev: &EventMessage) -> Option<(Change, &str)> {
    let actor = ev.actor.as_ref()?;
    let id = actor.id.as_deref()?;
    // "exec_start: sh" and "health_status: healthy" carry a suffix.
    let action = ev.action.as_deref()?.split(':').next()?;
    let signal = actor.attributes.as_ref().and_then(|a| a.get("signal"));
    let change = match action {
        "start" | "unpause" | "restart" => Change::Started,
        "health_status" => Change::Health,
        "kill" if signal.is_some_and(|s| is_stop_signal(s)) => Change::Stopping,
        "stop" | "pause" | "oom" => Change::Stopped,
        "die" | "destroy" => Change::Gone,
        _ => return None,
    };
    Some((change, id))
}

/// Signals that stop a container (a `kill` event with another signal, e.g. SIGHUP for a
/// reload, leaves the endpoint alone).
fn is_stop_signal(signal: &str) -> bool {
    matches!(
        signal,
        "15" | "2" | "3" | "9" | "SIGTERM" | "SIGINT" | "SIGQUIT" | "SIGKILL"
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::EventActor;

    use super::*;

    fn event(action: &str, signal: Option<&str>) -> EventMessage {
        EventMessage {
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some("c1".into()),
                attributes: signal.map(|s| HashMap::from([("signal".to_owned(), s.to_owned())])),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn events_are_typed_once() {
        for (action, signal, want) in [
            ("start", None, Some(Change::Started)),
            ("restart", None, Some(Change::Started)),
            ("health_status: healthy", None, Some(Change::Health)),
            ("kill", Some("15"), Some(Change::Stopping)),
            ("kill", Some("SIGKILL"), Some(Change::Stopping)),
            ("kill", Some("1"), None),
            ("kill", None, None),
            ("stop", None, Some(Change::Stopped)),
            ("oom", None, Some(Change::Stopped)),
            ("die", None, Some(Change::Gone)),
            ("destroy", None, Some(Change::Gone)),
            ("exec_start: sh", None, None),
        ] {
            assert_eq!(
                parse(&event(action, signal)).map(|(c, _)| c),
                want,
                "{action} {signal:?}"
            );
        }
        assert_eq!(parse(&event("start", None)).map(|(_, id)| id), Some("c1"));
        let no_actor = EventMessage {
            action: Some("start".into()),
            ..Default::default()
        };
        assert_eq!(parse(&no_actor), None);
    }
}
