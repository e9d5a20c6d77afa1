//! A TCP proxy on loopback that delays every byte by half a round trip in
//! each direction: a cluster in another region. kubesim's own latency fault
//! delays only the start of each API request; this one also delays every
//! frame on an open exec WebSocket, so "one round trip per save" is measured
//! rather than assumed. TLS passes through untouched (same host, same
//! certificate).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub struct DelayProxy {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl DelayProxy {
    pub async fn start(upstream: SocketAddr, rtt: Duration) -> anyhow::Result<DelayProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let one_way = rtt / 2;
        let accept = tokio::spawn(async move {
            let mut connections = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                connections.push(tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = tokio::spawn(delayed_copy(client_read, server_write, one_way));
                    let down = tokio::spawn(delayed_copy(server_read, client_write, one_way));
                    let _ = tokio::join!(up, down);
                }));
                connections.retain(|c| !c.is_finished());
            }
        });
        Ok(DelayProxy { addr, accept })
    }
}

/// Copies `from` to `to`, each chunk leaving `delay` after it arrived;
/// chunks keep their order and do not wait for each other (the link has
/// latency, not a bandwidth limit).
async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buffer[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// The round trip a byte really takes through a proxy of `rtt`: the
/// proxy's timers tick in whole milliseconds, so each leg can run late by
/// up to one; a save cannot beat this, whatever `rtt` says. p50 of `probes`
/// one-byte echoes through a fresh proxy to a local echo server.
pub async fn measured_rtt(rtt: Duration, probes: usize) -> anyhow::Result<Duration> {
    let echo = TcpListener::bind(("127.0.0.1", 0)).await?;
    let echo_addr = echo.local_addr()?;
    let server = tokio::spawn(async move {
        if let Ok((mut stream, _)) = echo.accept().await {
            let _ = stream.set_nodelay(true);
            let mut byte = [0u8; 1];
            while let Ok(1) = stream.read(&mut byte).await {
                if stream.write_all(&byte).await.is_err() {
                    return;
                }
            }
        }
    });
    let proxy = DelayProxy::start(echo_addr, rtt).await?;
    let mut client = TcpStream::connect(proxy.addr).await?;
    client.set_nodelay(true)?;
    let mut samples = Vec::with_capacity(probes);
    let mut byte = [0u8; 1];
    for i in 0..probes {
        let started = Instant::now();
        client.write_all(&[i as u8]).await?;
        client.read_exact(&mut byte).await?;
        samples.push(started.elapsed());
    }
    drop(client);
    server.abort();
    samples.sort();
    Ok(samples[samples.len() / 2])
}
