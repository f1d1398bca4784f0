//! Configuration pieces both binaries share, read from the environment (or flags of the same
//! meaning) with validation that names the bad variable.
//!
//! Each binary flattens these into its own `clap` parser; a bad value stops the process at start
//! with clap's message, which names the variable (`<WARREN_...>`) and the reason.

use std::{fmt, str::FromStr, time::Duration};

use clap::{Args, ValueEnum};
use lapin::uri::AMQPUri;

/// The default backoff tiers between attempts.
pub const DEFAULT_RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
];

/// Heartbeat interval asked for when the URL does not set one: a dead TCP connection is noticed
/// within two intervals.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;
/// Connect timeout asked for when the URL does not set one.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// Where RabbitMQ is and which deployment's names to use on it.
#[derive(Debug, Clone, Args)]
pub struct BrokerConfig {
    /// RabbitMQ's AMQP URL, or several comma-separated URLs of one cluster's nodes (tried in
    /// turn). Heartbeat (10 s) and connect timeout (5 s) are added when a URL does not set them.
    #[arg(
        long = "amqp-url",
        env = "WARREN_AMQP_URL",
        value_name = "WARREN_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: AmqpUrl,

    /// Prefix of every exchange and queue name, so deployments and test runs can share a broker.
    #[arg(
        long = "namespace",
        env = "WARREN_NAMESPACE",
        value_name = "WARREN_NAMESPACE",
        default_value = "warren",
        value_parser = parse_namespace
    )]
    pub namespace: String,

    /// Backoff tiers between attempts (comma list such as `1s,5s,30s,2m,10m`); each is a wait
    /// queue `<ns>.retry.<delay>`. Every process of a deployment must use the same list.
    #[arg(
        long = "retry-delays",
        env = "WARREN_RETRY_DELAYS",
        value_name = "WARREN_RETRY_DELAYS",
        default_value = "1s,5s,30s,2m,10m",
        value_delimiter = ',',
        value_parser = parse_delay
    )]
    pub retry_delays: Vec<Duration>,

    /// Most jobs a job queue holds; past it, submits are refused with 503 (unset: unbounded).
    #[arg(
        long = "queue-max-length",
        env = "WARREN_QUEUE_MAX_LENGTH",
        value_name = "WARREN_QUEUE_MAX_LENGTH",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub queue_max_length: Option<u32>,

    /// TLS files for `amqps://` (and, in the gateway, PostgreSQL).
    #[command(flatten)]
    pub tls: crate::tls::TlsConfig,
}

impl BrokerConfig {
    /// A configuration for `url` and `namespace` with default tiers and unbounded queues, as
    /// tests and embedders build it.
    pub fn new(url: &str, namespace: &str) -> Result<Self, String> {
        Ok(Self {
            amqp_url: url.parse()?,
            namespace: parse_namespace(namespace)?,
            retry_delays: DEFAULT_RETRY_DELAYS.to_vec(),
            queue_max_length: None,
            tls: crate::tls::TlsConfig::default(),
        })
    }
}

/// Reads a delay such as `500ms`, `5s`, `2m`, `1h` or `7d`.
pub fn parse_delay(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let amount: u64 = number.parse().map_err(|_| {
        format!("{value:?} is not a duration: use a number and a unit, e.g. 500ms, 5s, 2m, 1h, 7d")
    })?;
    let seconds_per_unit = match unit {
        "ms" => return positive(value, Duration::from_millis(amount)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{value:?} has an unknown unit: use ms, s, m, h or d"
            ));
        }
    };
    let seconds = amount
        .checked_mul(seconds_per_unit)
        .ok_or_else(|| format!("{value:?} is too large a duration"))?;
    positive(value, Duration::from_secs(seconds))
}

/// `delay`, unless it is zero.
fn positive(value: &str, delay: Duration) -> Result<Duration, String> {
    if delay.is_zero() {
        return Err(format!("{value:?} is zero: it must be positive"));
    }
    Ok(delay)
}

