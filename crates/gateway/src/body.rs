//! Bodies: the boxed type both directions use, and the response wrapper that streams frames
//! through untouched while counting bytes, enforcing an idle timeout, and reporting the end of
//! the response (for the access log and the open-streams gauge).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;

/// Any error inside a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type used everywhere in the gateway.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body with these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The response stream went quiet for longer than the route's `idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("no data from the upstream for {0:?} (route idle_timeout)")]
pub struct IdleTimeout(pub Duration);

/// Called once when a response body ends (fully sent, failed, or dropped by the client).
pub trait OnEnd: Send + Sync + 'static {
    /// `bytes` sent; `complete` is false if the stream ended early.
    fn ended(self: Box<Self>, bytes: u64, complete: bool);
}

impl<F: FnOnce(u64, bool) + Send + Sync + 'static> OnEnd for F {
    fn ended(self: Box<Self>, bytes: u64, complete: bool) {
        (*self)(bytes, complete)
    }
}

/// Streams an upstream body through, frame by frame.
pub struct Observed<B: HttpBody> {
    inner: B,
    bytes: u64,
    idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    on_end: Option<Box<dyn OnEnd>>,
    complete: bool,
}

impl<B: HttpBody> Observed<B> {
    /// Wraps `inner`; `idle_timeout` ends a quiet stream; `on_end` runs once at the end.
    pub fn new(inner: B, idle_timeout: Option<Duration>, on_end: Box<dyn OnEnd>) -> Self {
        Self {
            inner,
            bytes: 0,
            idle: idle_timeout.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
            on_end: Some(on_end),
            complete: false,
        }
    }
}

impl<B> HttpBody for Observed<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if let Some((duration, sleep)) = &mut this.idle {
                    sleep
                        .as_mut()
                        .reset(tokio::time::Instant::now() + *duration);
                }
                // A sized body may end without a final `None` poll.
                if this.inner.is_end_stream() {
                    this.complete = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.complete = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some((duration, sleep)) = &mut this.idle {
                    ready!(sleep.as_mut().poll(cx));
                    return Poll::Ready(Some(Err(Box::new(IdleTimeout(*duration)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: HttpBody> Drop for Observed<B> {
    fn drop(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            // An empty body (a 202, a 204) is never polled: the server sees it has ended and
            // drops it. That is a complete response, not one that "ended early".
            let complete = self.complete || self.inner.is_end_stream();
            on_end.ended(self.bytes, complete);
        }
    }
}

/// The response was still being written when `timeout_write` passed.
#[derive(Debug, thiserror::Error)]
#[error("the response was not complete within {0:?} (timeout_write)")]
pub struct WriteTimeout(pub Duration);

/// A response body cut with [`WriteTimeout`] at a deadline (`timeout_write`, counted from the
/// request's arrival): the stream ends there, however busy.
pub struct WriteDeadline<B> {
    inner: B,
    limit: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<B> WriteDeadline<B> {
    /// Wraps `inner`, to end at `deadline`; `limit` is for the error message.
    pub fn new(inner: B, deadline: tokio::time::Instant, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }
}

impl<B> HttpBody for WriteDeadline<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(WriteTimeout(this.limit)))));
        }
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client sent nothing of its request body for too long.
#[derive(Debug, thiserror::Error)]
#[error("no request body data from the client for {0:?}")]
pub struct BodyReadTimeout(pub Duration);

/// A request body that fails with [`BodyReadTimeout`] when the client sends nothing for
/// `timeout` while the gateway waits for it (a slowloris body otherwise holds a connection, a
/// worker's attention and an upstream connection forever). Time the reader spends elsewhere
/// (e.g. the upstream not reading) does not count.
pub struct ReadDeadline<B> {
    inner: B,
    timeout: Duration,
    /// Created the first time the body has to wait: most bodies arrive whole and never do.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

impl<B> ReadDeadline<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: None,
            waiting: false,
        }
    }
}

