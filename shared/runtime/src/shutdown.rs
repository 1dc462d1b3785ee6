//! Graceful shutdown. One [`CancellationToken`] is passed into every task; the first SIGINT or
//! SIGTERM cancels it so tasks stop polling, finish in-flight work and commit positions; a
//! second signal exits the process at once. [`Shutdown::drain`] bounds the drain by a deadline.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The process-wide shutdown handle.
#[derive(Debug, Clone)]
pub struct Shutdown {
    token: CancellationToken,
    drain_deadline: Duration,
}

/// Returned by [`Shutdown::drain`] when the deadline passed before the work finished.
#[derive(Debug, thiserror::Error)]
#[error("drain did not finish within {0:?}")]
pub struct DrainTimedOut(pub Duration);

/// Keeps the signal listener alive; dropping it stops listening.
#[derive(Debug)]
pub struct ShutdownGuard(tokio::task::JoinHandle<()>);

impl Drop for ShutdownGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Shutdown {
    /// A handle with no signal handling (tests cancel it by hand).
    pub fn new(drain_deadline: Duration) -> Self {
        Self {
            token: CancellationToken::new(),
            drain_deadline,
        }
    }

    /// The token to hand to tasks.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Cancels everything (as the first signal would).
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Listens for SIGINT/SIGTERM: the first cancels the token, the second exits with 130.
    pub fn listen_for_signals(&self) -> ShutdownGuard {
        let token = self.token.clone();
        ShutdownGuard(tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested; draining (send the signal again to exit now)");
            token.cancel();
            wait_for_signal().await;
            tracing::warn!("second signal; exiting without draining");
            std::process::exit(130);
        }))
    }

    /// Awaits `work` (which should itself watch the token) for at most the drain deadline.
    pub async fn drain<F: Future>(&self, work: F) -> Result<F::Output, DrainTimedOut> {
        tokio::time::timeout(self.drain_deadline, work)
            .await
            .map_err(|_| DrainTimedOut(self.drain_deadline))
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {},
                    _ = term.recv() => {},
                }
            }
            _ => {
                // Could not install handlers: fall back to Ctrl-C only.
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_returns_the_work_when_it_finishes_in_time() {
        let s = Shutdown::new(Duration::from_secs(5));
        let out = s
            .drain(async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                7
            })
            .await
            .unwrap();
        assert_eq!(out, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_at_the_deadline() {
        let s = Shutdown::new(Duration::from_secs(5));
        let res = s.drain(tokio::time::sleep(Duration::from_secs(60))).await;
        assert!(res.is_err());
    }

    #[tokio::test]
    async fn trigger_cancels_every_clone_of_the_token() {
        let s = Shutdown::new(Duration::from_secs(1));
        let a = s.token();
        let b = s.token();
        s.trigger();
        assert!(a.is_cancelled() && b.is_cancelled());
    }
}