/// Reads a listen address: `ip:port`, or `host:port` resolved once at start (an IPv4 address
/// when the host has one, so `localhost:8080` listens where most clients look).
pub fn parse_listen_addr(value: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let addresses: Vec<std::net::SocketAddr> = value
        .to_socket_addrs()
        .map_err(|e| format!("{value:?} is not an ip:port or host:port address ({e})"))?
        .collect();
    addresses
        .iter()
        .find(|address| address.is_ipv4())
        .or_else(|| addresses.first())
        .copied()
        .ok_or_else(|| format!("{value:?} resolves to no address"))
}

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured when writing to a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging settings (the filter itself comes from `RUST_LOG`).
#[derive(Debug, Clone, Args)]
pub struct TelemetryConfig {
    /// `pretty` or `json`.
    #[arg(
        long = "log-format",
        env = "WARREN_LOG_FORMAT",
        value_name = "WARREN_LOG_FORMAT",
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
}

/// How long a process may take to finish work in flight after SIGTERM.
#[derive(Debug, Clone, Args)]
pub struct ShutdownConfig {
    /// Seconds to finish work in flight after SIGTERM before giving up on it.
    #[arg(
        long = "shutdown-grace-secs",
        env = "WARREN_SHUTDOWN_GRACE_SECS",
        value_name = "WARREN_SHUTDOWN_GRACE_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(0..=3600)
    )]
    pub shutdown_grace_secs: u64,
}

impl ShutdownConfig {
    /// The grace period as a duration.
    #[must_use]
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// One validated AMQP URL, or several of one cluster's nodes; `Debug` and `Display` hide the
/// passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    nodes: Vec<AMQPUri>,
}

impl AmqpUrl {
    /// The URL of the first node, password included. Never log this.
    #[must_use]
    pub fn expose(&self) -> String {
        self.nodes
            .first()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    /// Every node: `(host:port, URL to connect with, password included)`. Never log the URL.
    #[must_use]
    pub fn nodes(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .map(|uri| (node_label(uri), uri.to_string()))
            .collect()
    }
}

/// A node as logs name it: `host:port`.
fn node_label(uri: &AMQPUri) -> String {
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

fn parse_one(s: &str) -> Result<AMQPUri, String> {
    let mut uri = AMQPUri::from_str(s).map_err(|reason| {
        format!("not an AMQP URL ({reason}); expected e.g. amqp://user:pass@host:5672/%2f")
    })?;
    uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
    uri.query
        .connection_timeout
        .get_or_insert(DEFAULT_CONNECT_TIMEOUT_MS);
    Ok(uri)
}

impl FromStr for AmqpUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let mut nodes = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let uri = parse_one(part).map_err(|reason| {
                if parts.len() == 1 {
                    reason
                } else {
                    format!("URL {} of {}: {reason}", i + 1, parts.len())
                }
            })?;
            nodes.push(uri);
        }
        Ok(Self { nodes })
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, uri) in self.nodes.iter().enumerate() {
            let authority = &uri.authority;
            let separator = if i == 0 { "" } else { "," };
            let vhost = uri.vhost.replace('%', "%25").replace('/', "%2f");
            let scheme = match uri.scheme {
                lapin::uri::AMQPScheme::AMQP => "amqp",
                lapin::uri::AMQPScheme::AMQPS => "amqps",
            };
            write!(
                f,
                "{separator}{scheme}://{}:***@{}:{}/{vhost}",
                authority.userinfo.username, authority.host, authority.port
            )?;
        }
        Ok(())
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({self})")
    }
}

/// Namespaces become the start of exchange and queue names: keep them short and plain.
pub fn parse_namespace(value: &str) -> Result<String, String> {
    let valid_chars = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if value.is_empty() || value.len() > 64 || !valid_chars {
        Err(format!(
            "namespace {value:?} is invalid: use 1 to 64 letters, digits, '.', '_' or '-'"
        ))
    } else {
        Ok(value.to_owned())
    }
}

