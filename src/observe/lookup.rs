//! Whether the target's name resolves: the outcome of the last look-up of `target_host` (the one
//! at start, and each one the cached resolver makes), shown in `/proxy-health` as
//! `target_resolves` (README "Static binary and deployment"). A change is one log line: a warn
//! when the name stops resolving (at start: before any request), an info when it resolves again.

use parking_lot::Mutex;

/// What the last look-up of the target's name found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Lookup {
    /// Not looked up yet (the start-up look-up runs beside the listener).
    #[default]
    Pending,
    Resolves,
    /// The look-up failed or found no address; the resolver's message.
    Fails(String),
}

#[derive(Default)]
pub struct TargetLookup(Mutex<Lookup>);

impl TargetLookup {
    pub fn get(&self) -> Lookup {
        self.0.lock().clone()
    }

    /// Records a look-up of `name` and logs a change of whether it resolves.
    pub fn record(&self, name: &str, result: Result<(), String>) {
        let now = match result {
            Ok(()) => Lookup::Resolves,
            Err(e) => Lookup::Fails(e),
        };
        let before = std::mem::replace(&mut *self.0.lock(), now.clone());
        match (&before, &now) {
            (Lookup::Fails(_), Lookup::Resolves) => {
                crate::info!("target_host {name:?} resolves again");
            }
            (Lookup::Pending | Lookup::Resolves, Lookup::Fails(e)) => crate::warn!(
                "target_host {name:?} does not resolve ({e}): requests that need a new upstream connection get 502 connect_failed until it does"
            ),
            _ => {}
        }
    }

    /// Forgets the last result (the target changed on reload).
    pub fn reset(&self) {
        *self.0.lock() = Lookup::Pending;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_look_up_wins() {
        let l = TargetLookup::default();
        assert_eq!(l.get(), Lookup::Pending);
        l.record("up.invalid", Err("no such host".into()));
        assert_eq!(l.get(), Lookup::Fails("no such host".into()));
        l.record("up.invalid", Ok(()));
        assert_eq!(l.get(), Lookup::Resolves);
        l.reset();
        assert_eq!(l.get(), Lookup::Pending);
    }
}
