//! The background worker pool (SPEC §6): a fixed number of workers over a
//! bounded queue. A full queue drops the job and says so; every job has a
//! timeout; a panicking job is caught and does not take its worker down;
//! shutdown drains the queue until the shutdown timeout, then drops the
//! rest. An unbounded strategy runs every job at once.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::{Error, Result};

/// How background jobs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerStrategy {
    /// `workers` workers take jobs from a queue of at most `queue` jobs.
    Pool {
        /// Number of workers; positive.
        workers: usize,
        /// Queue capacity; positive.
        queue: usize,
    },
    /// Every job starts at once, without bound (for tests and tiny
    /// deployments).
    Unbounded,
}

impl Default for WorkerStrategy {
    fn default() -> Self {
        WorkerStrategy::Pool {
            workers: 1,
            queue: 500,
        }
    }
}

/// A job: a future to run to completion.
pub(crate) type Task = BoxFuture<'static, ()>;

/// Counters of the pool.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Jobs that ran to completion.
    pub completed: AtomicU64,
    /// Jobs dropped because the queue was full or the pool closed.
    pub dropped: AtomicU64,
    /// Jobs stopped by the job timeout.
    pub timed_out: AtomicU64,
    /// Jobs that panicked.
    pub panicked: AtomicU64,
}

pub(crate) struct Pool {
    tx: std::sync::Mutex<Option<mpsc::Sender<Task>>>,
    strategy: WorkerStrategy,
    stats: Arc<PoolStats>,
    done: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

impl Pool {
    pub(crate) fn start(strategy: WorkerStrategy, job_timeout: Duration) -> Result<Self> {
        let capacity = match strategy {
            WorkerStrategy::Pool { workers: 0, .. } => {
                return Err(Error::InvalidConfig("workers: must be positive".into()));
            }
            WorkerStrategy::Pool { queue: 0, .. } => {
                return Err(Error::InvalidConfig("queue-size: must be positive".into()));
            }
            WorkerStrategy::Pool { queue, .. } => queue,
            // A semaphore, not an allocation: effectively unbounded.
            WorkerStrategy::Unbounded => 1 << 24,
        };
        if job_timeout.is_zero() {
            return Err(Error::InvalidConfig("job-timeout: must be positive".into()));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Other(format!("cannot start the worker pool: {e}")))?;
        let (tx, rx) = mpsc::channel::<Task>(capacity);
        let (done_tx, done_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let stats = Arc::new(PoolStats::default());
        let (workers, unbounded) = match strategy {
            WorkerStrategy::Pool { workers, .. } => (workers, false),
            WorkerStrategy::Unbounded => (1, true),
        };
        let rx = Arc::new(Mutex::new(rx));
        let worker_stats = Arc::clone(&stats);
        thread::Builder::new()
            .name("daramjwee-pool".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let workers = (0..workers).map(|_| {
                        let rx = Arc::clone(&rx);
                        let stats = Arc::clone(&worker_stats);
                        tokio::spawn(async move {
                            let mut running = tokio::task::JoinSet::new();
                            loop {
                                let task = rx.lock().await.recv().await;
                                let Some(task) = task else { break };
                                if unbounded {
                                    let stats = Arc::clone(&stats);
                                    running
                                        .spawn(async move { run(task, job_timeout, &stats).await });
                                } else {
                                    run(task, job_timeout, &stats).await;
                                }
                            }
                            while running.join_next().await.is_some() {}
                        })
                    });
                    let all = futures::future::join_all(workers.collect::<Vec<_>>());
                    tokio::select! {
                        _ = all => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime here cancels whatever still runs.
                drop(runtime);
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::Other(format!("cannot start the worker pool: {e}")))?;
        Ok(Pool {
            tx: std::sync::Mutex::new(Some(tx)),
            strategy,
            stats,
            done: std::sync::Mutex::new(Some(done_rx)),
            stop: std::sync::Mutex::new(Some(stop_tx)),
        })
    }

    /// Queue `task`; `Busy` when the queue is full, `Closed` after shutdown.
    pub(crate) fn submit(&self, task: Task) -> Result<()> {
        let guard = self.tx.lock().expect("lock");
        let Some(tx) = guard.as_ref() else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Closed);
        };
        tx.try_send(task).map_err(|e| {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => {
                    tracing::warn!("background queue full: job dropped");
                    Error::Busy
                }
                mpsc::error::TrySendError::Closed(_) => Error::Closed,
            }
        })
    }

    /// Jobs waiting in the queue.
    pub(crate) fn queued(&self) -> usize {
        match (self.strategy, self.tx.lock().expect("lock").as_ref()) {
            (WorkerStrategy::Pool { queue, .. }, Some(tx)) => queue - tx.capacity(),
            _ => 0,
        }
    }

    pub(crate) fn stats(&self) -> &Arc<PoolStats> {
        &self.stats
    }

