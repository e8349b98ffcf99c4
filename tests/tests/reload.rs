//! Hot reload of the rule file through the real binary: a change on disk
//! (in place and `mv`-style), SIGHUP, `POST /api/v1/reload`; broken files
//! refused with the old rules kept; no failed request while reloading.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use stsgate_tests::*;

/// The tests pick the client IP with `X-MS-Forwarded-Client-IP`.
const TRUST_LOOPBACK: &str = "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n";

const SUCCESS: &str = "stsgate_rule_reloads_total{result=\"success\"}";
const FAILURE: &str = "stsgate_rule_reloads_total{result=\"failure\"}";

/// A rule file denying `entries`.
fn deny(entries: &[&str]) -> String {
    let list = entries
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("[request_blocking.ip]\nrule = \"deny\"\nentries = [{list}]\n")
}

fn start(rules: &str, upstream: &Upstream) -> Gate {
    Gate::start(GateSpec {
        extra: TRUST_LOOPBACK,
        ..GateSpec::new(rules, upstream)
    })
}

/// The status the gate answers for a sign-in from `client_ip`.
async fn status_for(gate: &Gate, client_ip: &str) -> u16 {
    let req = post(
        &gate.url(USERNAMEMIXED),
        &[("x-ms-forwarded-client-ip", client_ip)],
        fixture("rst-2005-usernamemixed.xml"),
    );
    tokio::time::timeout(Duration::from_secs(10), send(&http_client(), req))
        .await
        .expect("the gate answers within 10 s")
        .status
}

/// Polls `f` every 100 ms until it holds; panics with `what` after `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the reload counters stop moving (no reload for 600 ms, well
/// past the watcher's debounce), so what follows is not mixed up with a
/// late file-change reload. Returns (success, failure).
async fn settled(gate: &Gate) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = (gate.metric(SUCCESS), gate.metric(FAILURE));
    let mut stable_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = (gate.metric(SUCCESS), gate.metric(FAILURE));
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_millis(600) {
            return last;
        }
        assert!(Instant::now() < deadline, "reloads never settled");
    }
}