impl<B> HttpBody for ReadDeadline<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = tokio::time::Instant::now() + this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.waiting {
                    sleep.as_mut().reset(deadline);
                    this.waiting = true;
                }
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(BodyReadTimeout(this.timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a body the gateway reads itself was not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    /// Over the cap (declared or sent).
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// Not sent in time (the caller's deadline, or the request's own read deadline).
    #[error("the body was not sent within {0:?}")]
    TooSlow(Duration),
    /// The connection failed while reading.
    #[error("the body could not be read")]
    Unreadable,
}

impl ReadError {
    /// The HTTP status that says so to a client whose request body it was.
    pub fn status(&self) -> http::StatusCode {
        match self {
            ReadError::TooLarge(_) => http::StatusCode::PAYLOAD_TOO_LARGE,
            ReadError::TooSlow(_) => http::StatusCode::REQUEST_TIMEOUT,
            ReadError::Unreadable => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads a whole body of at most `limit` bytes, within `deadline` when given: the one reader for
/// every body the gateway reads itself (its own forms, an MCP request it inspects, a response
/// whose tool list it filters, a provider's answer). A declared length (`Content-Length`) over
/// the limit is refused before anything is read; the bytes sent are counted by
/// [`http_body_util::Limited`], so a body without a length cannot grow past the limit either.
pub async fn read_bounded(
    body: Body,
    declared: Option<u64>,
    limit: usize,
    deadline: Option<Duration>,
) -> Result<Bytes, ReadError> {
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ReadError::TooLarge(limit));
    }
    // Boxed back into `Body`: reading a bare `Limited` trips the compiler's `Send` check of every
    // async caller (rust-lang/rust#102211).
    let limited: Body = http_body_util::Limited::new(body, limit).boxed();
    let read = async {
        match limited.collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) => Err(classify(error.as_ref(), limit)),
        }
    };
    match deadline {
        Some(deadline) => tokio::time::timeout(deadline, read)
            .await
            .unwrap_or(Err(ReadError::TooSlow(deadline))),
        None => read.await,
    }
}

/// Why a bounded read failed, from the error's causes.
fn classify(error: &(dyn std::error::Error + 'static), limit: usize) -> ReadError {
    if find_cause::<http_body_util::LengthLimitError>(error).is_some() {
        ReadError::TooLarge(limit)
    } else if let Some(timeout) = find_cause::<BodyReadTimeout>(error) {
        ReadError::TooSlow(timeout.0)
    } else {
        ReadError::Unreadable
    }
}

/// The `Content-Length` a message declares, if it is a number.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The first error of type `T` in `error`'s chain of causes.
pub(crate) fn find_cause<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_are_capped_declared_or_sent_and_must_arrive_in_time() {
        let big = full(vec![b'a'; 101]);
        assert_eq!(
            read_bounded(big, None, 100, None).await,
            Err(ReadError::TooLarge(100))
        );
        assert_eq!(
            read_bounded(full("a=b"), Some(300_000_000), 100, None).await,
            Err(ReadError::TooLarge(100)),
            "a declared length over the cap is refused before reading"
        );
        assert_eq!(
            read_bounded(full("a=b"), Some(3), 100, None).await,
            Ok(Bytes::from_static(b"a=b"))
        );
        let deadline = Duration::from_millis(50);
        assert_eq!(
            read_bounded(Never.boxed(), None, 10, Some(deadline)).await,
            Err(ReadError::TooSlow(deadline))
        );
        let stalled = ReadDeadline::new(Never, deadline).boxed();
        assert_eq!(
            read_bounded(stalled, None, 10, None).await,
            Err(ReadError::TooSlow(deadline)),
            "the request's own read deadline counts as too slow, not as unreadable"
        );
    }

    fn observed<B: HttpBody<Data = Bytes> + Unpin>(
        inner: B,
    ) -> (Observed<B>, std::sync::Arc<std::sync::Mutex<Option<bool>>>) {
        let ended = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = ended.clone();
        let on_end = move |_bytes: u64, complete: bool| {
            *seen.lock().unwrap() = Some(complete);
        };
        (Observed::new(inner, None, Box::new(on_end)), ended)
    }

    #[tokio::test]
    async fn an_empty_body_dropped_unpolled_is_complete_and_a_cut_stream_is_not() {
        // What the server does with a 202's empty body: sees it has ended, never polls it.
        let (empty_body, ended) = observed(http_body_util::Empty::<Bytes>::new());
        drop(empty_body);
        assert_eq!(*ended.lock().unwrap(), Some(true), "no false 'ended early'");
        // A stream the client walked away from is still reported.
        let (stream, ended) = observed(Never);
        drop(stream);
        assert_eq!(*ended.lock().unwrap(), Some(false));
        let (sized, ended) = observed(http_body_util::Full::new(Bytes::from_static(b"abc")));
        let read = sized.collect().await.unwrap().to_bytes();
        assert_eq!(read, Bytes::from_static(b"abc"));
        assert_eq!(*ended.lock().unwrap(), Some(true));
    }

    /// A client that never sends its body.
    struct Never;

    impl HttpBody for Never {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }
}
