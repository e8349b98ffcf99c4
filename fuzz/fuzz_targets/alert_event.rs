//! Alert serialisation (`alerts::event_json`, `alerts::signature`): every
//! kind of state event, with user names, reasons, addresses and times taken
//! from the input, becomes one JSON object that parses back with the same
//! user and times written in RFC 3339, and whose signature verifies. No
//! panic, whatever the strings hold (control characters, quotes, invalid
//! UTF-8 made lossy) or however far in the future a time lies.

#![no_main]

use std::net::IpAddr;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use stsgate_proxy::alerts::{event_json, signature};
use stsgate_state::{
    Block, BlockAction, CompromiseAlert, LockoutAlert, SprayAlert, StateEvent, Target,
};

/// Reads fields off the front of the input; short input reads zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        let head = self.take(8);
        bytes[..head.len()].copy_from_slice(head);
        u64::from_le_bytes(bytes)
    }

    fn u32(&mut self) -> u32 {
        self.u64() as u32
    }

    /// A string of up to 255 bytes (its length is the first byte).
    fn text(&mut self) -> String {
        let n = self.take(1).first().copied().unwrap_or(0);
        String::from_utf8_lossy(self.take(usize::from(n))).into_owned()
    }

    fn ip(&mut self) -> IpAddr {
        let mut bytes = [0u8; 16];
        let head = self.take(16);
        bytes[..head.len()].copy_from_slice(head);
        if bytes[0] & 1 == 0 {
            IpAddr::from([bytes[1], bytes[2], bytes[3], bytes[4]])
        } else {
            IpAddr::from(bytes)
        }
    }

    fn block(&mut self) -> Block {
        let target = if self.u64() & 1 == 0 {
            Target::User(self.text())
        } else {
            Target::Ip(self.text())
        };
        let action = if self.u64() & 1 == 0 {
            BlockAction::Refuse
        } else {
            BlockAction::Require2fa
        };
        let reason = Some(self.text()).filter(|r| !r.is_empty());
        let origin = self.text();
        let mut block = Block::new(
            target,
            action,
            reason,
            origin,
            0,
            std::time::Duration::from_secs(1),
        );
        block.created_at_ms = self.u64();
        block.expires_at_ms = self.u64();
        block
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let mut input = Input(rest);
    let at_ms = input.u64();
    let event = match which % 6 {
        0 => StateEvent::BlockAdded(Arc::new(input.block())),
        1 => StateEvent::BlockRemoved(Arc::new(input.block())),
        2 => StateEvent::BlockExpired(Arc::new(input.block())),
        3 => StateEvent::Lockout(Arc::new(LockoutAlert {
            user: input.text(),
            client_ip: input.ip(),
            unfamiliar_failures: input.u32(),
            familiar_failures: input.u32(),
            threshold: input.u32(),
            locked_until_ms: input.u64(),
            mode: "enforce",
        })),
        4 => StateEvent::CompromiseSuspected(Arc::new(CompromiseAlert {
            user: input.text(),
            client_ip: input.ip(),
            locked_until_ms: input.u64(),
        })),
        _ => {
            let users = (0..input.u64() % 4).map(|_| input.text()).collect();
            let client_ips = (0..input.u64() % 4).map(|_| input.ip()).collect();
            StateEvent::Spray(Arc::new(SprayAlert {
                kind: "ip",
                client_ip: Some(input.ip()),
                users,
                client_ips,
                until_ms: input.u64(),
                block: (input.u64() & 1 == 0).then(|| Arc::new(input.block())),
            }))
        }
    };
    let instance = input.text();
    let value = event_json(&event, "0123456789abcdef", at_ms, &instance);
    let body = serde_json::to_vec(&value).expect("an alert serialises");
    let back: serde_json::Value = serde_json::from_slice(&body).expect("and parses back");
    assert_eq!(back, value);
    assert_eq!(back["event"], event.name());
    assert_eq!(back["instance"], instance.as_str());
    let ts = back["ts"].as_str().expect("ts is a string");
    assert!(humantime::parse_rfc3339(ts).is_ok(), "ts {ts:?} is RFC 3339");
    match &event {
        StateEvent::Lockout(l) => assert_eq!(back["user"], l.user.as_str()),
        StateEvent::CompromiseSuspected(c) => assert_eq!(back["user"], c.user.as_str()),
        _ => {}
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"fuzz key");
    let sig = signature(&key, &body);
    let hex = sig.strip_prefix("sha256=").expect("sha256= prefix");
    let tag: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    assert!(ring::hmac::verify(&key, &body, &tag).is_ok(), "the signature verifies");
});
