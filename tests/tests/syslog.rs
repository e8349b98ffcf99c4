//! The decision log sent to a real syslog collector (a UDP socket and a TCP
//! listener on loopback), in RFC 5424 with the contract's keys as structured
//! data.

use std::io::Read;
use std::time::Duration;

use stsgate_tests::*;

const RULES: &str =
    "[request_blocking.user_agent]\nrule = \"deny\"\nentries = [\"python-requests\"]\n";

fn check_message(msg: &str) {
    assert!(msg.starts_with("<13>1 "), "PRI and version: {msg}");
    let fields: Vec<&str> = msg.splitn(7, ' ').collect();
    assert_eq!(fields[3], "stsgate", "app-name: {msg}");
    assert_eq!(fields[5], "decision", "msgid: {msg}");
    let sd = fields[6];
    assert!(sd.starts_with("[stsgate@32473 "), "{msg}");
    for kv in [
        "client_ip=\"127.0.0.1\"",
        "user=\"d'arcy@contoso.com\"",
        "user_agent=\"python-requests/2.32\"",
        "stage=\"user_agent\"",
        "list=\"deny\"",
        "entry=\"python-requests\"",
        "action=\"refuse\"",
        "status=\"500\"",
    ] {
        assert!(sd.contains(kv), "{kv} missing in {msg}");
    }
    assert!(!msg.contains("correct horse"), "a password reached syslog");
}

/// A gate logging to `syslog_addr`, after one request it refused.
async fn gate_after_a_refusal(syslog_addr: String) -> (Gate, Upstream) {
    let upstream = Upstream::start().await;
    let extra = format!("[log]\nformat = \"syslog\"\nsyslog_addr = \"{syslog_addr}\"\n");
    let gate = Gate::start(GateSpec {
        extra: &extra,
        ..GateSpec::new(RULES, &upstream)
    });
    let req = post(
        &gate.url(USERNAMEMIXED),
        &[("x-ms-client-user-agent", "python-requests/2.32")],
        fixture("rst-2005-usernamemixed.xml"),
    );
    assert_eq!(send(&http_client(), req).await.status, 500);
    (gate, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_reach_a_udp_syslog_collector() {
    let collector = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    collector
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (gate, _upstream) =
        gate_after_a_refusal(format!("udp://{}", collector.local_addr().unwrap())).await;
    let mut buf = [0u8; 8192];
    let n = collector.recv(&mut buf).expect("a datagram within 10 s");
    check_message(std::str::from_utf8(&buf[..n]).unwrap());
    assert!(
        gate.stdout().is_empty(),
        "nothing on stdout when a collector is set: {:?}",
        gate.stdout()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_reach_a_tcp_syslog_collector_octet_counted() {
    let collector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (_gate, _upstream) =
        gate_after_a_refusal(format!("tcp://{}", collector.local_addr().unwrap())).await;
    let (mut stream, _) = tokio::task::spawn_blocking(move || collector.accept().unwrap())
        .await
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // RFC 6587 octet counting: "LEN SP MSG"
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while got.last() != Some(&b' ') {
        stream.read_exact(&mut byte).unwrap();
        got.push(byte[0]);
    }
    let len: usize = std::str::from_utf8(&got).unwrap().trim().parse().unwrap();
    let mut msg = vec![0u8; len];
    stream.read_exact(&mut msg).unwrap();
    check_message(std::str::from_utf8(&msg).unwrap());
}
