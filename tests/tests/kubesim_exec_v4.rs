//! Exec over `v4.channel.k8s.io`, spoken by hand: kube and kubectl both
//! negotiate v5 with kubesim, so without this test the v4 framing would go
//! unexercised. v4 has no way to close stdin, so the command reads a known
//! number of bytes (`head -c`), as podloop's framing does.

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use kubesim::{Image, PodTemplate};
use podloop_e2e::TestSim;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn v4_exec_frames_stdin_stdout_and_the_exit_status() {
    let Some(sim) =
        TestSim::with_busybox_pods([PodTemplate::new("v4pod").container("main", Image::Busybox)])
            .await
    else {
        return;
    };

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(sim.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();

    let script = "head -c 5; echo :done; echo oops >&2; exit 3";
    let url = format!(
        "wss://{}/api/v1/namespaces/default/pods/v4pod/exec?container=main&command=sh&command=-c&command={}&stdin=true&stdout=true&stderr=true",
        sim.addr(),
        script
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect::<String>()
    );
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "Authorization",
        format!("Bearer {}", sim.token()).parse().unwrap(),
    );
    headers.insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().unwrap(),
    );
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert_eq!(
        response.headers()["Sec-WebSocket-Protocol"],
        "v4.channel.k8s.io",
        "kubesim must agree to v4 when it is the only protocol offered"
    );

    // Channel 0 is stdin: the bytes after the channel byte go to the process.
    ws.send(Message::binary(b"\x00hello world".to_vec()))
        .await
        .unwrap();

    let (mut stdout, mut stderr, mut status) = (Vec::new(), Vec::new(), None);
    let read_all = async {
        while let Some(message) = ws.next().await {
            // After the status frame the connection simply ends; what
            // matters is that every frame came before it.
            let Ok(message) = message else { break };
            let Message::Binary(frame) = message else {
                continue;
            };
            let Some((&channel, payload)) = frame.split_first() else {
                continue;
            };
            match channel {
                1 => stdout.extend_from_slice(payload),
                2 => stderr.extend_from_slice(payload),
                3 => status = Some(serde_json::from_slice::<serde_json::Value>(payload).unwrap()),
                other => panic!("unexpected channel {other}"),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read_all)
        .await
        .expect("the exec finished");

    assert_eq!(String::from_utf8_lossy(&stdout), "hello:done\n");
    assert_eq!(String::from_utf8_lossy(&stderr), "oops\n");
    let status = status.expect("a status frame on channel 3");
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(
        status["details"]["causes"][0]["reason"], "ExitCode",
        "{status}"
    );
    assert_eq!(status["details"]["causes"][0]["message"], "3", "{status}");
    sim.shutdown().await;
}
