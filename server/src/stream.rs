//! A streamed response body: pieces as a core task sends them (an export file's NDJSON, a
//! Binary's content), so memory holds a few pieces whatever the size of the whole. An error from
//! the task ends the response early: the client sees it cut short, never complete.

use bytes::Bytes;
use hyper::body::Frame;
use std::pin::Pin;
use std::task::{Context, Poll};

pub struct Chunks {
    /// A piece already taken from the channel (to learn, before the status was sent, that the
    /// stream starts well).
    first: Option<Bytes>,
    rest: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
}

impl Chunks {
    pub fn new(
        first: Option<Bytes>,
        rest: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> Chunks {
        Chunks { first, rest }
    }
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        self.rest
            .poll_recv(cx)
            .map(|c| c.map(|r| r.map(Frame::data)))
    }
}
