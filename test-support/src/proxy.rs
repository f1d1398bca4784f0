//! A TCP proxy between the app and RabbitMQ (or PostgreSQL) that a test can cut and restore,
//! or stall and heal, so an outage or a partition can be staged without touching the servers
//! other tests share. A stall stops forwarding without closing anything: bytes wait, as on a
//! link that went silent.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// A running proxy to a local service.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stalled: watch::Sender<bool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to RabbitMQ on a free local port.
    pub async fn start() -> Self {
        Self::to("127.0.0.1:5672").await
    }

    /// Starts a proxy to `target` on a free local port.
    pub async fn to(target: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let (stalled, _) = watch::channel(false);
        let links = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let (cut, links, stalled) = (cut.clone(), links.clone(), stalled.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropping the socket refuses the connection
                    }
                    let stalled = stalled.subscribe();
                    let link = tokio::spawn(async move {
                        let mut open = stalled.clone();
                        // A connection made during a stall waits for the heal.
                        let _ = open.wait_for(|stalled| !stalled).await;
                        if let Ok(server) = TcpStream::connect(target).await {
                            let (client_read, client_write) = client.into_split();
                            let (server_read, server_write) = server.into_split();
                            tokio::join!(
                                forward(client_read, server_write, stalled.clone()),
                                forward(server_read, client_write, stalled),
                            );
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            }
        });
        Self {
            addr,
            cut,
            stalled,
            links,
            accept,
        }
    }

    /// The AMQP URL that goes through the proxy.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Drops every connection and refuses new ones: RabbitMQ is "down".
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    /// Stops forwarding on every connection, new ones included, without closing any: the
    /// link is silent.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Forwards again whatever waited.
    pub fn heal(&self) {
        self.stalled.send_replace(false);
    }

    /// Accepts connections again: RabbitMQ is "back".
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding each chunk while the link is stalled.
async fn forward(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if stalled.wait_for(|stalled| !stalled).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}
