//! hello-server: the benchmarks' yardstick. A trivial HTTP server on the same stack as
//! `carapace-server` (hyper 1 with hyper-util's auto connection builder, a tokio multi-thread
//! runtime, `TCP_NODELAY`, two malloc arenas) that reads each request's body and answers every
//! request with the same ~200-byte JSON body (`GET /bytes/N`: N bytes, for downloads). The benchmarks measure it in the same run, with the
//! same client and the same concurrency, so their figures are ratios that survive a noisy, shared
//! machine. It is its own process, as the real server is: a task inside the benchmark would share
//! the client's runtime and cores on unequal terms.
//!
//! Run: `hello-server [--listen 127.0.0.1:0]`; prints `hello server listening: http://ADDR` on
//! stdout once it accepts connections. Stops when killed.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::io::Write;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// What every request gets: about the size of a small FHIR resource, so the response path costs
/// what a short read's would, minus everything the real server does to produce it.
const BODY: &[u8] = br#"{"resourceType":"Observation","id":"hello","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}]},"valueQuantity":{"value":60,"unit":"beats/minute"}}"#;

fn main() -> anyhow::Result<()> {
    // As carapace-server does (server/src/main.rs): the same allocator tuning, so peak RSS compares.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called first, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen: SocketAddr = match args.as_slice() {
        [] => SocketAddr::from(([127, 0, 0, 1], 0)),
        [flag, addr] if flag == "--listen" => addr
            .parse()
            .with_context(|| format!("--listen {addr}: not an address:port"))?,
        _ => anyhow::bail!("usage: hello-server [--listen ADDR:PORT]"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(listen))
}

async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let local = listener.local_addr()?;
    // The harness reads this line to learn the port (as it does carapace-server's).
    let mut out = std::io::stdout();
    writeln!(out, "hello server listening: http://{local}")?;
    out.flush()?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            // Out of descriptors or a connection reset before accept: the next one may work.
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper::service::service_fn(answer);
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A block of the bytes `/bytes/N` answers, sent again and again (nothing is allocated per byte).
static BLOCK: [u8; 1 << 20] = [0x5a; 1 << 20];

/// `/bytes/N`'s body: N bytes, a block at a time, as a document download streams.
struct Repeat(u64);

impl hyper::body::Body for Repeat {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        if self.0 == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.0.min(BLOCK.len() as u64) as usize;
        self.0 -= n as u64;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            &BLOCK[..n],
        )))))
    }
}

type Answer = http_body_util::Either<Full<Bytes>, Repeat>;

/// Read the request body (as the real server does, and so the connection stays reusable), then
/// answer with [`BODY`]; `GET /bytes/N` answers N bytes instead (the document benchmark's
/// download yardstick).
async fn answer(req: Request<Incoming>) -> Result<Response<Answer>, hyper::Error> {
    let bytes = req
        .uri()
        .path()
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok());
    req.into_body().collect().await?;
    if let Some(n) = bytes {
        let mut resp = Response::new(http_body_util::Either::Right(Repeat(n)));
        resp.headers_mut().insert(
            hyper::header::CONTENT_LENGTH,
            hyper::header::HeaderValue::from(n),
        );
        return Ok(resp);
    }
    let mut resp = Response::new(http_body_util::Either::Left(Full::new(Bytes::from_static(
        BODY,
    ))));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/fhir+json"),
    );
    Ok(resp)
}
