//! One-shot answers from the writer thread to blocked callers, all woken
//! with one call.
//!
//! A group commit answers many callers at once. Waking parked threads one
//! by one is a system call each that, on a virtual machine, costs the waker
//! several microseconds (an inter-processor interrupt): the writer thread
//! waking a dozen callers after every sync spent over a third of its time
//! there, on the path of the next sync. Instead every caller of a store
//! waits on one shared counter ([`Board`]); the writer fills each caller's
//! slot, bumps the counter and wakes all waiters with one futex call, which
//! the kernel serves with one interrupt per CPU. A caller whose job is still
//! queued wakes too, finds its slot empty and waits again.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// What the callers of one store wait on: a counter bumped each time
/// answers are given.
#[derive(Debug, Default)]
pub(crate) struct Board {
    answered: AtomicU32,
}

impl Board {
    fn wake_all(&self) {
        self.answered.fetch_add(1, Ordering::SeqCst);
        atomic_wait::wake_all(&self.answered);
    }
}

/// Creates a slot for one answer: the writer's half and the caller's half.
pub(crate) fn slot<T>(board: &Arc<Board>) -> (Answer<T>, Waiter<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Waiting),
        board: Arc::clone(board),
    });
    (Answer(Some(Arc::clone(&slot))), Waiter(slot))
}

struct Slot<T> {
    state: Mutex<State<T>>,
    board: Arc<Board>,
}

enum State<T> {
    Waiting,
    Ready(T),
    /// The writer dropped its half without answering (it panicked or shut
    /// down with the job still queued).
    Dropped,
    Taken,
}

impl<T> Slot<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        // Every change is one assignment: a poisoned lock holds a whole state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer's half of a slot. Dropping it unanswered wakes the caller
/// with no answer.
pub(crate) struct Answer<T>(Option<Arc<Slot<T>>>);

impl<T> Drop for Answer<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            *slot.state() = State::Dropped;
            slot.board.wake_all();
        }
    }
}

/// Answers every slot, then wakes their callers with one call per board.
pub(crate) fn answer_all<T>(answers: impl IntoIterator<Item = (Answer<T>, T)>) {
    let mut board: Option<Arc<Board>> = None;
    for (mut answer, value) in answers {
        if let Some(slot) = answer.0.take() {
            *slot.state() = State::Ready(value);
            match &board {
                Some(b) if Arc::ptr_eq(b, &slot.board) => {}
                _ => {
                    if let Some(b) = board.replace(Arc::clone(&slot.board)) {
                        b.wake_all();
                    }
                }
            }
        }
    }
    if let Some(board) = board {
        board.wake_all();
    }
}

/// The caller's half of a slot.
pub(crate) struct Waiter<T>(Arc<Slot<T>>);

impl<T> Waiter<T> {
    /// Blocks until the slot is answered and returns the answer; `None` if
    /// the writer dropped the slot without answering.
    pub(crate) fn wait(self) -> Option<T> {
        loop {
            // Read the counter before looking at the slot: an answer given
            // after this read also bumps the counter, so the wait below
            // returns at once instead of missing it.
            let seen = self.0.board.answered.load(Ordering::SeqCst);
            {
                let mut state = self.0.state();
                match std::mem::replace(&mut *state, State::Taken) {
                    State::Ready(value) => return Some(value),
                    State::Dropped | State::Taken => return None,
                    State::Waiting => *state = State::Waiting,
                }
            }
            atomic_wait::wait(&self.0.board.answered, seen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    #[test]
    fn every_caller_gets_its_own_answer() {
        let board = Arc::new(Board::default());
        for callers in [1usize, 2, 3, 16, 100] {
            let (tx, rx) = mpsc::channel();
            let got = thread::scope(|s| {
                let handles: Vec<_> = (0..callers)
                    .map(|i| {
                        let (tx, board) = (tx.clone(), &board);
                        s.spawn(move || {
                            let (answer, waiter) = slot::<usize>(board);
                            tx.send((i, answer)).map_err(|_| "send")?;
                            waiter.wait().ok_or("dropped")
                        })
                    })
                    .collect();
                let mut answers: Vec<(usize, Answer<usize>)> = rx.iter().take(callers).collect();
                answers.sort_by_key(|(i, _)| *i);
                // Two groups: the second group's callers wake with the first
                // and must wait again for their own answers.
                let second = answers.split_off(callers / 2);
                answer_all(answers.into_iter().map(|(i, a)| (a, i * 10)));
                answer_all(second.into_iter().map(|(i, a)| (a, i * 10)));
                handles
                    .into_iter()
                    .map(|h| h.join().map_err(|_| "panicked")?)
                    .collect::<Result<Vec<_>, _>>()
            });
            let want: Vec<usize> = (0..callers).map(|i| i * 10).collect();
            assert_eq!(got, Ok(want), "{callers} callers");
        }
    }

    #[test]
    fn a_dropped_answer_wakes_its_caller_with_none() {
        let board = Arc::new(Board::default());
        let (tx, rx) = mpsc::channel();
        let got = thread::scope(|s| {
            let waiting = s.spawn(|| {
                let (answer, waiter) = slot::<u8>(&board);
                tx.send(answer).map_err(|_| "send")?;
                Ok::<_, &str>(waiter.wait())
            });
            drop(rx.recv());
            waiting.join()
        });
        assert!(matches!(got, Ok(Ok(None))));
    }

    #[test]
    fn an_answer_given_before_the_caller_waits_is_kept() {
        let board = Arc::new(Board::default());
        let (answer, waiter) = slot::<&str>(&board);
        answer_all([(answer, "early")]);
        assert_eq!(waiter.wait(), Some("early"));
    }
}