/// `mv`-style replacement: write beside, then rename over.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Raw admin request: (status, head, body).
fn admin_raw(gate: &Gate, request: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(gate.admin).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// `PATH:LINE:COLUMN: message` with the rule file's path.
fn is_located_error(text: &str, rules: &Path) -> bool {
    let Some(rest) = text.strip_prefix(&format!("{}:", rules.display())) else {
        return false;
    };
    let mut parts = rest.splitn(3, ':');
    let line = parts.next().and_then(|l| l.parse::<u32>().ok());
    let column = parts.next().and_then(|c| c.parse::<u32>().ok());
    let message = parts.next().and_then(|m| m.strip_prefix(' '));
    line.is_some_and(|l| l >= 1)
        && column.is_some_and(|c| c >= 1)
        && message.is_some_and(|m| !m.trim().is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_change_of_the_file_is_picked_up() {
    let upstream = Upstream::start().await;
    let gate = start(&deny(&["5.143.*.*"]), &upstream);
    assert_eq!(status_for(&gate, "9.9.9.9").await, 200);
    let (s0, f0) = settled(&gate).await;

    std::fs::write(gate.rules_path(), deny(&["5.143.*.*", "9.9.9.0/24"])).unwrap();
    eventually(
        "9.9.9.9 refused after the edit",
        Duration::from_secs(10),
        || async { status_for(&gate, "9.9.9.9").await == 500 },
    )
    .await;
    eventually("success counter +1", Duration::from_secs(5), || async {
        gate.metric(SUCCESS) >= s0 + 1.0
    })
    .await;
    assert_eq!(gate.metric(FAILURE), f0);
    assert_eq!(status_for(&gate, "8.8.8.8").await, 200, "others still pass");
    let log = gate.wait_decisions(|d| {
        d.iter()
            .any(|e| e["client_ip"] == "9.9.9.9" && e["action"] == "refuse")
    });
    let refused = log
        .iter()
        .find(|e| e["client_ip"] == "9.9.9.9" && e["action"] == "refuse")
        .unwrap();
    assert_eq!(refused["entry"], "9.9.9.0/24");
    assert!(
        gate.stderr()
            .iter()
            .any(|l| l.contains("rules reloaded") && l.contains("file change")),
        "{:?}",
        gate.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_moved_over_the_rule_file_is_picked_up_every_time() {
    let upstream = Upstream::start().await;
    let gate = start(&deny(&["5.143.*.*"]), &upstream);
    assert_eq!(status_for(&gate, "9.9.9.9").await, 200);
    let (s0, _) = settled(&gate).await;

    replace(&gate.rules_path(), &deny(&["9.9.9.9"]));
    eventually(
        "9.9.9.9 refused after mv",
        Duration::from_secs(10),
        || async { status_for(&gate, "9.9.9.9").await == 500 },
    )
    .await;
    // The watch survives the replaced inode: a second mv is seen as well.
    replace(&gate.rules_path(), &deny(&["8.8.8.8"]));
    eventually(
        "8.8.8.8 refused and 9.9.9.9 forwarded after a second mv",
        Duration::from_secs(10),
        || async {
            status_for(&gate, "8.8.8.8").await == 500 && status_for(&gate, "9.9.9.9").await == 200
        },
    )
    .await;
    eventually("success counter +2", Duration::from_secs(5), || async {
        gate.metric(SUCCESS) >= s0 + 2.0
    })
    .await;
    assert_eq!(gate.metric(FAILURE), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_refused_and_the_old_rules_stay() {
    let upstream = Upstream::start().await;
    let gate = start(&deny(&["9.9.9.9"]), &upstream);
    let rules = gate.rules_path();
    assert_eq!(status_for(&gate, "9.9.9.9").await, 500);
    assert_eq!(status_for(&gate, "8.8.8.8").await, 200);
    let (s0, f0) = settled(&gate).await;

    // 1. a bad IP entry: line 3, column 24 is where "300.1.1.1" starts
    std::fs::write(
        &rules,
        "[request_blocking.ip]\nrule = \"deny\"\nentries = [\"8.8.8.8\", \"300.1.1.1\"]\n",
    )
    .unwrap();
    eventually(
        "failure counter +1 (bad IP)",
        Duration::from_secs(10),
        || async { gate.metric(FAILURE) >= f0 + 1.0 },
    )
    .await;
    let expected = format!("{}:3:24: invalid IP entry \"300.1.1.1\"", rules.display());
    assert!(
        gate.wait_stderr(&expected),
        "stderr lacks {expected:?}: {:?}",
        gate.stderr()
    );
    assert_eq!(status_for(&gate, "9.9.9.9").await, 500, "old rules stay");
    assert_eq!(
        status_for(&gate, "8.8.8.8").await,
        200,
        "the refused file's rules do not apply"
    );
    let (_, f1) = settled(&gate).await;

    // 2. invalid TOML
    std::fs::write(&rules, "[request_blocking.ip\nrule = \"deny\"\n").unwrap();
    eventually(
        "failure counter +1 (bad TOML)",
        Duration::from_secs(10),
        || async { gate.metric(FAILURE) >= f1 + 1.0 },
    )
    .await;
    let expected = format!("{}:1:21: ", rules.display());
    assert!(
        gate.wait_stderr(&expected),
        "stderr lacks {expected:?}: {:?}",
        gate.stderr()
    );
    assert_eq!(status_for(&gate, "9.9.9.9").await, 500, "old rules stay");
    assert_eq!(status_for(&gate, "8.8.8.8").await, 200);
    assert_eq!(
        gate.metric(SUCCESS),
        s0,
        "no broken file counts as a success"
    );

    // 3. fixed: reloads
    std::fs::write(&rules, deny(&["8.8.8.8"])).unwrap();
    eventually(
        "the fixed file applies",
        Duration::from_secs(10),
        || async {
            status_for(&gate, "8.8.8.8").await == 500 && status_for(&gate, "9.9.9.9").await == 200
        },
    )
    .await;
    eventually("success counter +1", Duration::from_secs(5), || async {
        gate.metric(SUCCESS) >= s0 + 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let upstream = Upstream::start().await;
    let gate = start(&deny(&["5.143.*.*"]), &upstream);
    assert_eq!(status_for(&gate, "9.9.9.9").await, 200);
    let (s0, _) = settled(&gate).await;
    let hup_lines = |gate: &Gate| {
        gate.stderr()
            .iter()
            .filter(|l| l.contains("rules reloaded") && l.contains("SIGHUP"))
            .count()
    };

    std::fs::write(gate.rules_path(), deny(&["9.9.9.9"])).unwrap();
    gate.signal("HUP");
    eventually(
        "new rules after SIGHUP",
        Duration::from_secs(10),
        || async { status_for(&gate, "9.9.9.9").await == 500 },
    )
    .await;
    eventually("success counter +1", Duration::from_secs(5), || async {
        gate.metric(SUCCESS) >= s0 + 1.0
    })
    .await;
    eventually(
        "a SIGHUP reload is logged",
        Duration::from_secs(5),
        || async { hup_lines(&gate) >= 1 },
    )
    .await;

    // Without any change on disk, a SIGHUP alone reloads (the watcher has
    // nothing to see here).
    let (s1, f1) = settled(&gate).await;
    let logged = hup_lines(&gate);
    gate.signal("HUP");
    eventually(
        "success counter +1 on a bare SIGHUP",
        Duration::from_secs(10),
        || async { gate.metric(SUCCESS) >= s1 + 1.0 },
    )
    .await;
    eventually(
        "the second SIGHUP reload is logged",
        Duration::from_secs(5),
        || async { hup_lines(&gate) > logged },
    )
    .await;
    assert_eq!(gate.metric(FAILURE), f1);
    assert_eq!(status_for(&gate, "9.9.9.9").await, 500);
    assert_eq!(status_for(&gate, "8.8.8.8").await, 200);
    assert_eq!(
        gate.admin_get("/healthz").0,
        200,
        "SIGHUP must not end the process"
    );
}

/// One Kubernetes ConfigMap / projected volume update, as the kubelet's
/// AtomicWriter does it: the files go to a new timestamped directory, the
/// `..data` symlink is swapped to it with a rename, the old directory is
/// removed. `rules` is a symlink to `..data/rules`, so the rule file's path
/// (`rules/wstrust.toml`) never changes.
fn kubelet_update(dir: &Path, generation: u32, rules: &str) {
    let ts = dir.join(format!("..2026_11_23_00_00_0{generation}.000"));
    std::fs::create_dir_all(ts.join("rules")).unwrap();
    std::fs::write(ts.join("rules/wstrust.toml"), rules).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(ts.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if generation > 0 {
        let old = dir.join(format!("..2026_11_23_00_00_0{}.000", generation - 1));
        std::fs::remove_dir_all(old).unwrap();
    } else {
        std::os::unix::fs::symlink("..data/rules", dir.join("rules")).unwrap();
    }
}

/// The project's own Kubernetes manifests mount the rule file from a
/// ConfigMap and promise that a change is picked up (deploy/kubernetes/).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_style_updates_are_picked_up_every_time() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    kubelet_update(dir.path(), 0, &deny(&["9.9.9.9"]));
    std::fs::write(dir.path().join("admin.token"), "test-token-0123456789\n").unwrap();
    std::fs::write(
        dir.path().join("stsgate.toml"),
        format!(
            "rules = \"rules/wstrust.toml\"\n[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{}\"\n[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n[state]\ndir = \"state\"\n{TRUST_LOOPBACK}",
            upstream.addr
        ),
    )
    .unwrap();
    let root = dir.path().to_path_buf();
    let gate = Gate::spawn(dir, "test-token-0123456789".into());
    assert_eq!(status_for(&gate, "9.9.9.9").await, 500);
    for (generation, refused, forwarded) in [
        (1, "8.8.8.8", "9.9.9.9"),
        (2, "9.9.9.9", "8.8.8.8"),
        (3, "8.8.8.8", "9.9.9.9"),
    ] {
        settled(&gate).await;
        kubelet_update(&root, generation, &deny(&[refused]));
        eventually(
            &format!("ConfigMap update {generation} applies"),
            Duration::from_secs(10),
            || async {
                status_for(&gate, refused).await == 500 && status_for(&gate, forwarded).await == 200
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_api() {
    let upstream = Upstream::start().await;
    let gate = start(&deny(&["9.9.9.9", "5.143.*.*"]), &upstream);
    let rules = gate.rules_path();
    let (s0, f0) = settled(&gate).await;

    // Authorization first: 401 and nothing else (no reload, no body).
    let post_with = |auth: Option<&str>| {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        admin_raw(
            &gate,
            &format!(
                "POST /api/v1/reload HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
    };
    let token = gate.token.clone();
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789".to_string()),
        Some("Bearer ".to_string()),
        Some(format!("Bearer {}", &token[..token.len() - 1])),
        Some(format!("Bearer {token}x")),
        Some(format!("Basic {token}")),
        Some(token.clone()),
    ] {
        let (status, _, body) = post_with(auth.as_deref());
        assert_eq!(status, 401, "auth {auth:?}");
        assert_eq!(body, "", "a 401 carries nothing else (auth {auth:?})");
    }
    assert_eq!(
        (gate.metric(SUCCESS), gate.metric(FAILURE)),
        (s0, f0),
        "no reload without the token"
    );

    // GET is not a reload.
    let (status, _, _) = admin_raw(
        &gate,
        &format!(
            "GET /api/v1/reload HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 405);
    assert_eq!(gate.metric(SUCCESS), s0);

    // Success: 200 with a summary.
    let (status, body) = gate.api_post("/api/v1/reload");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(v["result"], "success", "{v}");
    let summary = v["summary"].as_array().expect("summary is an array");
    assert!(
        summary.iter().any(
            |l| l.as_str().is_some_and(|l| l.contains("request_blocking.ip")
                && l.contains("deny")
                && l.contains("2 entries"))
        ),
        "{v}"
    );
    assert_eq!(gate.metric(SUCCESS), s0 + 1.0, "the API reload is counted");

    // A broken file: 422 with every error located, old rules kept.
    std::fs::write(
        &rules,
        "[request_blocking.ip]\nrule = \"deny\"\nentries = [\"8.8.8.8\", \"300.1.1.1\", \"1.2.3.4/40\"]\n",
    )
    .unwrap();
    let (status, body) = gate.api_post("/api/v1/reload");
    assert_eq!(status, 422, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_ne!(v["result"], "success", "{v}");
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .expect("errors is an array")
        .iter()
        .map(|e| e.as_str().expect("errors are strings"))
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    for e in &errors {
        assert!(
            is_located_error(e, &rules),
            "not PATH:LINE:COLUMN: message: {e}"
        );
    }
    assert!(
        errors[0].starts_with(&format!("{}:3:24: ", rules.display())),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with(&format!("{}:3:37: ", rules.display())),
        "{errors:?}"
    );
    assert_eq!(status_for(&gate, "9.9.9.9").await, 500, "old rules stay");
    assert_eq!(status_for(&gate, "8.8.8.8").await, 200, "old rules stay");

    // Invalid TOML through the API too.
    std::fs::write(&rules, "[request_blocking.ip\n").unwrap();
    let (status, body) = gate.api_post("/api/v1/reload");
    assert_eq!(status, 422, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let first = v["errors"][0].as_str().unwrap_or_default();
    assert!(
        first.starts_with(&format!("{}:1:21: ", rules.display())),
        "{v}"
    );

    // Fixed through the API.
    std::fs::write(&rules, deny(&["8.8.8.8"])).unwrap();
    let (status, body) = gate.api_post("/api/v1/reload");
    assert_eq!(status, 200, "{body}");
    assert_eq!(status_for(&gate, "8.8.8.8").await, 500);
    assert_eq!(status_for(&gate, "9.9.9.9").await, 200);
    assert!(gate.metric(FAILURE) >= f0 + 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_file_the_api_is_not_there() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/wstrust.toml"), deny(&["9.9.9.9"])).unwrap();
    std::fs::write(
        dir.path().join("stsgate.toml"),
        format!(
            "rules = \"rules/wstrust.toml\"\n[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{}\"\n[admin]\naddr = \"127.0.0.1:0\"\n[state]\ndir = \"state\"\n{TRUST_LOOPBACK}",
            upstream.addr
        ),
    )
    .unwrap();
    let gate = Gate::spawn(dir, "test-token-0123456789".into());
    for request in [
        "POST /api/v1/reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        "POST /api/v1/reload HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer test-token-0123456789\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        "GET /api/v1/reload HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    ] {
        let (status, _, _) = admin_raw(&gate, request);
        assert_eq!(status, 404, "{request}");
    }
    assert_eq!(gate.metric(SUCCESS), 0.0, "nothing reloaded");
    assert_eq!(
        gate.admin_get("/metrics").0,
        200,
        "the rest of admin is there"
    );
    assert_eq!(status_for(&gate, "9.9.9.9").await, 500);
}

/// Two rule versions, `logic = "and"`, each with an IP and a user agent
/// section. A request that takes its IP from one version's list and its
/// user agent from the other's is forwarded by both versions: refusing it
/// would mean a half-applied rule set.
fn version(ip: &str, agent: &str, filler_octet: u8) -> String {
    let filler: Vec<String> = (0..4000u32)
        .map(|i| format!("\"172.{filler_octet}.{}.{}\"", i / 250, i % 250))
        .collect();
    format!(
        "[request_blocking]\nlogic = \"and\"\n[request_blocking.ip]\nrule = \"deny\"\nentries = [\"{ip}\", {}]\n[request_blocking.user_agent]\nrule = \"deny\"\nentries = [\"{agent}\"]\n",
        filler.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failed_or_mixed_answer_while_reloading() {
    let a = version("10.0.0.1", "agent-u", 16);
    let b = version("10.0.0.2", "agent-v", 17);
    // (client IP, user agent, refused under A, refused under B)
    const KINDS: [(&str, &str, bool, bool); 4] = [
        ("10.0.0.1", "agent-u", true, false),
        ("10.0.0.2", "agent-v", false, true),
        ("10.0.0.1", "agent-v", false, false),
        ("10.0.0.2", "agent-u", false, false),
    ];
    const TASKS: usize = 4;
    const PER_TASK: usize = 100;

    let upstream = Upstream::start().await;
    let gate = Arc::new(start(&a, &upstream));
    let (s0, f0) = settled(&gate).await;

    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (gate, done) = (gate.clone(), done.clone());
        let (a, b) = (a.clone(), b.clone());
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            // Bounded: at most 60 flips (~6 s and more); at least 6.
            for flip in 0..60 {
                if flip >= 6 && done.load(Ordering::SeqCst) {
                    break;
                }
                replace(&gate.rules_path(), if flip % 2 == 0 { &b } else { &a });
                statuses.push(gate.api_post("/api/v1/reload").0);
                std::thread::sleep(Duration::from_millis(100));
            }
            statuses
        })
    };

    let mut senders = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let url = gate.url(USERNAMEMIXED);
        senders.spawn(async move {
            let client = http_client();
            let mut answers = Vec::new();
            for i in 0..PER_TASK {
                let kind = (i + task) % KINDS.len();
                let (ip, agent, _, _) = KINDS[kind];
                let req = post(
                    &url,
                    &[
                        ("x-ms-forwarded-client-ip", ip),
                        ("x-ms-client-user-agent", agent),
                    ],
                    fixture("rst-2005-usernamemixed.xml"),
                );
                let answer =
                    tokio::time::timeout(Duration::from_secs(10), client.request(req)).await;
                let result = match answer {
                    Err(_) => Err("no answer within 10 s".to_string()),
                    Ok(Err(e)) => Err(format!("transport error: {e:?}")),
                    Ok(Ok(resp)) => {
                        let status = resp.status().as_u16();
                        let soap = resp
                            .headers()
                            .get("content-type")
                            .is_some_and(|v| v.as_bytes().starts_with(b"application/soap+xml"));
                        use http_body_util::BodyExt;
                        match resp.into_body().collect().await {
                            Ok(_) => Ok((status, soap)),
                            Err(e) => Err(format!("body error: {e:?}")),
                        }
                    }
                };
                answers.push((kind, result));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answers
        });
    }
    let mut answers = Vec::new();
    while let Some(r) = senders.join_next().await {
        answers.extend(r.expect("sender task"));
    }
    done.store(true, Ordering::SeqCst);
    let statuses = tokio::task::spawn_blocking(move || writer.join().expect("writer"))
        .await
        .unwrap();

    assert_eq!(answers.len(), TASKS * PER_TASK);
    let mut refused = [0usize; 4];
    for (kind, result) in &answers {
        let (ip, agent, under_a, under_b) = KINDS[*kind];
        let (status, soap) = result
            .clone()
            .unwrap_or_else(|e| panic!("request ({ip}, {agent}) failed during reloads: {e}"));
        match status {
            200 => assert!(
                !(under_a && under_b),
                "({ip}, {agent}) forwarded but both versions refuse it"
            ),
            500 => {
                assert!(
                    soap,
                    "a 500 that is not the SOAP refusal for ({ip}, {agent})"
                );
                assert!(
                    under_a || under_b,
                    "({ip}, {agent}) refused: no single rule version refuses it (half-applied set)"
                );
                refused[*kind] += 1;
            }
            other => panic!("({ip}, {agent}) answered {other} during reloads"),
        }
    }
    assert!(
        refused[0] > 0 && refused[1] > 0,
        "both versions were in force at some point: {refused:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every API reload succeeded: {statuses:?}"
    );
    assert!(gate.metric(SUCCESS) >= s0 + statuses.len() as f64);
    assert_eq!(gate.metric(FAILURE), f0, "no reload failed");
    // Every request that reached upstream was forwarded by the gate: none refused slipped through.
    let forwarded = answers
        .iter()
        .filter(|(_, r)| matches!(r, Ok((200, _))))
        .count();
    assert_eq!(upstream.count(), forwarded);
}
