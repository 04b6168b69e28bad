//! Argon2id on threads of its own: the only place PINs (and security
//! answers) are hashed or checked.
//!
//! Must never: hash on an async worker, or run more hashes at once than it
//! was given cores (each holds ~19 MiB).

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::flows::error::FlowError;

/// Called on the hashing thread after each Argon2 run, to give its memory
/// block (19 MiB) back to the OS; the binary sets it for its allocator
/// (an idle hashing thread's heap would otherwise keep the block).
pub static RELEASE_MEMORY: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

fn release_memory() {
    if let Some(f) = RELEASE_MEMORY.get() {
        f();
    }
}

/// Puts the calling thread below every normal thread: `SCHED_IDLE` on Linux,
/// which the scheduler treats as idle time, so a proxy worker that wakes up
/// gets a core at once. At nice 19 an Argon2 check still shared the worker's
/// core: in 5 s of a PIN storm (perf sched, issue 18) the worker ran 3.79 s
/// with 40,588 context switches and the check 3.33 s; under `SCHED_IDLE`
/// the worker ran 4.61 s with 5,820 and the checks 1.77 s. Falls back to
/// nice 19, then to the normal priority, saying so at debug.
fn lower_this_thread() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use thread_priority::unix::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadSchedulePolicy,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        match set_thread_priority_and_policy(
            thread_native_id(),
            thread_priority::ThreadPriority::Min,
            idle,
        ) {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(target: "stepgate", error = ?e, "PIN hashing cannot use SCHED_IDLE; trying nice 19")
            }
        }
    }
    if let Err(e) =
        thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
    {
        tracing::debug!(target: "stepgate", error = ?e, "PIN hashing keeps the normal priority");
    }
}

/// Runs Argon2 on its own threads, one per permitted core, started on first
/// use at the lowest scheduling priority (`SCHED_IDLE`, or nice 19 where
/// that is refused): PIN checks never stall proxying, a storm of them queues
/// instead of exhausting memory (each hash uses ~19 MiB), and when cores are
/// short the proxy workers win.
pub struct Hasher {
    parallel: usize,
    argon: Argon2<'static>,
    queue: std::sync::OnceLock<std::sync::mpsc::Sender<Job>>,
}

type Job = Box<dyn FnOnce(&Argon2<'static>) + Send>;

impl Hasher {
    pub fn new(parallel: usize) -> Hasher {
        Hasher {
            parallel: parallel.max(1),
            argon: Argon2::default(),
            queue: std::sync::OnceLock::new(),
        }
    }

    fn start(&self) -> std::sync::mpsc::Sender<Job> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..self.parallel {
            let rx = rx.clone();
            let argon = self.argon.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("stepgate-pin-{i}"))
                .spawn(move || {
                    lower_this_thread();
                    loop {
                        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        job(&argon);
                        // (After a skipped job too: a no-op then.)
                        release_memory();
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(target: "stepgate", error = %e, "cannot start a PIN hashing thread");
            }
        }
        tx
    }

    /// Run `f` on a hashing thread and wait for its answer.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, FlowError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |argon| {
            // A check whose caller's future was dropped while it queued (its
            // task ended: a shutdown, a cancelled request) is not worth a
            // core and 19 MiB. Every caller reserves its lockout attempt
            // before it queues, so skipping gives nothing away.
            if tx.is_closed() {
                return;
            }
            let _ = tx.send(f(argon));
        });
        self.queue
            .get_or_init(|| self.start())
            .send(job)
            .map_err(|_| FlowError::Internal)?;
        rx.await.map_err(|_| FlowError::Internal)
    }

    pub async fn hash(self: &Arc<Self>, secret: String) -> Result<String, FlowError> {
        self.run(move |argon| {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            argon
                .hash_password(secret.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|_| FlowError::Internal)
        })
        .await?
    }

    pub async fn verify(self: &Arc<Self>, secret: String, phc: String) -> Result<bool, FlowError> {
        self.run(move |argon| {
            let parsed = PasswordHash::new(&phc).map_err(|_| FlowError::Internal)?;
            Ok(argon.verify_password(secret.as_bytes(), &parsed).is_ok())
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hashing threads run under `SCHED_IDLE`, so a proxy worker that
    /// wakes takes the core from an Argon2 check at once (issue 18: at nice
    /// 19, pass-through p99 during a PIN storm was 1.75x idle; under
    /// `SCHED_IDLE` 1.53x, benches/RESULTS.md).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn pin_checks_run_below_every_normal_thread() {
        use thread_priority::unix::{
            thread_schedule_policy, NormalThreadSchedulePolicy, ThreadSchedulePolicy,
        };
        let hasher = Hasher::new(1);
        let on_hasher = hasher
            .run(|_| thread_schedule_policy().expect("the thread's policy"))
            .await
            .expect("the job ran");
        assert_eq!(
            on_hasher,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
        );
        // The caller's own thread is left as it was.
        assert_ne!(
            thread_schedule_policy().expect("this thread's policy"),
            on_hasher
        );
    }

    /// A check whose caller is gone by the time a hashing thread is free is
    /// skipped, and the checks behind it are still answered.
    #[tokio::test]
    async fn a_check_whose_caller_left_is_not_run() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let hasher = Hasher::new(1);
        // The first job holds the one hashing thread until it is told to
        // go; the queue is FIFO, so the second waits behind it.
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let mut busy = Box::pin(hasher.run(move |_| hold_rx.recv().is_ok()));
        assert!(futures_util::poll!(busy.as_mut()).is_pending());
        let ran = Arc::new(AtomicBool::new(false));
        let seen = ran.clone();
        let mut abandoned = Box::pin(hasher.run(move |_| seen.store(true, Ordering::SeqCst)));
        assert!(futures_util::poll!(abandoned.as_mut()).is_pending());
        drop(abandoned); // the client left while its check was queued
        let after = hasher.run(|_| 7u8);
        hold_tx.send(()).unwrap();
        assert_eq!(busy.await, Ok(true));
        assert_eq!(after.await, Ok(7));
        assert!(!ran.load(Ordering::SeqCst), "the abandoned check ran");
    }
}
