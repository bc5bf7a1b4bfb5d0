//! The fault proxy on real sockets on 127.0.0.1: an echo server upstream,
//! the proxy in between, the client driving it. Every wait is bounded;
//! timings are asserted as lower bounds only.

use std::time::{Duration, Instant};

use spark_chaos::{ChaosError, ConnectionCounts, FaultProxy, ProxyClient, ProxyInfo, Toxic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest any single step may take before the test fails.
const STEP: Duration = Duration::from_secs(5);

/// An echo server on 127.0.0.1; it stops with the test's runtime.
async fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = conn.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

/// A fault proxy, its client, and one proxy `echo` in front of an echo
/// server.
async fn setup() -> (FaultProxy, ProxyClient, ProxyInfo) {
    let upstream = echo_server().await;
    let server = FaultProxy::start("127.0.0.1:0").await.unwrap();
    let client = ProxyClient::new(&server.api_url()).unwrap();
    let proxy = client.create("echo", "127.0.0.1:0", &upstream).await.unwrap();
    (server, client, proxy)
}

async fn connect(proxy: &ProxyInfo) -> TcpStream {
    tokio::time::timeout(STEP, TcpStream::connect(&proxy.listen)).await.unwrap().unwrap()
}

/// Sends `message` and reads as many bytes back; an error when the
/// connection fails or closes first.
async fn round_trip(conn: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
    tokio::time::timeout(STEP, async {
        conn.write_all(message).await?;
        let mut back = vec![0; message.len()];
        conn.read_exact(&mut back).await?;
        Ok(back)
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no echo within 5 s"))?
}

/// Whether the connection still echoes, within `wait`.
async fn usable(conn: &mut TcpStream, wait: Duration) -> bool {
    let check = async {
        conn.write_all(b"still there?").await?;
        let mut back = [0; 12];
        conn.read_exact(&mut back).await?;
        std::io::Result::Ok(&back == b"still there?")
    };
    matches!(tokio::time::timeout(wait, check).await, Ok(Ok(true)))
}

/// Reads until the connection ends; whether it ended (EOF or an error)
/// within `STEP`, rather than staying open.
async fn ends(conn: &mut TcpStream) -> bool {
    let read_to_end = async {
        let mut sink = [0; 1024];
        loop {
            match conn.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(STEP, read_to_end).await.is_ok()
}

/// Polls the proxy's counters until `done` holds, within `STEP`.
async fn counts_until(client: &ProxyClient, done: impl Fn(&ConnectionCounts) -> bool) -> ConnectionCounts {
    let deadline = Instant::now() + STEP;
    loop {
        let counts = client.proxy("echo").await.unwrap().spark_connections;
        if done(&counts) {
            return counts;
        }
        assert!(Instant::now() < deadline, "counters never got there: {counts:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A raw HTTP/1.1 request, for what the typed client cannot send (an
/// unknown toxic type, a non-loopback upstream): the status and the body.
async fn raw(api_url: &str, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let addr = api_url.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(STEP, conn.read_to_string(&mut response)).await.unwrap().unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let json = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(json).unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn bytes_pass_through_unchanged_both_ways() {
    let (_server, client, proxy) = setup().await;
    let message: Vec<u8> = (0..64 * 1024).map(|i: u32| (i * 7 % 251) as u8).collect();
    let (mut read, mut write) = connect(&proxy).await.into_split();
    // Written and read at once: 64 KiB need not fit in the socket buffers.
    let send = async {
        write.write_all(&message).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let receive = async {
        let mut back = Vec::new();
        read.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = tokio::time::timeout(STEP, async { tokio::join!(send, receive) }).await.unwrap();
    assert_eq!(back.len(), message.len());
    assert!(back == message, "the echo came back changed");
    let counts = counts_until(&client, |c| c.open == 0).await;
    assert_eq!(counts.accepted, 1);
    assert_eq!(counts.reset, 0);
}

#[tokio::test]
async fn latency_delays_the_reply_until_removed() {
    let (_server, client, proxy) = setup().await;
    client.add_toxic("echo", &Toxic::latency(200, 0)).await.unwrap();
    let toxics = client.proxy("echo").await.unwrap().toxics;
    assert_eq!(toxics.len(), 1);
    assert_eq!((toxics[0].name.as_str(), toxics[0].kind.as_str()), ("latency_downstream", "latency"));
    assert_eq!(toxics[0].attributes["latency"], 200);

    let mut conn = connect(&proxy).await;
    let started = Instant::now();
    assert_eq!(round_trip(&mut conn, b"ping").await.unwrap(), b"ping");
    assert!(started.elapsed() >= Duration::from_millis(200), "round trip took {:?}", started.elapsed());

    client.remove_toxic("echo", "latency_downstream").await.unwrap();
    assert!(client.proxy("echo").await.unwrap().toxics.is_empty());
    assert_eq!(round_trip(&mut conn, b"pong").await.unwrap(), b"pong");
}

#[tokio::test]
async fn latency_reaches_a_connection_already_open() {
    let (_server, client, proxy) = setup().await;
    // A pooled connection: opened and used before the fault.
    let mut conn = connect(&proxy).await;
    assert_eq!(round_trip(&mut conn, b"before").await.unwrap(), b"before");

    client.add_toxic("echo", &Toxic::latency(200, 0)).await.unwrap();
    let started = Instant::now();
    assert_eq!(round_trip(&mut conn, b"after").await.unwrap(), b"after");
    assert!(started.elapsed() >= Duration::from_millis(200), "round trip took {:?}", started.elapsed());
    assert_eq!(client.proxy("echo").await.unwrap().spark_connections.accepted, 1, "the same connection");
}

#[tokio::test]
async fn reset_peer_resets_the_connection_and_counts_it() {
    let (_server, client, proxy) = setup().await;
    client.add_toxic("echo", &Toxic::reset_peer(0)).await.unwrap();
    let mut conn = connect(&proxy).await;
    conn.write_all(b"ping").await.unwrap();
    let mut buf = [0; 4];
    let read =
        tokio::time::timeout(STEP, conn.read(&mut buf)).await.expect("the connection was neither reset nor closed");
    match read {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => assert_eq!(n, 0, "the echo came through: {:?}", &buf[..n]),
    }
    assert!(!usable(&mut conn, Duration::from_millis(500)).await, "the connection still works after the reset");
    let counts = counts_until(&client, |c| c.reset >= 1 && c.open == 0).await;
    assert_eq!(counts.reset, 1);
}

#[tokio::test]
async fn toxicity_decides_per_connection() {
    let (_server, client, proxy) = setup().await;
    client.add_toxic("echo", &Toxic::reset_peer(0).named("never").toxicity(0.0)).await.unwrap();
    for i in 0..10 {
        let mut conn = connect(&proxy).await;
        assert_eq!(round_trip(&mut conn, b"hello").await.unwrap(), b"hello", "connection {i}");
    }
    assert_eq!(client.proxy("echo").await.unwrap().spark_connections.reset, 0);

    client.remove_toxic("echo", "never").await.unwrap();
    client.add_toxic("echo", &Toxic::reset_peer(0).named("always").toxicity(1.0)).await.unwrap();
    for i in 0..10 {
        let mut conn = connect(&proxy).await;
        assert!(round_trip(&mut conn, b"hello").await.is_err(), "connection {i} was spared");
    }
    let counts = counts_until(&client, |c| c.reset >= 10).await;
    assert_eq!((counts.accepted, counts.reset), (20, 10));

    // Out of range is refused before anything is sent.
    let too_much = client.add_toxic("echo", &Toxic::latency(1, 0).toxicity(1.5)).await;
    assert!(matches!(too_much, Err(ChaosError::Input(_))), "{too_much:?}");
}

#[tokio::test]
async fn disable_refuses_and_closes_and_enable_listens_again() {
    let (_server, client, proxy) = setup().await;
    let mut open = connect(&proxy).await;
    assert_eq!(round_trip(&mut open, b"hi").await.unwrap(), b"hi");

    let disabled = client.set_enabled("echo", false).await.unwrap();
    assert!(!disabled.enabled);
    assert_eq!(disabled.listen, proxy.listen);
    let refused = TcpStream::connect(&proxy.listen).await.expect_err("a disabled proxy accepted a connection");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");
    assert!(ends(&mut open).await, "the open connection stayed open");
    assert_eq!(client.proxy("echo").await.unwrap().spark_connections.open, 0);

    let enabled = client.set_enabled("echo", true).await.unwrap();
    assert!(enabled.enabled);
    assert_eq!(enabled.listen, proxy.listen, "the same port again");
    let mut again = connect(&proxy).await;
    assert_eq!(round_trip(&mut again, b"back").await.unwrap(), b"back");
}

#[tokio::test]
async fn api_errors_say_what_and_use_toxiproxy_status_codes() {
    let (server, client, proxy) = setup().await;
    let api = server.api_url();

    let duplicate = client.create("echo", "127.0.0.1:0", &proxy.upstream).await;
    assert!(matches!(duplicate, Err(ChaosError::Proxy { status: Some(409), .. })), "{duplicate:?}");
    let missing = client.proxy("nope").await;
    assert!(matches!(missing, Err(ChaosError::Proxy { status: Some(404), .. })), "{missing:?}");
    let no_toxic = client.remove_toxic("echo", "nope").await;
    assert!(matches!(no_toxic, Err(ChaosError::Proxy { status: Some(404), .. })), "{no_toxic:?}");
    client.add_toxic("echo", &Toxic::latency(1, 0)).await.unwrap();
    let twice = client.add_toxic("echo", &Toxic::latency(2, 0)).await;
    assert!(matches!(twice, Err(ChaosError::Proxy { status: Some(409), .. })), "{twice:?}");

    let (status, body) =
        raw(&api, "POST", "/proxies/echo/toxics", r#"{"type": "bandwidth", "attributes": {"rate": 1}}"#).await;
    assert_eq!((status, body["status"].as_u64()), (400, Some(400)), "{body}");
    assert!(body["error"].as_str().unwrap().contains("invalid toxic type"), "{body}");
    let (status, body) =
        raw(&api, "POST", "/proxies/echo/toxics", r#"{"type": "latency", "attributes": {"latency": -5}}"#).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = raw(&api, "GET", "/proxies/nope", "").await;
    assert_eq!((status, body["error"].as_str().is_some()), (404, true), "{body}");

    // Faults stay on this machine: the client refuses before sending, the
    // server refuses what another client sends, and the API itself only
    // listens on loopback.
    let far = client.create("far", "127.0.0.1:0", "10.0.0.1:5432").await;
    assert!(matches!(far, Err(ChaosError::Input(_))), "{far:?}");
    let (status, body) =
        raw(&api, "POST", "/proxies", r#"{"name": "far", "listen": "127.0.0.1:0", "upstream": "10.0.0.1:5432"}"#).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) =
        raw(&api, "POST", "/proxies", r#"{"name": "wide", "listen": "0.0.0.0:0", "upstream": "127.0.0.1:9"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(client.proxies().await.unwrap().keys().eq(["echo"]));
    let everywhere = FaultProxy::start("0.0.0.0:0").await;
    assert!(matches!(everywhere, Err(ChaosError::Input(_))), "{everywhere:?}");

    assert!(client.version().await.unwrap().starts_with("spark-chaos"));
}

#[tokio::test]
async fn reset_enables_every_proxy_and_removes_every_toxic() {
    let (_server, client, proxy) = setup().await;
    client.add_toxic("echo", &Toxic::timeout(0)).await.unwrap();
    client.add_toxic("echo", &Toxic::latency(500, 0).upstream()).await.unwrap();
    client.set_enabled("echo", false).await.unwrap();

    client.reset().await.unwrap();
    let after = client.proxy("echo").await.unwrap();
    assert!(after.enabled);
    assert!(after.toxics.is_empty(), "{:?}", after.toxics);
    assert_eq!(after.listen, proxy.listen);
    let mut conn = connect(&proxy).await;
    assert_eq!(round_trip(&mut conn, b"clean").await.unwrap(), b"clean");
}

#[tokio::test]
async fn timeout_and_limit_data_close_the_connection() {
    let (_server, client, proxy) = setup().await;
    // limit_data: 10 bytes downstream, then the connection closes.
    client.add_toxic("echo", &Toxic::limit_data(10)).await.unwrap();
    let mut conn = connect(&proxy).await;
    conn.write_all(b"0123456789abcdef").await.unwrap();
    let mut back = Vec::new();
    let _ = tokio::time::timeout(STEP, conn.read_to_end(&mut back)).await.expect("the limit never closed it");
    assert_eq!(back, b"0123456789");
    client.reset().await.unwrap();

    // timeout 0: an open connection stalls (the echo is dropped) but stays
    // open; timeout 100: it is closed.
    let mut conn = connect(&proxy).await;
    assert_eq!(round_trip(&mut conn, b"up").await.unwrap(), b"up");
    client.add_toxic("echo", &Toxic::timeout(0)).await.unwrap();
    assert!(!usable(&mut conn, Duration::from_millis(200)).await, "data passed a timeout toxic");
    client.remove_toxic("echo", "timeout_downstream").await.unwrap();
    client.add_toxic("echo", &Toxic::timeout(100)).await.unwrap();
    assert!(ends(&mut conn).await, "the timeout never closed the connection");
    counts_until(&client, |c| c.open == 0).await;
}

#[tokio::test]
async fn shutdown_closes_everything() {
    let (server, _client, proxy) = setup().await;
    let mut conn = connect(&proxy).await;
    assert_eq!(round_trip(&mut conn, b"x").await.unwrap(), b"x");
    let api = server.api_addr();
    server.shutdown().await;
    assert!(ends(&mut conn).await, "a proxied connection outlived the proxy");
    assert!(TcpStream::connect(&proxy.listen).await.is_err(), "the proxy still listens");
    assert!(TcpStream::connect(api).await.is_err(), "the API still listens");
}
