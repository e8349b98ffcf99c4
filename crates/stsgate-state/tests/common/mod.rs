//! What the Redis tests share: a real `redis-server` on a free loopback
//! port, the same helper the black-box tests use.

#[allow(dead_code)]
#[path = "../../../../tests/src/redis_server.rs"]
mod redis_server;

pub use redis_server::RedisServer;
