//! Where the ranks of a run meet, read from what a launcher puts in the environment.

use std::time::Duration;

use crate::DistributedError;

/// Where the ranks of a run meet and who this process is among them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendezvous {
    /// This process's rank, 0 ..= world - 1.
    pub rank: usize,
    pub world: usize,
    /// Rank among the processes of this host (the GPU it takes).
    pub local_rank: usize,
    /// The TCPStore's host and port (`MASTER_ADDR`, `MASTER_PORT`).
    pub host: String,
    pub port: u16,
    /// Whether this process hosts the store (rank 0, unless torchrun's agent hosts it).
    pub host_store: bool,
    /// Key prefix in the store, per launch attempt, so that a restarted job does not read the
    /// previous attempt's keys.
    pub prefix: String,
    /// How long the rendezvous and each collective may wait for a peer.
    pub timeout: Duration,
}

/// Collectives and the rendezvous wait this long for a peer unless `LLAMAGEN_DIST_TIMEOUT`
/// (seconds) says otherwise; PyTorch's default for Gloo is the same 30 minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

impl Rendezvous {
    /// The rendezvous a launcher described in this process's environment, or `None` for a
    /// single process (no launcher, or a world of one).
    pub fn from_env() -> Result<Option<Self>, DistributedError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Rendezvous::from_env`] over any variable lookup. Recognised, in order:
    ///
    /// - torchrun: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`; with
    ///   `TORCHELASTIC_USE_AGENT_STORE=True` the agent hosts the store and every rank connects,
    ///   under `TORCHELASTIC_RESTART_COUNT`'s attempt;
    /// - Slurm's `srun`: `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, with `MASTER_ADDR`
    ///   and `MASTER_PORT` exported by the batch script;
    /// - a Kubernetes indexed Job: `JOB_COMPLETION_INDEX` as the rank, with `WORLD_SIZE`,
    ///   `MASTER_ADDR` and `MASTER_PORT` in the pod template.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, DistributedError> {
        let number = |name: &str| -> Result<Option<usize>, DistributedError> {
            var(name)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        DistributedError::Environment(format!("{name}={v:?} is not a number"))
                    })
                })
                .transpose()
        };
        let (rank, world, local_rank) = if let Some(rank) = number("RANK")? {
            let world = number("WORLD_SIZE")?.ok_or_else(|| {
                DistributedError::Environment("RANK is set but WORLD_SIZE is not".into())
            })?;
            (rank, world, number("LOCAL_RANK")?.unwrap_or(0))
        } else if let Some(rank) = number("SLURM_PROCID")? {
            let world = number("SLURM_NTASKS")?.unwrap_or(1);
            (rank, world, number("SLURM_LOCALID")?.unwrap_or(0))
        } else if let Some(rank) = number("JOB_COMPLETION_INDEX")? {
            let world = number("WORLD_SIZE")?.ok_or_else(|| {
                DistributedError::Environment(
                    "JOB_COMPLETION_INDEX is set but WORLD_SIZE is not (the Job's completions)"
                        .into(),
                )
            })?;
            (rank, world, 0)
        } else {
            return Ok(None);
        };
        if world <= 1 {
            return Ok(None);
        }
        if rank >= world {
            return Err(DistributedError::Environment(format!(
                "rank {rank} is not below the world size {world}"
            )));
        }
        let host = var("MASTER_ADDR").ok_or_else(|| {
            DistributedError::Environment(format!(
                "{world} ranks but no MASTER_ADDR: the host of rank 0 (or of torchrun's agent)"
            ))
        })?;
        let port = match var("MASTER_PORT") {
            Some(p) => p.trim().parse::<u16>().map_err(|_| {
                DistributedError::Environment(format!("MASTER_PORT={p:?} is not a port"))
            })?,
            None => 29500,
        };
        let agent_store = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True");
        let attempt = var("TORCHELASTIC_RESTART_COUNT").unwrap_or_else(|| "0".into());
        let timeout = match var("LLAMAGEN_DIST_TIMEOUT") {
            Some(s) => Duration::from_secs_f64(
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0)
                    .ok_or_else(|| {
                        DistributedError::Environment(format!(
                            "LLAMAGEN_DIST_TIMEOUT={s:?} is not a positive number of seconds"
                        ))
                    })?,
            ),
            None => DEFAULT_TIMEOUT,
        };
        Ok(Some(Rendezvous {
            rank,
            world,
            local_rank,
            host,
            port,
            host_store: rank == 0 && !agent_store,
            prefix: format!("/llamagen/attempt_{attempt}/"),
            timeout,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn each_launcher_is_read() {
        assert_eq!(Rendezvous::from_vars(vars(&[])).unwrap(), None);
        let one = [("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "h")];
        assert_eq!(Rendezvous::from_vars(vars(&one)).unwrap(), None);

        let torchrun = Rendezvous::from_vars(vars(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node-a"),
            ("MASTER_PORT", "29400"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (torchrun.rank, torchrun.world, torchrun.local_rank),
            (1, 4, 1)
        );
        assert_eq!((torchrun.host.as_str(), torchrun.port), ("node-a", 29400));
        assert!(!torchrun.host_store);
        assert_eq!(torchrun.prefix, "/llamagen/attempt_2/");

        let srun = Rendezvous::from_vars(vars(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "0"),
            ("MASTER_ADDR", "node-b"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((srun.rank, srun.world, srun.port), (0, 8, 29500));
        assert!(srun.host_store, "rank 0 hosts the store without an agent");

        let job = Rendezvous::from_vars(vars(&[
            ("JOB_COMPLETION_INDEX", "3"),
            ("WORLD_SIZE", "4"),
            ("MASTER_ADDR", "train-0.train"),
            ("LLAMAGEN_DIST_TIMEOUT", "60"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((job.rank, job.world), (3, 4));
        assert_eq!(job.timeout, Duration::from_secs(60));
    }

    #[test]
    fn a_bad_environment_is_named() {
        for (pairs, expected) in [
            (vec![("RANK", "x"), ("WORLD_SIZE", "2")], "RANK=\"x\""),
            (vec![("RANK", "1")], "WORLD_SIZE is not"),
            (
                vec![("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")],
                "not below",
            ),
            (vec![("RANK", "1"), ("WORLD_SIZE", "2")], "no MASTER_ADDR"),
            (
                vec![
                    ("RANK", "1"),
                    ("WORLD_SIZE", "2"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "99999"),
                ],
                "MASTER_PORT",
            ),
            (vec![("JOB_COMPLETION_INDEX", "1")], "completions"),
        ] {
            let err = Rendezvous::from_vars(vars(&pairs)).unwrap_err().to_string();
            assert!(err.contains(expected), "{pairs:?}: {err}");
        }
    }
}
