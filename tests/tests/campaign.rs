//! The efficacy campaign replay (benches/campaign/replay.py), small and one
//! request at a time so its figures are exact: the real binary in front of a
//! loopback STS that answers like ADFS, legitimate Exchange Online sign-ins
//! mixed with a password spray, a distributed brute force and a slow spray.
//! (The full campaign and its share of guesses that reach the STS:
//! `benches/campaign/run.sh`; README "Efficacy against sprays".)

use std::process::Command;

use stsgate_tests::*;

/// PRODUCT.md §3's values, as the replay's rule file sets them.
const THRESHOLD: u64 = 5;
const SAME_PASSWORD_USERS: u64 = 5;

#[test]
fn small_campaign_keeps_its_figures() {
    let out = Command::new("python3")
        .arg(workspace().join("benches/campaign/replay.py"))
        .arg("--stsgate")
        .arg(stsgate_bin())
        .args([
            "--scale",
            "small",
            "--workers",
            "1",
            "--sts-ms",
            "0",
            "--seed",
            "7",
            "--json",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    // 0: the targets met, 1: missed (a small campaign sprays few accounts,
    // so its shares are high: the figures below are what is checked), 2: broken.
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 1)),
        "replay failed ({code:?}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the replay's JSON");
    let attack = |kind: &str| f["attacks"][kind].clone();

    // Every legitimate sign-in reached the STS and got the answer it should:
    // first sign-ins, familiar places, a mistype then the right password,
    // travel to a new IP, a phone retrying a stale password, the brute
    // force's victim at home during the attack.
    assert_eq!(f["legit"]["refused"], 0, "{f:#}");
    assert_eq!(f["legit"]["unexpected"], 0, "{f:#}");
    for kind in [
        "first",
        "familiar",
        "mistype",
        "after_mistype",
        "travel",
        "phone_stale",
        "phone_updated",
        "victim_familiar",
    ] {
        let k = &f["legit"]["by_kind"][kind];
        assert!(
            k["sent"].as_u64().unwrap() > 0,
            "no {kind} sign-in in the campaign: {f:#}"
        );
        assert_eq!(k["sent"], k["ok"], "{kind}: {f:#}");
    }
    // The only user locked is the brute force's target (for unfamiliar IPs).
    assert_eq!(
        f["locked_users"],
        serde_json::json!([f["brute_force_target"]]),
        "{f:#}"
    );

    // A sprayed password reaches the STS for same_password_users users, then
    // is refused for everyone, whatever the IP: per round, in both sprays.
    for kind in ["spray", "slow_spray"] {
        let a = attack(kind);
        let rounds = a["reached_per_round"].as_array().unwrap();
        assert!(!rounds.is_empty(), "{f:#}");
        for r in rounds {
            assert_eq!(r.as_u64(), Some(SAME_PASSWORD_USERS), "{kind}: {f:#}");
        }
        assert_eq!(a["succeeded"], 0);
    }
    // The brute force gets at most `threshold` guesses to the STS.
    let brute = attack("brute_force");
    assert!(brute["reached"].as_u64().unwrap() <= THRESHOLD, "{f:#}");
    assert!(brute["sent"].as_u64().unwrap() >= 50);
    // The slow spray never trips the per-IP block: the password did it.
    assert!(attack("slow_spray")["ips"].as_u64().unwrap() >= 10);
    let reached = f["attacker"]["reached"].as_u64().unwrap();
    let sent = f["attacker"]["sent"].as_u64().unwrap();
    assert!(
        sent >= 300 && reached * 100 < sent * 6,
        "{reached} of {sent}: {f:#}"
    );
    // The gate said why it refused.
    assert!(
        f["decisions"]["{action=\"refuse\",stage=\"spray\"}"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{f:#}"
    );
    assert!(
        f["decisions"]["{action=\"refuse\",stage=\"lockout\"}"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{f:#}"
    );
}
