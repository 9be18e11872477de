//! SIGTERM and Ctrl-C: what the long-running commands (ingest, run, schedule, serve) do when
//! asked to stop.

use std::time::Duration;

/// Exit status of a command stopped by SIGTERM or Ctrl-C with its work left resumable (128 +
/// SIGTERM, as a shell reports a process the signal ended).
pub const EXIT_STOPPED: u8 = 143;

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// SIGTERM or Ctrl-C, observed without ending the process: the worker decides what to do
/// with the shard in hand.
#[derive(Clone)]
pub struct StopSignal(tokio::sync::watch::Receiver<bool>);

impl StopSignal {
    pub fn listen() -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = tx.send(true);
        });
        Self(rx)
    }

    pub fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when a stop is requested.
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|stop| *stop).await.is_err() {
            // The listener is gone without a signal: never stop.
            std::future::pending::<()>().await;
        }
    }

    /// Resolves `grace` after a stop is requested (calling `announce` when it is).
    pub async fn then_wait(&self, grace: Duration, announce: impl FnOnce()) {
        self.wait().await;
        announce();
        tokio::time::sleep(grace).await;
    }
}
