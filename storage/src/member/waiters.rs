//! Proposals waiting for their outcome, by proposal id. The apply thread
//! answers with the applied result; the driver answers only when the Raft
//! core refused the proposal (no leader yet, a leadership transfer). The
//! proposer waits on one channel either way, so an accepted proposal costs
//! no extra wake-up on its way to the log.

use std::collections::HashMap;
use std::sync::Mutex;

use keel_raft::core::RaftError;
use tokio::sync::oneshot;

use crate::apply::Applied;
use crate::error::Result;

/// How a proposal ended.
#[derive(Debug)]
pub enum Outcome {
    /// Committed and applied here: the state machine's answer.
    Applied(Result<Applied>),
    /// Not taken into the log; the proposer may try again.
    Refused(RaftError),
}

/// The waiting proposals. See the module docs.
#[derive(Debug, Default)]
pub struct Waiters(Mutex<HashMap<u64, oneshot::Sender<Outcome>>>);

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Outcome>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers proposal `id` (replacing an earlier attempt's registration).
    pub fn insert(&self, id: u64) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        rx
    }

    /// Forgets proposal `id` (its proposer gave up).
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Hands proposal `id` its outcome, if anyone waits for it here.
    pub fn answer(&self, id: u64, outcome: Outcome) {
        if let Some(tx) = self.lock().remove(&id) {
            let _ = tx.send(outcome);
        }
    }
}