    /// Stop taking jobs, let the workers drain the queue for at most
    /// `timeout`, then drop whatever is left. Idempotent.
    pub(crate) async fn shutdown(&self, timeout: Duration) {
        self.tx.lock().expect("lock").take();
        let done = self.done.lock().expect("lock").take();
        let Some(done) = done else { return };
        let mut done = std::pin::pin!(done);
        if tokio::time::timeout(timeout, &mut done).await.is_err() {
            let left = self.queued();
            tracing::warn!(
                left,
                "shutdown timeout: dropping unfinished background jobs"
            );
            if let Some(stop) = self.stop.lock().expect("lock").take() {
                let _ = stop.send(());
            }
            let _ = done.await;
        }
    }
}

async fn run(task: Task, timeout: Duration, stats: &PoolStats) {
    match tokio::time::timeout(timeout, AssertUnwindSafe(task).catch_unwind()).await {
        Ok(Ok(())) => stats.completed.fetch_add(1, Ordering::Relaxed),
        Ok(Err(_)) => {
            tracing::error!("background job panicked");
            stats.panicked.fetch_add(1, Ordering::Relaxed)
        }
        Err(_) => {
            tracing::warn!(?timeout, "background job timed out");
            stats.timed_out.fetch_add(1, Ordering::Relaxed)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn counting(n: &Arc<AtomicUsize>) -> Task {
        let n = Arc::clone(n);
        Box::pin(async move {
            n.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[tokio::test]
    async fn full_queue_drops_and_says_so() {
        let pool = Pool::start(
            WorkerStrategy::Pool {
                workers: 1,
                queue: 1,
            },
            Duration::from_secs(5),
        )
        .unwrap();
        let (gate_tx, gate_rx) = oneshot::channel::<()>();
        let (started_tx, started_rx) = oneshot::channel::<()>();
        pool.submit(Box::pin(async move {
            let _ = started_tx.send(());
            let _ = gate_rx.await;
        }))
        .unwrap();
        // The worker is busy with the first job: one more fits the queue.
        started_rx.await.unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        pool.submit(counting(&ran)).unwrap();
        assert_eq!(pool.submit(counting(&ran)), Err(Error::Busy));
        assert!(pool.stats().dropped.load(Ordering::Relaxed) >= 1);
        gate_tx.send(()).unwrap();
        pool.shutdown(Duration::from_secs(5)).await;
        assert!(
            ran.load(Ordering::SeqCst) >= 1,
            "queued jobs drain at shutdown"
        );
        assert_eq!(pool.submit(counting(&ran)), Err(Error::Closed));
    }

    #[tokio::test]
    async fn panicking_job_does_not_kill_the_pool() {
        let pool = Pool::start(
            WorkerStrategy::Pool {
                workers: 1,
                queue: 10,
            },
            Duration::from_secs(5),
        )
        .unwrap();
        pool.submit(Box::pin(async { panic!("job bug") })).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        pool.submit(counting(&ran)).unwrap();
        pool.shutdown(Duration::from_secs(5)).await;
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert_eq!(pool.stats().panicked.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn job_timeout_stops_a_stuck_job() {
        let pool = Pool::start(
            WorkerStrategy::Pool {
                workers: 1,
                queue: 10,
            },
            Duration::from_millis(50),
        )
        .unwrap();
        pool.submit(Box::pin(futures::future::pending())).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        pool.submit(counting(&ran)).unwrap();
        pool.shutdown(Duration::from_secs(5)).await;
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert_eq!(pool.stats().timed_out.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn shutdown_timeout_drops_unfinished_work() {
        let pool = Pool::start(
            WorkerStrategy::Pool {
                workers: 1,
                queue: 10,
            },
            Duration::from_secs(60),
        )
        .unwrap();
        pool.submit(Box::pin(futures::future::pending())).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        pool.submit(counting(&ran)).unwrap();
        pool.shutdown(Duration::from_millis(100)).await;
        assert_eq!(
            ran.load(Ordering::SeqCst),
            0,
            "the job behind the stuck one was dropped"
        );
    }

    #[tokio::test]
    async fn unbounded_runs_everything_at_once() {
        let pool = Pool::start(WorkerStrategy::Unbounded, Duration::from_secs(5)).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        // A stuck job does not hold the others back.
        pool.submit(Box::pin(futures::future::pending())).unwrap();
        for _ in 0..100 {
            pool.submit(counting(&ran)).unwrap();
        }
        for _ in 0..100 {
            if ran.load(Ordering::SeqCst) == 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ran.load(Ordering::SeqCst), 100);
    }

    #[test]
    fn bad_settings_are_named() {
        let e = |s, t| Pool::start(s, t).err().unwrap().to_string();
        assert!(
            e(
                WorkerStrategy::Pool {
                    workers: 0,
                    queue: 1
                },
                Duration::from_secs(1)
            )
            .contains("workers")
        );
        assert!(
            e(
                WorkerStrategy::Pool {
                    workers: 1,
                    queue: 0
                },
                Duration::from_secs(1)
            )
            .contains("queue-size")
        );
        assert!(e(WorkerStrategy::Unbounded, Duration::ZERO).contains("job-timeout"));
    }
}
