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

/// SIGTERM or Ctrl-C (or [`StopSignal::request`] from inside the process), observed without
/// ending the process: the worker decides what to do with the shard in hand.
#[derive(Clone)]
pub struct StopSignal {
    rx: tokio::sync::watch::Receiver<bool>,
    tx: Option<std::sync::Arc<tokio::sync::watch::Sender<bool>>>,
}

impl StopSignal {
    pub fn listen() -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let tx = std::sync::Arc::new(tx);
        let on_signal = tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = on_signal.send(true);
        });
        Self { rx, tx: Some(tx) }
    }

    /// A signal that is never raised (for work that must run to its end).
    pub fn never() -> Self {
        let (_, rx) = tokio::sync::watch::channel(false);
        Self { rx, tx: None }
    }

    /// Asks every holder of this signal to stop, as SIGTERM would.
    pub fn request(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(true);
        }
    }

    pub fn requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when a stop is requested.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
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