/// Parses a secret setting (e.g. `WARREN_ADMIN_KEY`, `WARREN_WEBHOOK_SECRET`) without ever echoing
/// it: a refusal names the variable and the rule, never the value (clap's own message would
/// print "invalid value '<the secret>'" to the log).
#[derive(Clone, Copy)]
pub struct SecretParser<T>(pub fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for SecretParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        _command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let name = arg
            .and_then(|arg| arg.get_value_names())
            .and_then(|names| names.first())
            .map_or_else(|| "a secret setting".to_owned(), ToString::to_string);
        let refuse = |why: &str| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("{name} is refused (its value is not shown): {why}\n"),
            )
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse("it is not valid UTF-8"))?;
        (self.0)(text).map_err(|why| refuse(&why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_url_gets_heartbeat_and_hides_the_password() {
        let url: AmqpUrl = "amqp://user:s3cret@rabbit:5672/%2f".parse().unwrap();
        assert!(url.expose().contains("heartbeat=10"), "{}", url.expose());
        assert!(url.expose().contains("s3cret"));
        assert!(!format!("{url} {url:?}").contains("s3cret"));
    }

    #[test]
    fn amqp_url_keeps_an_explicit_heartbeat_and_refuses_garbage() {
        let url: AmqpUrl = "amqp://u:p@h:5672/%2f?heartbeat=3".parse().unwrap();
        assert!(url.expose().contains("heartbeat=3"));
        let err = "http://nope".parse::<AmqpUrl>().unwrap_err();
        assert!(err.contains("not an AMQP URL"), "{err}");
    }

    #[test]
    fn several_urls_are_a_cluster_and_a_bad_one_is_named() {
        let url: AmqpUrl = "amqp://u:p1@a:5672/%2f, amqp://u:p2@b:5673/%2f,amqp://u:p3@c:5674/%2f"
            .parse()
            .unwrap();
        let labels: Vec<String> = url.nodes().into_iter().map(|(label, _)| label).collect();
        assert_eq!(labels, ["a:5672", "b:5673", "c:5674"]);
        assert!(
            url.nodes()
                .iter()
                .all(|(_, uri)| uri.contains("heartbeat=10"))
        );
        let shown = format!("{url} {url:?}");
        assert!(
            shown.starts_with("amqp://u:***@a:5672/%2f,amqp://u:***@b:5673/%2f"),
            "{shown}"
        );
        assert!(!shown.contains("p1") && !shown.contains("p2") && !shown.contains("p3"));
        let err = "amqp://u:p@a:5672/%2f,http://nope"
            .parse::<AmqpUrl>()
            .unwrap_err();
        assert!(err.starts_with("URL 2 of 2: not an AMQP URL"), "{err}");
    }

    #[test]
    fn delays_read_with_units_and_refuse_nonsense() {
        assert_eq!(parse_delay("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_delay("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_delay("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "5", "s", "0s", "5w", "-1s", "999999999999999999d"] {
            assert!(parse_delay(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_addresses_take_host_names() {
        assert_eq!(
            parse_listen_addr("localhost:8080")
                .map(|a| a.to_string())
                .as_deref(),
            Ok("127.0.0.1:8080")
        );
        assert_eq!(
            parse_listen_addr("0.0.0.0:9090").map(|a| a.port()),
            Ok(9090)
        );
        for bad in ["8080", "localhost", "nope nope:1"] {
            assert!(parse_listen_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn namespace_validation_names_the_rule() {
        assert!(parse_namespace("warren-test_1.a").is_ok());
        for bad in ["", "has space", "a/b", &"x".repeat(65)] {
            assert!(parse_namespace(bad).unwrap_err().contains("namespace"));
        }
    }
}
