//! A readiness flag: set while some loop is doing its job (a consumer consuming), cleared
//! when it stops however it stops. Backs the `/readyz` probes.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

/// Whether the thing it watches is up right now.
#[derive(Debug, Clone, Default)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    /// Marks the flag set until the returned guard drops.
    #[must_use]
    pub fn up(&self) -> ReadyGuard {
        self.0.store(true, Ordering::SeqCst);
        ReadyGuard(self.clone())
    }

    /// Whether the flag is set.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Clears its flag when dropped.
#[derive(Debug)]
pub struct ReadyGuard(ReadyFlag);

impl Drop for ReadyGuard {
    fn drop(&mut self) {
        (self.0).0.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_up_exactly_while_its_guard_lives() {
        let flag = ReadyFlag::default();
        assert!(!flag.is_up());
        let guard = flag.up();
        assert!(flag.is_up());
        drop(guard);
        assert!(!flag.is_up());
    }
}
