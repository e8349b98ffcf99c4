//! The one body type that flows through the gate, both ways.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};

/// Errors a body can carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body: buffered bytes or a streamed peer body.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body of known bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A streamed body from hyper.
pub fn stream(body: hyper::body::Incoming) -> Body {
    body.map_err(|e| Box::new(e) as BoxError).boxed()
}
