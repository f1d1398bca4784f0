//! Why the store could not connect, address by address. tokio-postgres tries every address a
//! host name resolves to and reports only the last failure. On a machine where `localhost` is
//! both `::1` and `127.0.0.1` and the server listens on one of them only (a container without
//! IPv6), the last failure can be "Cannot assign requested address" for the other one, hiding
//! what the server itself said (a TLS, password or database refusal). So when opening the store
//! fails, each address of a single-host URL is tried alone, and a refusal from a server that
//! answered is reported instead.

use std::{io, time::Duration};

use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The failure of the first address where a server answered (and refused), if the URL names
/// one host that resolves to several addresses; `None` when there is nothing better to say
/// (one address, several hosts, or every address failed before reaching a server).
pub(super) async fn refusal_by_address(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    timeout: Duration,
) -> Option<tokio_postgres::Error> {
    let ([Host::Tcp(host)], []) = (config.get_hosts(), config.get_hostaddrs()) else {
        return None;
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let addresses: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .ok()?
        .collect();
    if addresses.len() < 2 {
        return None;
    }
    for address in addresses {
        let mut one = config.clone();
        one.hostaddr(address.ip()).connect_timeout(timeout);
        match one.connect(tls.clone()).await {
            // This address works: the failure was a passing one, and it said so.
            Ok(_) => return None,
            Err(error) if reached_a_server(&error) => return Some(error),
            Err(_) => {}
        }
    }
    None
}

/// Whether `error` came from a server that answered, not from failing to reach one.
fn reached_a_server(error: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return !matches!(
                io.kind(),
                io::ErrorKind::AddrNotAvailable
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::HostUnreachable
                    | io::ErrorKind::TimedOut
            );
        }
        source = cause.source();
    }
    true
}
