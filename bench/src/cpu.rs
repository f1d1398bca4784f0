//! Where each job's CPU goes: CPU time of every process taking part (gateways, workers,
//! RabbitMQ, PostgreSQL, this client), read from `/proc/<pid>/stat` before and after a measured
//! phase, and the broker's own counters of messages received, confirmed, routed and delivered
//! (`rabbitmqctl eval 'rabbit_global_counters:overview().'`, no management plugin needed).

use std::{collections::BTreeMap, process::Command};

use serde_json::{Value, json};

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU ticks (user + system) of one process, if it still exists.
fn ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are space-separated.
    let after_name = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// Every process whose command name is `name`, with the command line it runs.
fn processes_named(name: &str) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
        .map(|pid| {
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .replace('\0', " ");
            (pid, cmdline)
        })
        .collect()
}

/// Whether RabbitMQ process `pid` is the machine's own node (`rabbit@…`, the default), not a
/// node a test or script started beside it under another `RABBITMQ_NODENAME`.
fn is_default_node(pid: u32) -> bool {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    environ
        .split(|byte| *byte == 0)
        .filter_map(|entry| entry.strip_prefix(b"RABBITMQ_NODENAME="))
        .all(|name| name.starts_with(b"rabbit@"))
}

/// The processes of one side of the measurement, by role.
#[derive(Debug, Clone, Default)]
pub(crate) struct Roles {
    /// Role name → process ids.
    pids: BTreeMap<&'static str, Vec<u32>>,
}

impl Roles {
    /// The gateways and workers of a stack, the machine's RabbitMQ (its default node, not a
    /// test cluster's) and PostgreSQL (every backend of every cluster), and this client.
    pub(crate) fn of(gateways: &[u32], workers: &[u32]) -> Self {
        let mut pids = BTreeMap::new();
        pids.insert("gateways", gateways.to_vec());
        pids.insert("workers", workers.to_vec());
        let broker: Vec<u32> = processes_named("beam.smp")
            .into_iter()
            .filter(|(pid, cmdline)| cmdline.contains("-s rabbit boot") && is_default_node(*pid))
            .map(|(pid, _)| pid)
            .collect();
        pids.insert("rabbitmq", broker);
        pids.insert("postgresql", Vec::new());
        pids.insert("client", vec![std::process::id()]);
        Self { pids }
    }

    /// A reading of every role's CPU ticks (PostgreSQL's backends come and go, so they are
    /// looked up at each reading).
    pub(crate) fn read(&self) -> Reading {
        let mut ticks_by_role = BTreeMap::new();
        for (role, pids) in &self.pids {
            let pids: Vec<u32> = if *role == "postgresql" {
                processes_named("postgres")
                    .into_iter()
                    .map(|(pid, _)| pid)
                    .collect()
            } else {
                pids.clone()
            };
            let per_pid: BTreeMap<u32, u64> = pids
                .iter()
                .filter_map(|pid| Some((*pid, ticks(*pid)?)))
                .collect();
            ticks_by_role.insert(*role, per_pid);
        }
        Reading {
            ticks: ticks_by_role,
            broker: broker_counters(),
        }
    }
}

/// CPU ticks per role and process, and the broker's counters, at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    ticks: BTreeMap<&'static str, BTreeMap<u32, u64>>,
    broker: BTreeMap<&'static str, u64>,
}

impl Reading {
    /// CPU milliseconds per job of each role, and the broker's messages per job, from `self`
    /// to `later` over `jobs` jobs. A process that appeared in between counts from zero (a
    /// PostgreSQL backend opened meanwhile); one that ended is left out.
    pub(crate) fn per_job(&self, later: &Self, jobs: usize) -> Value {
        #[allow(clippy::cast_precision_loss)]
        let jobs = jobs.max(1) as f64;
        let mut cpu = serde_json::Map::new();
        let mut total = 0.0;
        for (role, after) in &later.ticks {
            let before = self.ticks.get(role);
            let spent: u64 = after
                .iter()
                .map(|(pid, t)| {
                    t - before
                        .and_then(|b| b.get(pid))
                        .copied()
                        .unwrap_or(0)
                        .min(*t)
                })
                .sum();
            #[allow(clippy::cast_precision_loss)]
            let ms = spent as f64 * 1000.0 / TICKS_PER_SECOND / jobs;
            total += ms;
            cpu.insert((*role).to_owned(), json!(ms));
        }
        cpu.insert("total".to_owned(), json!(total));
        let mut broker = serde_json::Map::new();
        for (counter, after) in &later.broker {
            let before = self.broker.get(counter).copied().unwrap_or(0);
            #[allow(clippy::cast_precision_loss)]
            broker.insert(
                (*counter).to_owned(),
                json!(after.saturating_sub(before) as f64 / jobs),
            );
        }
        json!({"cpu_ms_per_job": cpu, "broker_per_job": broker})
    }
}

/// The broker's global message counters (summed over queue types), or none if `rabbitmqctl`
/// cannot be run here.
fn broker_counters() -> BTreeMap<&'static str, u64> {
    let Ok(output) = Command::new("rabbitmqctl")
        .args(["eval", "rabbit_global_counters:overview()."])
        .output()
    else {
        return BTreeMap::new();
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let sum = |name: &str| -> u64 {
        text.match_indices(&format!("{name} => "))
            .filter_map(|(at, found)| {
                let digits: String = text[at + found.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse::<u64>().ok()
            })
            .sum()
    };
    [
        ("messages_received", "messages_received_total"),
        ("confirms", "messages_confirmed_total"),
        ("messages_routed", "messages_routed_total"),
        ("deliveries", "messages_delivered_total"),
        ("acks", "messages_acknowledged_total"),
    ]
    .into_iter()
    .map(|(label, counter)| (label, sum(counter)))
    .collect()
}
