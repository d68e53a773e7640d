//! Cancelling an upstream exchange whose client has hung up (README "What can hold a worker").
//! Each client connection has one `Cancel`. While a worker has the connection, the front end
//! still watches its socket; a hang-up (`client_gone`) shuts down the upstream socket the worker
//! is blocked on, so that its read returns at once — once the worker has said it expects nothing
//! more from the client (`waiting`; before that, its own read of the body sees the hang-up).
//! The worker names its exchange with `Current`; sluice's TCP transport, running on the worker
//! thread, `attach`es the socket it uses to it.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering::SeqCst};
use std::sync::Arc;

use parking_lot::Mutex;
use ureq::unversioned::transport::ShutdownHandle;

const WAITING: u8 = 1;
const HUNG_UP: u8 = 2;
const CANCELLED: u8 = 4;

/// One client connection's cancellation state, shared by the front end and the worker.
#[derive(Default)]
pub struct Cancel {
    state: AtomicU8,
    /// Bumped for every request, so a transport knows when it must attach again.
    request: AtomicU32,
    socket: Mutex<Option<Arc<dyn ShutdownHandle>>>,
}

impl Cancel {
    /// A new request on the connection: nothing is awaited or cancelled yet (a hang-up stays).
    fn reset(&self) {
        self.state.fetch_and(HUNG_UP, SeqCst);
        self.request.fetch_add(1, SeqCst);
        *self.socket.lock() = None;
    }

    /// The front end saw the client hang up (or its socket fail).
    pub fn client_gone(&self) {
        let before = self.state.fetch_or(HUNG_UP, SeqCst);
        if before & WAITING != 0 {
            self.cancel_now();
        }
    }

    /// True once the client has hung up.
    pub fn hung_up(&self) -> bool {
        self.state.load(SeqCst) & HUNG_UP != 0
    }

    /// The worker has all it needs from the client: a hang-up from now on cancels at once, and
    /// one that came before does so now.
    pub fn waiting(&self) {
        let before = self.state.fetch_or(WAITING, SeqCst);
        if before & HUNG_UP != 0 {
            self.cancel_now();
        }
    }

    /// The upstream's part is over (its whole response is read, and its connection may be back
    /// in the pool): a hang-up from now on cancels nothing.
    pub fn upstream_done(&self) {
        self.state.fetch_and(!WAITING, SeqCst);
        *self.socket.lock() = None;
    }

    /// True if the exchange was cancelled: its failure is the client's abort, not the upstream's.
    pub fn cancelled(&self) -> bool {
        self.state.load(SeqCst) & CANCELLED != 0
    }

    fn cancel_now(&self) {
        self.state.fetch_or(CANCELLED, SeqCst);
        if let Some(socket) = self.socket.lock().take() {
            socket.shutdown();
        }
    }

    /// The exchange uses `socket` now; shut it down at once if it was cancelled already.
    fn attach(&self, socket: Arc<dyn ShutdownHandle>) {
        if self.cancelled() {
            socket.shutdown();
        } else {
            *self.socket.lock() = Some(socket);
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Cancel>>> = const { RefCell::new(None) };
}

/// The exchange this worker thread runs now. Dropped, it lets go of the upstream socket (which
/// may go back to the pool) and of the current exchange.
pub struct Current(Arc<Cancel>);

impl Current {
    pub fn set(cancel: &Arc<Cancel>) -> Current {
        cancel.reset();
        CURRENT.with(|c| *c.borrow_mut() = Some(cancel.clone()));
        Current(cancel.clone())
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        self.0.upstream_done();
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

/// Which request a transport attached its socket for: (the `Cancel`'s address, its request).
pub type Attached = (usize, u32);

/// Called by the transport before each socket operation: attaches `socket` to this thread's
/// current exchange unless it is attached for it already.
pub fn attach_current(socket: &Arc<dyn ShutdownHandle>, attached: &mut Attached) {
    CURRENT.with(|c| {
        if let Some(cancel) = c.borrow().as_ref() {
            let now = (Arc::as_ptr(cancel) as usize, cancel.request.load(SeqCst));
            if *attached != now {
                *attached = now;
                cancel.attach(socket.clone());
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl std::fmt::Debug for Flag {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Flag")
        }
    }

    impl ShutdownHandle for Flag {
        fn shutdown(&self) {
            self.0.store(true, SeqCst);
        }
    }

    #[test]
    fn a_hang_up_while_waiting_shuts_the_upstream_socket_down() {
        let cancel = Arc::new(Cancel::default());
        let socket = Arc::new(Flag::default());
        let _current = Current::set(&cancel);
        let mut attached = (0, 0);
        attach_current(&(socket.clone() as Arc<dyn ShutdownHandle>), &mut attached);
        cancel.waiting();
        assert!(!socket.0.load(SeqCst));
        cancel.client_gone();
        assert!(socket.0.load(SeqCst));
        assert!(cancel.cancelled());
    }

    #[test]
    fn a_hang_up_before_waiting_cancels_only_when_the_worker_is_done_with_the_client() {
        let cancel = Arc::new(Cancel::default());
        let socket = Arc::new(Flag::default());
        let _current = Current::set(&cancel);
        cancel.client_gone();
        assert!(
            !cancel.cancelled(),
            "the worker may still be reading the body"
        );
        let mut attached = (0, 0);
        attach_current(&(socket.clone() as Arc<dyn ShutdownHandle>), &mut attached);
        cancel.waiting();
        assert!(cancel.cancelled() && socket.0.load(SeqCst));
    }

    #[test]
    fn a_new_request_starts_uncancelled_and_attaches_again() {
        let cancel = Arc::new(Cancel::default());
        let socket: Arc<dyn ShutdownHandle> = Arc::new(Flag::default());
        let mut attached = (0, 0);
        {
            let _current = Current::set(&cancel);
            attach_current(&socket, &mut attached);
            cancel.waiting();
            cancel.client_gone();
        }
        let _current = Current::set(&cancel);
        assert!(!cancel.cancelled(), "a new request starts uncancelled");
        assert!(cancel.hung_up(), "the connection stays hung up");
        let before = attached;
        attach_current(&socket, &mut attached);
        assert_ne!(before, attached, "attached for the new request");
    }
}
