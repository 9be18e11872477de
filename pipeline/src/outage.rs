//! Riding out a database outage (a PostgreSQL restart, a failover, a network blip) in the
//! workers' bookkeeping: the shard in hand keeps going while the database is away, and the
//! calls that record it are asked again until they get through.

use std::future::Future;
use std::time::{Duration, Instant};

use llamagen_store::StoreError;

use crate::signals::StopSignal;

/// How long a worker waits for the database before it gives up with the error.
pub const OUTAGE_LIMIT: Duration = Duration::from_secs(600);

/// `call` until it gets through: an outage ([`StoreError::is_outage`]) is retried after 1, 2,
/// 4, ... up to 30 s, for at most `limit`; any other error is returned at once, and so is the
/// outage's error once `limit` has passed or a stop is requested.
pub async fn through_outage<T, F, Fut>(
    what: &str,
    limit: Duration,
    stop: Option<&StopSignal>,
    mut call: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let started = Instant::now();
    let mut wait = Duration::from_secs(1);
    loop {
        match call().await {
            Err(e) if e.is_outage() && started.elapsed() + wait <= limit => {
                eprintln!(
                    "{what}: {e}; the database is out of reach, asking again in {} s",
                    wait.as_secs()
                );
                let stopped = async {
                    match stop {
                        Some(stop) => stop.wait().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stopped => return Err(e),
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            result => return result,
        }
    }
}
