//! What the gate reads from outside its own memory: the admin API's block
//! bodies (`NewBlock::from_json`), store records read back from the
//! embedded store or Redis (`service::decode`), and the lesson records other
//! instances share. No panic; whatever is accepted is well formed: a block
//! read back decodes to the same block when encoded again, and an accepted
//! API body makes a block whose table lookup finds it.
//!
//! The first byte picks the parser; the rest is the input.

#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use stsgate_state::service::{decode, encode};
use stsgate_state::store::{Namespace, Record};
use stsgate_state::{Block, BlockTable, NewBlock, Target};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(rest) else {
                return;
            };
            let Ok(new) = NewBlock::from_json(&value, Duration::from_secs(30 * 86400)) else {
                return;
            };
            assert!(!new.ttl.is_zero());
            let block = Block::new(new.target, new.action, new.reason, new.origin, 1_000, new.ttl);
            // What the API accepts, a store gives back unchanged.
            let record = encode(&block);
            assert_eq!(decode(&record).as_ref(), Some(&block), "round trip");
            let table = BlockTable::build([Arc::new(block.clone())]);
            if let Target::User(user) = &block.target {
                assert!(table.by_user(user, 1_001).is_some(), "a user block finds its user");
            }
        }
        1 => {
            let key = String::from_utf8_lossy(&rest[..rest.len().min(24)]).into_owned();
            let record = Record {
                ns: Namespace::Blocks,
                key,
                value: rest.to_vec(),
                expires_at_ms: u64::MAX,
            };
            if let Some(block) = decode(&record) {
                // Accepted: it is valid, and writes back as itself.
                assert_eq!(decode(&encode(&block)).as_ref(), Some(&block));
                let _ = BlockTable::build([Arc::new(block)]);
            }
        }
        _ => {
            let _ = serde_json::from_slice::<stsgate_state::Lesson>(rest);
        }
    }
});
