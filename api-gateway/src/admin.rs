//! `warren-admin`, the operator's command line: `remove-namespace` removes a namespace's queues
//! and exchanges (see [`warren_shared::removal`]). The names come from RabbitMQ's management
//! API when `WARREN_MANAGEMENT_URL` is given (every `<ns>.*` queue and exchange, whatever
//! job types its workers had), otherwise from what Warren declares: the core topology, the
//! retry tiers of `WARREN_RETRY_DELAYS`, and the job queues of every type in the namespace's
//! registry (each worker leaves its types there) and of `--types`.

use clap::{Parser, Subcommand};
use lapin::{Connection, ConnectionProperties, uri::AMQPUri};
use serde::Deserialize;
use warren_shared::{
    JobType, Topology,
    config::BrokerConfig,
    removal::{self, Names, Removed},
};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "warren-admin",
    version,
    about = "Operations on a Warren deployment's RabbitMQ topology"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The operations.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Removes a namespace's queues and exchanges (refused while any queue has consumers).
    RemoveNamespace(RemoveNamespace),
}

/// `remove-namespace`'s arguments.
#[derive(Debug, clap::Args)]
pub struct RemoveNamespace {
    /// The broker, the namespace (`WARREN_NAMESPACE`) and its retry tiers.
    #[command(flatten)]
    pub broker: BrokerConfig,
    /// Job types whose queues to remove too (comma list), beside those the namespace's registry
    /// names, when the management API is not used.
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<JobType>,
    /// RabbitMQ's management API (e.g. `http://127.0.0.1:15672`), to find every queue and
    /// exchange of the namespace; it uses the AMQP URL's user and password.
    #[arg(
        long = "management-url",
        env = "WARREN_MANAGEMENT_URL",
        value_name = "WARREN_MANAGEMENT_URL"
    )]
    pub management_url: Option<String>,
    /// Remove even while gateways or workers consume (they lose their queues).
    #[arg(long)]
    pub force: bool,
}

/// Why the command failed; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The broker could not be reached.
    #[error("cannot connect to RabbitMQ (WARREN_AMQP_URL): {0}")]
    Connect(lapin::Error),
    /// The management API could not be read.
    #[error("cannot list the namespace through the management API (WARREN_MANAGEMENT_URL): {0}")]
    Management(String),
    /// The removal was refused or failed.
    #[error(transparent)]
    Removal(#[from] removal::RemovalError),
}

/// One queue or exchange as the management API lists it.
#[derive(Debug, Deserialize)]
struct Listed {
    name: String,
}

/// Every queue and exchange whose name starts with `<namespace>.`, from the management API.
async fn listed_names(base: &str, uri: &AMQPUri, namespace: &str) -> Result<Names, AdminError> {
    crate::webhooks::install_tls_provider();
    let client = reqwest::Client::new();
    let vhost = if uri.vhost == "/" {
        "%2f".to_owned()
    } else {
        uri.vhost.clone()
    };
    let prefix = format!("{namespace}.");
    let mut names = Names::default();
    for (kind, target) in [
        ("queues", &mut names.queues),
        ("exchanges", &mut names.exchanges),
    ] {
        let url = format!(
            "{}/api/{kind}/{vhost}?columns=name",
            base.trim_end_matches('/')
        );
        let response = client
            .get(&url)
            .basic_auth(
                &uri.authority.userinfo.username,
                Some(&uri.authority.userinfo.password),
            )
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|error| AdminError::Management(format!("GET {url}: {error}")))?;
        let listed: Vec<Listed> = response
            .json()
            .await
            .map_err(|error| AdminError::Management(format!("GET {url}: {error}")))?;
        target.extend(
            listed
                .into_iter()
                .map(|l| l.name)
                .filter(|n| n.starts_with(&prefix)),
        );
    }
    Ok(names)
}

/// Runs `remove-namespace`; what was removed.
pub async fn remove_namespace(args: &RemoveNamespace) -> Result<Removed, AdminError> {
    let url = args.broker.amqp_url.expose();
    let uri: AMQPUri = url
        .parse()
        .map_err(|error: String| AdminError::Management(format!("unreadable AMQP URL: {error}")))?;
    let topology = Topology::from_config(&args.broker);
    let tls = args
        .broker
        .tls
        .amqp()
        .map_err(|error| AdminError::Management(error.to_string()))?;
    let runtime = lapin::runtime::default_runtime().map_err(AdminError::Connect)?;
    let connection =
        Connection::connect_with_config(&url, ConnectionProperties::default(), tls, runtime)
            .await
            .map_err(AdminError::Connect)?;
    let names = match &args.management_url {
        Some(base) => listed_names(base, &uri, topology.namespace()).await?,
        None => {
            // The job types workers registered, and any the operator named.
            let mut types = removal::registered_types(&connection, &topology)
                .await
                .map_err(AdminError::Connect)?;
            types.extend(args.types.iter().cloned());
            types.sort_unstable();
            types.dedup();
            Names::declared(&topology, &types)
        }
    };
    let removed = removal::remove(&connection, &names, args.force).await;
    let _closed = connection.close(200, "warren-admin done".into()).await;
    Ok(removed?)
}
